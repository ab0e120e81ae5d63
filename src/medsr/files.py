"""File helpers shared by every wing: writes that never leave a half-written file behind."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from medsr.errors import MedsrError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


NAME_MAX = 255  # bytes in one file name, as most file systems allow


def temp_stem(name: str) -> str:
    """What atomic_write's temp file for `name` is named after: the name itself, or, where the temp
    name would pass NAME_MAX (a legal name of 240 bytes), a hash of it."""
    if len(os.fsencode(name)) <= NAME_MAX - len(".12345678.tmp.nii.gz") - 1:
        return name
    return "~" + hashlib.sha1(os.fsencode(name)).hexdigest()[:16]


def atomic_write(path: Path, write: Callable[[Path], None], suffix: str = "") -> Path:
    """Call write(tmp) on a hidden temp file in the target folder, then os.replace it into place,
    so readers never see a half-written file and a failed write leaves nothing behind."""
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MedsrError(f"{path}: cannot create folder {folder} ({err.strerror}); check permissions")
    tmp = folder / f".{temp_stem(path.name)}.{uuid.uuid4().hex[:8]}.tmp{suffix}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise MedsrError(f"{path}: cannot write file ({err.strerror or err}); check the folder is writable and has space")
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


OUTPUT_MARKER = ".medsr-output"  # in every folder medsr writes results into; such folders are never read as inputs
LEDGER_NAME = "medsr-ledger.jsonl"  # medsr upscale's resume ledger, in its output folder (older ones have no marker)


def mark_output_folder(folder: Path) -> None:
    """Make `folder` (created if needed) known as medsr's output, so that walking a data folder that
    holds it (medsr.data.scan) leaves it out: outputs are never read back as inputs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / OUTPUT_MARKER
    if not marker.exists():
        marker.write_text("medsr writes its results here; medsr leaves this folder out of its inputs\n")


def marked_at(folder: Path) -> float:
    """When `folder` was first marked as medsr's output (its OUTPUT_MARKER's time); infinity while it is
    not: files older than that are the user's, newer ones medsr's."""
    try:
        return (Path(folder) / OUTPUT_MARKER).stat().st_mtime
    except OSError:
        return math.inf


@contextlib.contextmanager
def output_folder_lock(folder: Path):
    """Held while a run writes into `folder` (on its OUTPUT_MARKER): a second run into the same folder
    is refused in one line. Where the system has no fcntl (Windows), nothing is locked."""
    folder = Path(folder)
    mark_output_folder(folder)
    with open(folder / OUTPUT_MARKER, "a") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MedsrError(f"{folder}: another medsr run is writing into this folder; wait for it to end, "
                                 "or choose another -o") from None
        yield


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
