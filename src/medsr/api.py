"""The Python API: upscale arrays and files from a script or a notebook in one call.

    import medsr
    sr = medsr.upscale(lr_array, model="default", scale=3)        # numpy in, numpy out
    medsr.upscale_file("scan.dcm", "scan-x3.dcm")                  # derived DICOM, spacing / 3

Models are loaded once per (model, device, precision, tile, runtime) and kept, so calling these in
a loop costs only the upscaling. Everything a user can get wrong raises `medsr.MedsrError` with a
message that names the problem and the fix.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from medsr import zoo
from medsr.errors import MedsrError
from medsr.inference import hallucination
from medsr.inference.upscaler import TiledUpscaler, load_upscaler
from medsr.io import read_image, write_image
from medsr.io.types import as_unit
from medsr.settings import TILE, TILE_OVERLAP

ArrayOrPath = np.ndarray | str | os.PathLike


@functools.lru_cache(maxsize=4)
def load_model(model: str | os.PathLike | None = None, *, scale: int | None = None, device: str = "auto",
               precision: str = "auto", tile: int = TILE, tile_overlap: int = TILE_OVERLAP,
               runtime: str = "torch") -> TiledUpscaler:
    """A ready upscaler (`.scale`, `.upscale(pixels01)`) for a shipped model name, model file or run folder.

    model=None: the shipped default for `scale` (default at x3, default-x2, default-x4).
    Cached: the same arguments return the same object. `scale`, when given, must be the model's own.
    """
    upscaler, _ = load_upscaler(None if model is None else str(model), scale=scale, device=device, precision=precision,
                                tile=tile, tile_overlap=tile_overlap, runtime=runtime)
    return upscaler


def list_models() -> dict[str, int]:
    """Shipped model names and the scale each upscales by."""
    return zoo.shipped_scales()


def _checked_unit(array: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """as_unit after checking that the array is a gray image or stack of finite numbers."""
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise MedsrError(f"cannot upscale an array of dtype {array.dtype}; pass integer or float pixels")
    if array.ndim not in (2, 3) or min(array.shape) == 0:
        raise MedsrError(f"cannot upscale an array of shape {array.shape}; pass (H, W) or a stack (N, H, W) of gray images")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise MedsrError("the array holds NaN or infinite values; replace them (e.g. np.nan_to_num) first")
    return as_unit(array)


def upscale(image: ArrayOrPath, model: str | os.PathLike | None = None, scale: int | None = None, *,
            device: str = "auto", precision: str = "auto", tile: int = TILE, runtime: str = "torch") -> np.ndarray:
    """Upscale one gray image (or a stack of them) and return the result as a numpy array.

    Args:
        image: an (H, W) or (N, H, W) array, or the path of any file medsr reads (PNG, JPEG, TIFF,
            DICOM, NIfTI). Integer arrays keep their dtype and range (uint8 in, uint8 out); float
            arrays in [0, 1] come back in [0, 1]; other float arrays (e.g. Hounsfield units) come
            back in their own range. A file gives float32 in [0, 1] (use `upscale_file` to keep
            its format and metadata).
        model: shipped model name (see `list_models()`), .safetensors file, run folder, or, with
            runtime="onnx", an .onnx file. None: the shipped default for `scale` (x3: "default").
        scale: the expected factor; must be the model's own (None: whatever the model does).
        device: "auto", "cpu" or "cuda". precision: "auto" (bf16 where native), "fp32" or "bf16".
        tile: tile size in input pixels (0 = whole image at once); bounds memory on big images.
        runtime: "torch", or "onnx" (onnxruntime, fp32).

    Returns:
        The upscaled array, shape (H*s, W*s) or (N, H*s, W*s).
    """
    upscaler = load_model(model, scale=scale, device=device, precision=precision, tile=tile, runtime=runtime)
    if not isinstance(image, np.ndarray):
        return upscaler.upscale(read_image(image).pixels)
    pixels01, (low, high) = _checked_unit(image)
    sr01 = upscaler.upscale(pixels01)
    if not np.issubdtype(image.dtype, np.integer):
        return (sr01 * (high - low) + low).astype(image.dtype if image.dtype.itemsize >= 4 else np.float32)
    return np.rint(sr01.astype(np.float64) * (high - low) + low).astype(image.dtype)


def upscale_file(source: str | os.PathLike, target: str | os.PathLike, model: str | os.PathLike | None = None,
                 scale: int | None = None, *, format: str | None = None, device: str = "auto",
                 precision: str = "auto", tile: int = TILE, runtime: str = "torch") -> Path:
    """Upscale one file into another, keeping its format, bit depth and metadata.

    A DICOM becomes a derived DICOM (new UIDs, Rows/Columns x scale, PixelSpacing / scale); a NIfTI
    keeps its affine with voxel sizes divided in-plane. `format` ("png", "tiff", "jpeg", "bmp", "dcm", "nii")
    overrides the target's extension. The target is written atomically and may not be the source.
    Returns the path written.
    """
    source, target = Path(source), Path(target)
    if target.exists() and target.resolve() == source.resolve():
        raise MedsrError(f"{target}: the output would overwrite the input; choose another target path")
    upscaler = load_model(model, scale=scale, device=device, precision=precision, tile=tile, runtime=runtime)
    image = read_image(source)
    image.pixels = upscaler.upscale(image.pixels)
    model_name = zoo.default_model(scale) if model is None else Path(str(model)).name
    return write_image(target, image, scale=upscaler.scale, model_name=f"medsr {model_name}", format=format)


def uncertainty_map(image: ArrayOrPath, model: str | os.PathLike | None = None, reference_model: str | None = None, *,
                    device: str = "auto", precision: str = "auto") -> dict[str, np.ndarray]:
    """Where the upscaled image is not supported by its input (see medsr.inference.hallucination.hallucination_maps).

    Returns {"sr", "consistency", "disagreement", "combined"} as float32 arrays of the output's shape;
    "combined" is 0 where the output is supported and >= 1 where it departs from the input (or from
    `reference_model`, by default `default-gan` for `default` and `default` for every other x3 model) by
    a tenth of the image's range. At x2 and x4 no second model is shipped: without `reference_model`
    there is no "disagreement" and "combined" is the consistency residual alone.
    """
    name = zoo.DEFAULT_MODEL if model is None else str(model)
    upscaler = load_model(name, device=device, precision=precision)
    reference_name = reference_model or hallucination.reference_model_name(name, upscaler.scale)
    reference = None if reference_name is None else load_model(reference_name, device=device, precision=precision)
    pixels01 = _checked_unit(image)[0] if isinstance(image, np.ndarray) else read_image(image).pixels
    return hallucination.hallucination_maps(pixels01, upscaler, reference)
