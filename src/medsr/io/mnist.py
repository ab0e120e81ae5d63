"""MNIST-style IDX files (plain or gzip): uint8 images (magic 0x803) and labels (magic 0x801)."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from medsr.errors import MedsrError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


def _read_idx(path: Path, magic: int, what: str) -> tuple[tuple[int, ...], bytes]:
    """Return (dimensions, payload) of an IDX file after checking magic and exact size."""
    if not path.is_file():
        raise MedsrError(f"{path}: file not found; check the MNIST {what} path")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            raise MedsrError(f"{path}: gzip stream is truncated or corrupt; download the MNIST file again")
    found = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if found != magic:
        shown = "none" if found is None else f"0x{found:08x}"
        raise MedsrError(f"{path}: not an IDX {what} file (magic {shown}, expected 0x{magic:08x}); check which file you passed")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise MedsrError(f"{path}: IDX {what} header is truncated ({len(raw)} bytes); download the MNIST file again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise MedsrError(
            f"{path}: IDX {what} file holds {len(raw) - header} data bytes but its header declares "
            f"{'x'.join(map(str, dims))} = {expected}; the file is truncated or corrupt, download it again"
        )
    return dims, raw[header:]


def read_mnist(
    images_path: str | os.PathLike, labels_path: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Images as uint8 (N, rows, cols) and, if a labels file is given, labels as uint8 (N,)."""
    images_path = Path(images_path)
    dims, payload = _read_idx(images_path, IMAGES_MAGIC, "images")
    images = np.frombuffer(payload, dtype=np.uint8).reshape(dims).copy()
    if labels_path is None:
        return images, None
    labels_path = Path(labels_path)
    (count,), payload = _read_idx(labels_path, LABELS_MAGIC, "labels")
    if count != len(images):
        raise MedsrError(f"{labels_path}: {count} labels for {len(images)} images in {images_path.name}; pass the matching labels file")
    return images, np.frombuffer(payload, dtype=np.uint8).copy()
