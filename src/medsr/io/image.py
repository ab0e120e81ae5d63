"""The in-memory image record, [0,1] <-> integer helpers, atomic writes and format dispatch.

Every reader returns an `Image` whose pixels are float32 in [0, 1]; `ImageMeta` remembers how
those values map back to the stored samples so a super-resolved result can be written in the
input's own format, bit depth and units.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsr.errors import MedsrError

RASTER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_EXTENSIONS = (".dcm", ".dicom")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
SUPPORTED_EXTENSIONS = RASTER_EXTENSIONS + DICOM_EXTENSIONS + NIFTI_EXTENSIONS

# Every reader refuses files declaring more pixels than this (all frames, pages or slices
# together), checked from the header before any pixel is decoded: a small file can declare a huge
# canvas (a decompression bomb). 100 M pixels is 6x a 256^3 brain volume and several times the
# largest radiographs; reading costs 14-23 bytes per pixel at peak (1.4-2.3 GB at the bound).
MAX_PIXELS = 100_000_000

# Output format names accepted by write_image(format=...), mapped to one canonical name.
_FORMAT_ALIASES = {
    "png": "png", "jpg": "jpeg", "jpeg": "jpeg", "tif": "tiff", "tiff": "tiff", "bmp": "bmp",
    "dcm": "dicom", "dicom": "dicom", "nii": "nifti", "nii.gz": "nifti", "nifti": "nifti",
}
_EXT_FORMAT = {
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff",
    ".bmp": "bmp", ".dcm": "dicom", ".dicom": "dicom", ".nii": "nifti", ".nii.gz": "nifti",
}


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


def to_uint(pixels01: np.ndarray, bit_depth: int) -> np.ndarray:
    """[0,1] floats -> integers 0..2**bit_depth-1 (uint8 up to 8 bits, uint16 up to 16)."""
    if not 1 <= bit_depth <= 16:
        raise ValueError(f"bit_depth must be 1..16, got {bit_depth}")
    top = 2**bit_depth - 1
    values = np.rint(np.clip(np.asarray(pixels01, dtype=np.float64), 0.0, 1.0) * top)
    return values.astype(np.uint8 if bit_depth <= 8 else np.uint16)


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


def file_extension(path: Path) -> str:
    """The lower-case extension, ".nii.gz" counted as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _kind(path: Path) -> str | None:
    """'raster' | 'dicom' | 'nifti' by extension; files without a known one are sniffed for DICM."""
    ext = file_extension(path)
    if ext in RASTER_EXTENSIONS:
        return "raster"
    if ext in DICOM_EXTENSIONS:
        return "dicom"
    if ext in NIFTI_EXTENSIONS:
        return "nifti"
    # Many PACS exports are bare UIDs like '1.2.840.113619.2...' with no real extension.
    return "dicom" if _has_dicom_preamble(path) else None


def is_supported(path: str | os.PathLike) -> bool:
    return _kind(Path(path)) is not None


def read_image(path: str | os.PathLike, *, slice_axis: int | None = None) -> Image:
    """Read a raster, DICOM or NIfTI file into float32 pixels in [0,1] plus metadata."""
    path = Path(path)
    if not path.exists():
        raise MedsrError(f"{path}: file not found; check the path")
    if path.is_dir():
        raise MedsrError(f"{path}: is a folder, not an image file; pass a file path")
    if path.stat().st_size == 0:
        raise MedsrError(f"{path}: file is empty (0 bytes); copy or export it again")
    try:
        open(path, "rb").close()
    except PermissionError:
        raise MedsrError(f"{path}: permission denied; make the file readable (chmod u+r) or run as a user who can read it")
    kind = _kind(path)
    # Imported lazily so `import medsr.io` stays cheap and pydicom/nibabel load only when needed.
    if kind == "raster":
        from medsr.io.raster import read_raster

        return read_raster(path)
    if kind == "dicom":
        from medsr.io.dicom import read_dicom

        return read_dicom(path)
    if kind == "nifti":
        from medsr.io.nifti import read_nifti

        return read_nifti(path, slice_axis=slice_axis)
    raise MedsrError(
        f"{path}: unsupported file type '{file_extension(path) or '(none)'}'; "
        f"use one of {' '.join(SUPPORTED_EXTENSIONS)} or a DICOM file with the DICM preamble"
    )


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


def _output_format(path: Path, meta: ImageMeta, fmt: str | None) -> str:
    if fmt is not None:
        key = fmt.lower().lstrip(".")
        if key not in _FORMAT_ALIASES:
            raise MedsrError(f"{path}: unknown output format '{fmt}'; use one of png, tiff, jpeg, bmp, dcm, nii")
        return _FORMAT_ALIASES[key]
    # A known extension on the target wins over the input's format: bytes must match the name.
    by_ext = _EXT_FORMAT.get(file_extension(path))
    if by_ext:
        return by_ext
    # In-memory arrays and MNIST digits have no file format of their own.
    return meta.format if meta.format in _FORMAT_ALIASES.values() else "png"


def write_image(
    path: str | os.PathLike,
    image: Image,
    *,
    scale: float = 1.0,
    model_name: str = "",
    format: str | None = None,
) -> Path:
    """Write `image.pixels` ([0,1], already super-resolved by `scale`) using the input's metadata.

    The format is `format` if given, else the one named by the path's extension, else the
    input's own format. Written atomically; returns the path.
    """
    path = Path(path)
    pixels = np.asarray(image.pixels)
    if pixels.ndim not in (2, 3) or pixels.size == 0:
        raise MedsrError(f"{path}: cannot write pixels of shape {pixels.shape}; expected (H, W) or (N, H, W)")
    if not np.all(np.isfinite(pixels)):
        raise MedsrError(f"{path}: image to write contains NaN or infinite values; check the model output")
    if not scale > 0:
        raise MedsrError(f"{path}: scale must be positive, got {scale}; pass the super-resolution factor")
    image = Image(pixels, image.meta)
    fmt = _output_format(path, image.meta, format)
    if fmt == "dicom":
        from medsr.io.dicom import write_dicom

        return atomic_write(path, lambda tmp: write_dicom(tmp, image, scale=scale, model_name=model_name, target=path))
    if fmt == "nifti":
        from medsr.io.nifti import write_nifti

        # nibabel picks compression from the file name, so the temp name keeps the suffix.
        suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
        return atomic_write(
            path,
            lambda tmp: write_nifti(tmp, image, scale=scale, model_name=model_name, target=path),
            suffix,
        )
    from medsr.io.raster import write_raster

    return atomic_write(path, lambda tmp: write_raster(tmp, image, fmt, target=path))
