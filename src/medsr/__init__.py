"""medsr: super-resolution of medical images.

The Python API (see docs/API.md): `upscale`, `upscale_volume`, `upscale_file`, `uncertainty_map`, `load_model`,
`list_models`, and `read_image` / `write_image` for medsr's own [0, 1] image records.
They are loaded on first use, so `import medsr` stays light (no torch) until one is called.
"""

import importlib

from medsr.errors import MedsrError

__version__ = "0.1.0"
# name -> the module that defines it, imported on first access (PEP 562)
_LAZY = {
    "upscale": "medsr.api", "upscale_file": "medsr.api", "uncertainty_map": "medsr.api",
    "load_model": "medsr.api", "list_models": "medsr.api", "upscale_volume": "medsr.api",
    "Image": "medsr.io", "ImageMeta": "medsr.io", "read_image": "medsr.io", "write_image": "medsr.io",
}
__all__ = ["MedsrError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medsr' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
