"""Image I/O: read rasters, DICOM and NIfTI into [0,1] float pixels and write results back.

types.py holds the image record, formats.py the one table of formats and extensions, dispatch.py
read_image / write_image; raster.py, dicom.py and nifti.py are the format modules, imported on
first use so that importing this package does not pull in pydicom or nibabel.
"""

from medsr.io.dispatch import read_image, write_image
from medsr.io.formats import (
    FORMAT_CHOICES,
    SUPPORTED_EXTENSIONS,
    file_extension,
    is_supported,
)
from medsr.io.mnist import read_mnist
from medsr.io.types import MAX_PIXELS, Image, ImageMeta, from_uint, to_uint

__all__ = [
    "FORMAT_CHOICES",
    "MAX_PIXELS",
    "SUPPORTED_EXTENSIONS",
    "Image",
    "ImageMeta",
    "file_extension",
    "from_uint",
    "is_supported",
    "read_image",
    "read_mnist",
    "to_uint",
    "write_image",
]
