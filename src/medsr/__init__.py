"""medsr: super-resolution of medical images.

The Python API (see docs/API.md): `upscale`, `upscale_file`, `uncertainty_map`, `load_model`,
`models`, and `read_image` / `write_image` for medsr's own [0, 1] image records.
"""

from medsr.api import load_model, models, uncertainty_map, upscale, upscale_file
from medsr.errors import MedsrError
from medsr.io import Image, ImageMeta, read_image, write_image

__version__ = "0.1.0"
__all__ = [
    "Image",
    "ImageMeta",
    "MedsrError",
    "__version__",
    "load_model",
    "models",
    "read_image",
    "uncertainty_map",
    "upscale",
    "upscale_file",
    "write_image",
]
