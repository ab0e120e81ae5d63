"""read_image and write_image: pick the format module for a file and call it.

Format modules (raster, dicom, nifti) are imported on first use, so importing medsr.io does
not pull in pydicom or nibabel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medsr.errors import MedsrError
from medsr.files import atomic_write
from medsr.io.formats import (
    FORMAT_NAMES,
    SUPPORTED_EXTENSIONS,
    Format,
    file_extension,
    format_named,
    format_of_extension,
    format_of_path,
)
from medsr.io.types import MAX_PIXELS, Image, ImageMeta


def read_image(path: str | os.PathLike, *, slice_axis: int | None = None, max_pixels: int = MAX_PIXELS) -> Image:
    """Read a raster, DICOM or NIfTI file into float32 pixels in [0,1] plus metadata. A file whose
    header declares more than `max_pixels` (frames and pages included) is a TooLargeError, before decoding."""
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
    fmt = format_of_path(path)
    if fmt is None:
        raise MedsrError(
            f"{path}: unsupported file type '{file_extension(path) or '(none)'}'; "
            f"use one of {' '.join(SUPPORTED_EXTENSIONS)} or a DICOM file with the DICM preamble"
        )
    # Imported on first use so `import medsr.io` stays cheap and pydicom/nibabel load only when needed.
    if fmt.module == "dicom":
        from medsr.io.dicom import read_dicom

        return read_dicom(path, max_pixels)
    if fmt.module == "nifti":
        from medsr.io.nifti import read_nifti

        return read_nifti(path, slice_axis=slice_axis, max_pixels=max_pixels)
    from medsr.io.raster import read_raster

    return read_raster(path, max_pixels)


def _output_format(path: Path, meta: ImageMeta, name: str | None) -> Format:
    if name is not None:
        return format_named(name, path)
    # A known extension on the target wins over the input's format: bytes must match the name.
    by_extension = format_of_extension(path)
    if by_extension is not None:
        return by_extension
    if path.suffix and meta.format != "dicom":  # (DICOM files are often named IM.0001: written as DICOM)
        raise MedsrError(f"{path}: {path.suffix} is not a format medsr writes; end the name in one of "
                         f"{', '.join(SUPPORTED_EXTENSIONS)}, or name the format (--format; format= in Python)")
    # In-memory arrays and MNIST digits have no file format of their own.
    return format_named(meta.format if meta.format in FORMAT_NAMES else "png", path)


def check_writable(path: str | os.PathLike, image: Image, *, format: str | None = None, name=None) -> None:
    """The MedsrError write_image(path, image, format=format) would raise for a stack of slices the
    output format cannot hold, raised before any upscaling (a volume's minutes of work) is spent;
    `name` (default: path) starts the message."""
    fmt = _output_format(Path(path), image.meta, format)
    if fmt.module == "dicom":
        from medsr.io.dicom import check_stack

        check_stack(image.pixels, image.meta, name or path)
    elif fmt.module == "raster":
        from medsr.io.raster import check_stack

        check_stack(image.pixels, fmt.name, image.meta, name or path)


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
    input's own format. A NIfTI volume written as TIFF has its slices drawn as a viewer draws them
    (medsr.io.nifti.display_view). Written atomically; returns the path.
    """
    path = Path(path)
    if not isinstance(image, Image):
        raise MedsrError(f"{path}: write_image takes a medsr Image (read_image's, its pixels replaced: Image(pixels, image.meta)), "
                         f"not a {type(image).__name__}")
    pixels = np.asarray(image.pixels)
    if pixels.ndim not in (2, 3) or pixels.size == 0:
        raise MedsrError(f"{path}: cannot write pixels of shape {pixels.shape}; expected (H, W) or (N, H, W)")
    if not np.all(np.isfinite(pixels)):
        raise MedsrError(f"{path}: image to write contains NaN or infinite values; check the model output")
    if not scale > 0:
        raise MedsrError(f"{path}: scale must be positive, got {scale}; pass the super-resolution factor")
    image = Image(pixels, image.meta)
    fmt = _output_format(path, image.meta, format)
    if fmt.module == "dicom":
        from medsr.io.dicom import write_dicom

        return atomic_write(path, lambda tmp: write_dicom(tmp, image, scale=scale, model_name=model_name, target=path))
    if fmt.module == "nifti":
        from medsr.io.nifti import write_nifti

        # nibabel picks compression from the file name, so the temp name keeps the suffix.
        suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
        return atomic_write(
            path,
            lambda tmp: write_nifti(tmp, image, scale=scale, model_name=model_name, target=path),
            suffix,
        )
    from medsr.io.raster import write_raster

    if image.meta.format == "nifti":  # a NIfTI volume's slices as a viewer draws them
        from medsr.io.nifti import display_view, displayed

        image = Image(displayed(pixels, display_view(image.meta)), image.meta)
    return atomic_write(path, lambda tmp: write_raster(tmp, image, fmt.name, target=path))
