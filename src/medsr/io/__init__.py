"""Image I/O: read rasters, DICOM and NIfTI into [0,1] float pixels and write results back.

Format modules (raster, dicom, nifti) are imported on first use, so importing this package does
not pull in pydicom or nibabel.
"""

from medsr.io.image import (
    SUPPORTED_EXTENSIONS,
    Image,
    ImageMeta,
    from_uint,
    is_supported,
    read_image,
    to_uint,
    write_image,
)
from medsr.io.mnist import read_mnist

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "Image",
    "ImageMeta",
    "from_uint",
    "is_supported",
    "read_image",
    "read_mnist",
    "to_uint",
    "write_image",
]
