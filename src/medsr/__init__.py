"""medsr: super-resolution of medical images."""

from medsr.errors import MedsrError

__version__ = "0.1.0"
__all__ = ["MedsrError", "__version__"]
