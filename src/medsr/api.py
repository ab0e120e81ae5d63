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
from typing import NamedTuple

import numpy as np

from medsr import zoo
from medsr.errors import MedsrError
from medsr.files import NAME_MAX
from medsr.inference import hallucination
from medsr.inference import volume as volume_sr
from medsr.inference.upscaler import TiledUpscaler, load_upscaler
from medsr.io import read_image, write_image
from medsr.io import series as series_io
from medsr.io.formats import format_named, format_of_extension, with_format_extension
from medsr.io.types import as_unit
from medsr.settings import TILE_OVERLAP

ArrayOrPath = np.ndarray | str | os.PathLike


@functools.lru_cache(maxsize=4)
def load_model(model: str | os.PathLike | None = None, *, scale: int | None = None, device: str = "auto",
               precision: str = "auto", tile: int | None = None, tile_overlap: int = TILE_OVERLAP,
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


def _checked_unit(array: np.ndarray, volume: bool = False) -> tuple[np.ndarray, tuple[float, float]]:
    """as_unit after checking that the array is a gray image or stack of finite numbers (`volume`: a
    3-D volume, whose last axis may well hold 3 or 4 slices)."""
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise MedsrError(f"cannot upscale an array of dtype {array.dtype}; pass integer or float pixels")
    if array.ndim not in (2, 3) or min(array.shape) == 0:
        raise MedsrError(f"cannot upscale an array of shape {array.shape}; pass (H, W) or a stack (N, H, W) of gray images")
    if not volume and array.ndim == 3 and array.shape[-1] in (2, 3, 4) and array.shape[0] > 4:  # a stack of 3-pixel-wide images is no scan
        kind = "gray image with alpha" if array.shape[-1] == 2 else "colour image"
        raise MedsrError(f"an array of shape {array.shape} is a {kind} (H, W, {array.shape[-1]}), not a stack (N, H, W); "
                         "pass it in gray, e.g. its luminance (RGB @ [0.299, 0.587, 0.114]) or its first channel")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise MedsrError("the array holds NaN or infinite values; replace them (e.g. np.nan_to_num) first")
    return as_unit(array)


def upscale(image: ArrayOrPath, model: str | os.PathLike | None = None, scale: int | None = None, *,
            device: str = "auto", precision: str = "auto", tile: int | None = None, runtime: str = "torch") -> np.ndarray:
    """Upscale one gray image (or a stack of them) and return the result as a numpy array.

    Args:
        image: an (H, W) or (N, H, W) array, or the path of any file medsr reads (PNG, JPEG, TIFF,
            DICOM, NIfTI). Integer arrays keep their dtype and range (uint8 in, uint8 out); float
            arrays in [0, 1] come back in [0, 1]; other float arrays (e.g. Hounsfield units) come
            back in their own range. A file gives float32 in [0, 1] (use `upscale_file` to keep
            its format and metadata); a NIfTI volume as its slices, (slices, rows, columns), each
            slice across its thickest axis (`upscale_volume` keeps the array's own axes).
        model: shipped model name (see `list_models()`), .safetensors file, run folder, or, with
            runtime="onnx", an .onnx file. None: the shipped default for `scale` (x3: "default", or
            "default-jpeg" for the path of a JPEG file or DICOM stored as lossy JPEG, as `medsr upscale` picks).
        scale: the expected factor; must be the model's own (None: whatever the model does).
        device: "auto", "cpu" or "cuda". precision: "auto" (bf16 where native), "fp32", "bf16" or "int8" (CPU; default models).
        tile: tile size in input pixels (0 = whole image at once; None: 512, or 256 for bf16 on CPUs with AMX); bounds memory on big images.
        runtime: "torch", or "onnx" (onnxruntime, fp32).

    Returns:
        The upscaled array, shape (H*s, W*s) or (N, H*s, W*s).
    """
    _check_image_type(image)
    if model is None and not isinstance(image, np.ndarray):
        model = zoo.default_model(scale, [image])
    upscaler = load_model(model, scale=scale, device=device, precision=precision, tile=tile, runtime=runtime)
    if not isinstance(image, np.ndarray):
        return upscaler.upscale(read_image(image).pixels)
    if image.ndim == 3 and image.shape[-1] == 1 and image.shape[0] > 4:  # (H, W, 1): one gray channel, not H images 1 pixel wide
        return upscale(image[..., 0], model, scale, device=device, precision=precision, tile=tile, runtime=runtime)[..., None]
    pixels01, (low, high) = _checked_unit(image)
    values = upscaler.upscale(pixels01).astype(np.float64) * (high - low) + low  # float64: a span near float32's limit stays finite
    if not np.issubdtype(image.dtype, np.integer):
        return values.astype(image.dtype if image.dtype.itemsize >= 4 else np.float32)
    return np.rint(values).astype(image.dtype)


def _check_image_type(image) -> None:
    if not isinstance(image, (np.ndarray, str, os.PathLike)):
        raise MedsrError(f"cannot upscale a {type(image).__name__}; pass a numpy array (np.asarray(...)) or a file path")
    if not isinstance(image, np.ndarray):
        _checked_path(image, "image")


def _checked_path(value, what: str) -> Path:
    """`value` as a Path, or a MedsrError: not a path, or empty (Path("") would be the current folder)."""
    if not isinstance(value, (str, os.PathLike)):
        raise MedsrError(f"{what} must be a file path (str or pathlib.Path), not a {type(value).__name__}")
    if not os.fspath(value):
        raise MedsrError(f"{what} is an empty path (an unset variable?); name the file")
    if len(os.fsencode(Path(value).name)) > NAME_MAX:
        raise MedsrError(f"{what} {Path(value).name[:24]}...: the name is {len(os.fsencode(Path(value).name))} bytes, over the {NAME_MAX} "
                         "that file systems allow; name it shorter")
    return Path(value)


def _check_thin_options(through_plane: bool, slice_spacing, slice_thickness, adapt_minutes, through_plane_model=None) -> None:
    if not through_plane and (slice_spacing is not None or slice_thickness is not None or adapt_minutes or through_plane_model is not None):
        raise MedsrError("slice_spacing, slice_thickness, adapt_minutes and through_plane_model go with through_plane=True; add it")


def _thin_model(through_plane_model) -> str:
    """The through-plane model to load: the shipped one, or a file or run folder of the caller's."""
    return volume_sr.MODEL if through_plane_model is None else str(through_plane_model)


def upscale_file(source: str | os.PathLike, target: str | os.PathLike, model: str | os.PathLike | None = None,
                 scale: int | None = None, *, format: str | None = None, through_plane: bool = False,
                 slice_spacing: float | None = None, slice_thickness: float | None = None, adapt_minutes: float = 0,
                 through_plane_model: str | os.PathLike | None = None,
                 device: str = "auto", precision: str = "auto", tile: int | None = None, runtime: str = "torch") -> Path:
    """Upscale one file, or a folder holding a DICOM series, keeping format, bit depth and metadata.

    A DICOM becomes a derived DICOM (new UIDs, Rows/Columns x scale, PixelSpacing / scale); a folder
    holding a DICOM series becomes one derived series in the folder `target`, or one NIfTI file where
    `target` ends in .nii.gz or .nii (or `format` is "nii"), with the series' geometry; a NIfTI keeps its
    affine with voxel sizes divided in-plane. through_plane=True first makes the thick slices of a
    NIfTI volume or a series thin (to `slice_spacing` mm, default the in-plane spacing; see
    `upscale_volume`); alone it keeps the in-plane grid, with `model` or `scale` it also upscales
    in-plane. `format` ("png", "tiff", "jpeg", "bmp", "dcm", "nii") overrides the target's
    extension. `model` None: the shipped default of `scale` (x3: "default-jpeg" for a JPEG file or JPEG DICOM,
    else "default"). Written atomically; the target may not be the source. Returns the path written
    (for a series, the folder, or the NIfTI file).
    """
    source, target = _checked_path(source, "source"), _checked_path(target, "target")
    _check_thin_options(through_plane, slice_spacing, slice_thickness, adapt_minutes, through_plane_model)
    if target.is_dir() and not source.is_dir():
        raise MedsrError(f"{target}: is a folder; name the file to write in it, e.g. {target / source.name}")
    if format is not None and not source.is_dir() and not target.name.lower().endswith(tuple(format_named(format, target).extensions)):
        target = with_format_extension(target, format)  # TIFF bytes under a .png name would open as nothing
    if target.exists() and target.resolve() == source.resolve():
        raise MedsrError(f"{target}: the output would overwrite the input; choose another target path")
    in_plane = not through_plane or model is not None or scale is not None
    if model is None and in_plane:
        model = zoo.default_model(scale, [source])  # default-jpeg for a JPEG file or JPEG DICOM, as `medsr upscale` picks
    upscaler = load_model(model, scale=scale, device=device, precision=precision, tile=tile, runtime=runtime) if in_plane else None
    options = volume_sr.ThroughPlane(slice_spacing, slice_thickness, adapt_minutes, model=_thin_model(through_plane_model), device=device,
                                     precision=precision) if through_plane else None
    model_name = "medsr " + (Path(str(model)).name if model is not None else volume_sr.MODEL)
    if source.is_dir():
        found = [series for series in series_io.scan_series(source) if series.volumes]
        if not found:
            raise MedsrError(f"{source}: holds no DICOM series that forms a volume; pass a folder of one series' files, or a file")
        kind = getattr(format_named(format) if format is not None else format_of_extension(target), "name", None)
        if kind not in (None, "nifti") and not (kind == "dicom" and (format is not None or target.is_dir())):  # not a folder x.png
            raise MedsrError(f"{source}: a DICOM series is written as a derived series into a folder, or as one NIfTI file, not as "
                             f"{target.name}; name a folder, or a .nii.gz file")
        nifti = kind == "nifti"
        if nifti and format is not None:
            target = with_format_extension(target, format)
        if nifti and len(found) > 1:
            raise MedsrError(f"{source}: holds {len(found)} DICOM series and a NIfTI file holds one; pass one series' folder, "
                             "or a target folder for derived DICOM series")
        for series in found:
            stacks, grid = volume_sr.upscale_series(series, [v.pixels for v in series.volumes], upscaler, options)
            if nifti:
                series_io.write_series_nifti(series, stacks, target.parent, model_name=model_name, target=target, **grid)
            else:
                series_io.write_derived_series(series, stacks, target, model_name=model_name, **grid)
        return target
    image = volume_sr.upscale_image(read_image(source), upscaler, options)
    return write_image(target, image, scale=upscaler.scale if upscaler else 1, model_name=model_name, format=format)


class VolumeResult(NamedTuple):
    array: np.ndarray  # the new volume, same axes and units as the input
    spacing: tuple[float, float, float]  # its voxel spacing (mm)
    origin_shift: tuple[float, float, float]  # mm, along each axis: new first voxel centre - old first voxel centre


def upscale_volume(volume: np.ndarray, spacing, *, slice_axis: int | None = None, model: str | os.PathLike | None = None,
                   scale: int | None = None, through_plane: bool = True, slice_spacing: float | None = None,
                   slice_thickness: float | None = None, adapt_minutes: float = 0, through_plane_model: str | os.PathLike | None = None,
                   device: str = "auto", precision: str = "auto", tile: int | None = None) -> VolumeResult:
    """Super-resolve a 3-D volume: thick slices made thin (through-plane) and, with `model` or
    `scale`, each slice upscaled in-plane. The field of view is unchanged and voxel edges line up.

    Args:
        volume: a 3-D array in any units (e.g. MRI intensities, Hounsfield units).
        spacing: voxel spacing in mm along each of its axes.
        slice_axis: the thick axis (default: the axis with the largest spacing).
        through_plane: resample the slice axis to `slice_spacing` mm (default: the finest in-plane
            spacing) with the shipped through-plane model; `slice_thickness` when the slices have
            gaps; `adapt_minutes` > 0 first fine-tunes it on this volume's own in-plane detail;
            `through_plane_model`: a model file or run folder of configs/through-plane.yaml instead of the shipped one.
        model, scale: in-plane super-resolution of every slice (None for both: none).

    Returns:
        VolumeResult(array, spacing, origin_shift): for a NIfTI affine A, the new affine has column
        a = A[:3, a] * new_spacing[a] / spacing[a] and origin A[:3, 3] + sum of A[:3, a] * origin_shift[a] / spacing[a].
    """
    _check_thin_options(through_plane, slice_spacing, slice_thickness, adapt_minutes, through_plane_model)
    if isinstance(volume, (str, os.PathLike)):
        raise MedsrError(f"{volume}: upscale_volume takes an array (e.g. nibabel's get_fdata()); for a file use "
                         "upscale_file(path, target, through_plane=True)")
    array = np.asarray(volume)
    if array.ndim != 3:
        raise MedsrError(f"upscale_volume takes a 3-D volume, not an array of shape {array.shape}; pass (X, Y, Z)")
    try:
        spacing = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise MedsrError(f"spacing {spacing!r} must be 3 positive numbers (mm), one per axis of the volume") from None
    if len(spacing) != 3 or not all(s > 0 for s in spacing):
        raise MedsrError(f"spacing {spacing} must be 3 positive numbers (mm), one per axis of the volume")
    if slice_axis is not None and (isinstance(slice_axis, bool) or not isinstance(slice_axis, (int, np.integer))
                                   or slice_axis not in (-3, -2, -1, 0, 1, 2)):
        raise MedsrError(f"slice_axis {slice_axis}: a 3-D volume has axes 0, 1 and 2; pass one of them (or None: the coarsest)")
    axis = int(np.argmax(spacing)) if slice_axis is None else slice_axis % 3
    _checked_unit(array, volume=True)
    # The volume's own darkest to brightest value as 0..1, as medsr reads a NIfTI file: the through-plane
    # model takes 0 for black, and an int16 volume's dtype range would put its zero background at mid-gray.
    low, high = float(array.min()), float(array.max())
    pixels01 = ((array.astype(np.float64) - low) / (high - low if high > low else 1.0)).astype(np.float32)
    shift = [0.0, 0.0, 0.0]
    if through_plane:
        result = volume_sr.upscale_through_plane(pixels01, spacing, axis, model=_thin_model(through_plane_model), target_spacing=slice_spacing,
                                                 slice_thickness=slice_thickness, adapt_minutes=adapt_minutes, device=device,
                                                 precision=precision)
        pixels01, spacing, shift[axis] = np.clip(result.array, 0, 1), result.spacing, result.shift
    if model is not None or scale is not None:
        upscaler = load_model(model, scale=scale, device=device, precision=precision, tile=tile)
        pixels01 = np.moveaxis(upscaler.upscale(np.ascontiguousarray(np.moveaxis(pixels01, axis, 0))), 0, axis)
        for a in range(3):
            if a != axis:
                shift[a] = spacing[a] * (1 / upscaler.scale - 1) / 2
        spacing = tuple(s if a == axis else s / upscaler.scale for a, s in enumerate(spacing))
    values = pixels01.astype(np.float64) * (high - low) + low
    values = np.rint(values).astype(array.dtype) if np.issubdtype(array.dtype, np.integer) else values.astype(np.float32)
    return VolumeResult(values, tuple(spacing), tuple(shift))


def uncertainty_map(image: ArrayOrPath, model: str | os.PathLike | None = None, reference_model: str | None = None, *,
                    device: str = "auto", precision: str = "auto") -> dict[str, np.ndarray]:
    """Where the upscaled image is not supported by its input (see medsr.inference.hallucination.hallucination_maps).

    Returns {"sr", "consistency", "disagreement", "combined"} as float32 arrays of the output's shape;
    "sr" is the output in [0, 1] (the range `upscale` maps the input from: a uint8/uint16 array's dtype
    range, other arrays' own min..max; call `upscale` for the output in the input's units); "combined" is 0 where the output is supported and >= 1 where it departs from the input (or from
    `reference_model`, by default `default-gan` for `default` and `default` for every other x3 model) by
    a tenth of the image's range. At x2 and x4 no second model is shipped: without `reference_model`
    there is no "disagreement" and "combined" is the consistency residual alone.
    """
    _check_image_type(image)
    # None: what `upscale` runs on this image (default-jpeg for the path of a JPEG file), so the maps describe that output
    name = zoo.default_model(None, [] if isinstance(image, np.ndarray) else [image]) if model is None else str(model)
    upscaler = load_model(name, device=device, precision=precision)
    if reference_model:
        hallucination.check_reference(name, reference_model)
    reference_name = reference_model or hallucination.reference_model_name(name, upscaler.scale)
    reference = None if reference_name is None else load_model(reference_name, device=device, precision=precision)
    pixels01 = _checked_unit(image)[0] if isinstance(image, np.ndarray) else read_image(image).pixels
    return hallucination.hallucination_maps(pixels01, upscaler, reference)
