"""medsr: super-resolution of medical images.

The Python API (see docs/API.md): `upscale`, `upscale_file`, `uncertainty_map`, `load_model`,
`list_models`, and `read_image` / `write_image` for medsr's own [0, 1] image records.
"""

from medsr.api import list_models, load_model, uncertainty_map, upscale, upscale_file
from medsr.errors import MedsrError
from medsr.io import Image, ImageMeta, read_image, write_image

__version__ = "0.1.0"
__all__ = [
    "Image",
    "ImageMeta",
    "MedsrError",
    "__version__",
    "list_models",
    "load_model",
    "read_image",
    "uncertainty_map",
    "upscale",
    "upscale_file",
    "write_image",
]
