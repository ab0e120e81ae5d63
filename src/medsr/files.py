"""File helpers shared by every wing: writes that never leave a half-written file behind."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from medsr.errors import MedsrError


def atomic_write(path: Path, write: Callable[[Path], None], suffix: str = "") -> Path:
    """Call write(tmp) on a hidden temp file in the target folder, then os.replace it into place,
    so readers never see a half-written file and a failed write leaves nothing behind."""
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MedsrError(f"{path}: cannot create folder {folder} ({err.strerror}); check permissions")
    tmp = folder / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{suffix}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise MedsrError(f"{path}: cannot write file ({err.strerror or err}); check the folder is writable and has space")
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
