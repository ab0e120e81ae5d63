"""The in-memory image record and its [0,1] <-> integer helpers, shared by every format module.

Every reader returns an `Image` whose pixels are float32 in [0, 1]; `ImageMeta` remembers how
those values map back to the stored samples so a super-resolved result can be written in the
input's own format, bit depth and units.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Every reader refuses files declaring more pixels than this (all frames, pages or slices
# together), checked from the header before any pixel is decoded: a small file can declare a huge
# canvas (a decompression bomb). 100 M pixels is 6x a 256^3 brain volume and several times the
# largest radiographs; reading costs 14-23 bytes per pixel at peak (1.4-2.3 GB at the bound).
MAX_PIXELS = 100_000_000


@dataclass
class ImageMeta:
    path: str
    format: str
    bit_depth: int
    value_range: tuple[float, float]
    pixel_spacing: tuple[float, float] | None
    photometric: str = "MONOCHROME2"
    slice_axis: int | None = None
    source: Any = None
    extra: dict = field(default_factory=dict)


@dataclass
class Image:
    pixels: np.ndarray
    meta: ImageMeta


STRIP_VALUES = 1 << 20  # values per block in by_rows: its float64 temporaries stay a few MB


def by_rows(elementwise, array: np.ndarray, dtype) -> np.ndarray:
    """`elementwise(array)` cast to `dtype`, computed a block of rows at a time into the result, so
    that a 12000 x 12000 output's float64 temporaries are not whole-image arrays (the same numbers)."""
    array = np.asarray(array)
    if array.ndim == 0 or array.size == 0:
        return np.asarray(elementwise(array)).astype(dtype)
    out = np.empty(array.shape, dtype)
    rows_in, rows_out = array.reshape(-1, array.shape[-1]), out.reshape(-1, array.shape[-1])
    step = max(1, STRIP_VALUES // max(array.shape[-1], 1))
    for start in range(0, len(rows_in), step):
        rows_out[start:start + step] = elementwise(rows_in[start:start + step])
    return out


def to_uint(pixels01: np.ndarray, bit_depth: int) -> np.ndarray:
    """[0,1] floats -> integers 0..2**bit_depth-1 (uint8 up to 8 bits, uint16 up to 16)."""
    if not 1 <= bit_depth <= 16:
        raise ValueError(f"bit_depth must be 1..16, got {bit_depth}")
    top = 2**bit_depth - 1
    return by_rows(lambda rows: np.rint(np.clip(rows.astype(np.float64), 0.0, 1.0) * top), pixels01,
                   np.uint8 if bit_depth <= 8 else np.uint16)


def from_uint(arr: np.ndarray, bit_depth: int) -> np.ndarray:
    """Integers 0..2**bit_depth-1 -> float32 in [0,1]; exact inverse of to_uint up to 16 bits."""
    top = 2**bit_depth - 1
    return (np.asarray(arr, dtype=np.float64) / top).astype(np.float32)


@contextlib.contextmanager
def quiet_libraries():
    """Silence pydicom, nibabel and Pillow warnings and log lines while a file is read: a damaged
    file must give one clear line (a MedsrError, or nothing when it still reads), not library chatter."""
    loggers = [logging.getLogger(name) for name in ("pydicom", "nibabel.global", "PIL")]
    levels = [logger.level for logger in loggers]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for logger in loggers:
                logger.setLevel(logging.CRITICAL + 1)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def printable(value: Any, limit: int = 64) -> str:
    """A header value made safe for a one-line message: cut short, control characters as '?'."""
    text = str(value)
    text = text if len(text) <= limit else text[:limit] + "..."
    return "".join(c if c.isprintable() else "?" for c in text)


def as_unit(array: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Integer or float pixels -> float32 in [0, 1], and the (low, high) values 0 and 1 stand for.

    Integers of up to 16 bits span their dtype's full range (uint8: 0..255, int16: -32768..32767),
    as image files hold them; floats already in [0, 1] stay as they are; wider integers (an int64
    array from a list of ints) and other floats (e.g. Hounsfield units) span their own min..max
    (a 64-bit range squeezed into float32 would keep a few levels of the data).
    """
    if np.issubdtype(array.dtype, np.integer) and array.dtype.itemsize <= 2:
        info = np.iinfo(array.dtype)
        low, high = float(info.min), float(info.max)
    elif np.issubdtype(array.dtype, np.integer):
        low, high = float(array.min()), float(array.max())
    else:
        low, high = float(array.min()), float(array.max())
        low, high = (min(low, 0.0), max(high, 1.0)) if low >= 0.0 and high <= 1.0 else (low, high)
    span = high - low if high > low else 1.0
    return ((array.astype(np.float64) - low) / span).astype(np.float32), (low, high)
