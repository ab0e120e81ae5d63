"""The one table of file formats: names, extensions, and which module reads and writes each."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from medsr.errors import MedsrError


@dataclass(frozen=True)
class Format:
    name: str  # canonical name, as in ImageMeta.format
    module: str  # the io module that reads and writes it: raster | dicom | nifti
    extensions: tuple[str, ...]  # the first is the one written when --format asks for this format
    aliases: tuple[str, ...]  # names accepted by --format / write_image(format=...)


FORMATS = (
    Format("png", "raster", (".png",), ("png",)),
    Format("jpeg", "raster", (".jpg", ".jpeg"), ("jpeg", "jpg")),
    Format("tiff", "raster", (".tif", ".tiff"), ("tiff", "tif")),
    Format("bmp", "raster", (".bmp",), ("bmp",)),
    Format("dicom", "dicom", (".dcm", ".dicom"), ("dcm", "dicom")),
    Format("nifti", "nifti", (".nii.gz", ".nii"), ("nii", "nii.gz", "nifti")),
)
_BY_NAME = {alias: f for f in FORMATS for alias in (f.name, *f.aliases)}
_BY_EXTENSION = {ext: f for f in FORMATS for ext in f.extensions}
SUPPORTED_EXTENSIONS = tuple(_BY_EXTENSION)
FORMAT_NAMES = tuple(f.name for f in FORMATS)
# What --format offers: each format's first alias (png, jpeg, tiff, bmp, dcm, nii).
FORMAT_CHOICES = tuple(f.aliases[0] for f in FORMATS)


def file_extension(path: Path) -> str:
    """The lower-case extension, ".nii.gz" counted as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def name_without_extension(path: Path) -> str:
    """The file name without its extension where that is a format medsr knows (".nii.gz" counted as
    one): a PACS file named by its UID (1.2.840.113619.2.55.3.1234.5) keeps its last number."""
    extension = file_extension(path)
    return path.name[: -len(extension)] if extension in _BY_EXTENSION else path.name


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def format_of_extension(path: Path) -> Format | None:
    return _BY_EXTENSION.get(file_extension(path))


def is_jpeg(path: str | os.PathLike) -> bool:
    """A JPEG file by its content (its first bytes, FF D8 FF), whatever its name; by its name where it cannot be read."""
    try:
        with open(path, "rb") as file:
            return file.read(3) == b"\xff\xd8\xff"
    except OSError:
        return getattr(format_of_extension(Path(path)), "name", "") == "jpeg"


def jpeg_coded(path: str | os.PathLike) -> bool:
    """Whether the file's pixels went through JPEG's 8x8 blocks: a JPEG file (a PNG named .jpg is not;
    a JPEG named .png is), or a DICOM file stored as lossy JPEG (medsr.io.dicom.lossy_jpeg). What
    `default-jpeg` is for (medsr.zoo.default_model)."""
    path = Path(path)
    if getattr(format_of_path(path), "module", "") == "raster":  # a raster by its name: JPEG or not by its content
        return is_jpeg(path)
    if getattr(format_of_path(path), "name", "") != "dicom" or not path.is_file():
        return False
    from medsr.io import dicom  # pydicom loads only for DICOM files

    return dicom.lossy_jpeg(path)


def format_of_path(path: Path) -> Format | None:
    """The format named by the extension; files without a known one are sniffed for DICM."""
    found = format_of_extension(path)
    if found is not None:
        return found
    # Many PACS exports are bare UIDs like '1.2.840.113619.2...' with no real extension.
    return _BY_NAME["dicom"] if _has_dicom_preamble(path) else None


def is_supported(path: str | os.PathLike) -> bool:
    return format_of_path(Path(path)) is not None


def format_named(name: str, path: Path | str = "") -> Format:
    """The format an output format name (any alias, with or without a dot) refers to."""
    found = _BY_NAME.get(name.lower().lstrip("."))
    if found is None:
        raise MedsrError(f"{path}: unknown output format '{name}'; use one of {', '.join(FORMAT_CHOICES)}")
    return found


def with_format_extension(path: Path, name: str) -> Path:
    """`path` with its known extension (name_without_extension) replaced by the named format's, or with it added."""
    return path.with_name(name_without_extension(path) + format_named(name, path).extensions[0])
