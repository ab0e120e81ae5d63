"""Through-plane super-resolution of anisotropic volumes (thick slices made thin), SMORE-style.

The volume is resampled along its slice axis only. Geometry is exact: N slices of spacing d cover
N*d; the new grid has N' = round(N*d/t) slices of spacing t' = N*d/N' over the same extent, its first
centre at the old first slice's edge + t'/2, i.e. shifted by (t' - d)/2 from the old first centre.

The thick slices are first interpolated (cubic B-spline) to the new grid; a 2-D network trained to
undo the slice profile (medsr.models.through_plane) then adds its residual on the planes that
contain the slice axis, in both orientations, and the two results are averaged. Memory stays
bounded: the input and output volumes are whole, the network sees one slab of planes at a time.

Arrays are (X, Y, Z)-like: any axis can be the slice axis. DICOM series and NIfTI writers only
need `upscale_through_plane` (arrays + spacing) and `ThroughPlaneResult.shift`.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from medsr import hardware, zoo
from medsr.data import slice_profile
from medsr.errors import MedsrError, NothingToThinError
from medsr.io import Image
from medsr.io.types import MAX_PIXELS
from medsr.models.value_range import to_signed, to_unit

if TYPE_CHECKING:  # pydicom loads only when a series is upscaled
    from medsr.io.series import Series

MODEL = "through-plane"  # the shipped model (src/medsr/zoo/through-plane.md)
BATCH_PIXELS = 1 << 20  # fine-grid pixels per forward pass: bounds the network's working memory


class ThroughPlaneResult(NamedTuple):
    array: np.ndarray  # the new volume, float32, same axes as the input
    spacing: tuple  # the new voxel spacing (mm), only the slice axis changes
    positions: np.ndarray  # new slice centres along the slice axis, mm from the OLD first slice centre
    shift: float  # new first centre - old first centre (mm) = (t' - d) / 2


class ThroughPlaneGrid(NamedTuple):
    count: int  # N'
    spacing: float  # t'
    positions: np.ndarray  # new centres, mm from the old first centre
    coords: np.ndarray  # new centres in old slice-index units (for interpolation)


def through_plane_grid(count: int, spacing: float, target_spacing: float) -> ThroughPlaneGrid:
    """The new grid along the slice axis: same extent count*spacing, N' = round(count*spacing/target)."""
    extent = count * spacing
    new_count = max(1, round(extent / target_spacing))
    new_spacing = extent / new_count
    positions = (np.arange(new_count) + 0.5) * new_spacing - spacing / 2
    return ThroughPlaneGrid(new_count, new_spacing, positions, positions / spacing)


def _check(volume: np.ndarray, spacing, slice_axis: int, target_spacing: float | None, name: str) -> tuple[np.ndarray, list, int, float]:
    """The volume as float32, spacing as floats, the axis (non-negative) and the target spacing; or MedsrError."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise MedsrError(f"{name}: a {volume.ndim}-D array with shape {volume.shape}, not a 3-D volume; pass one (X, Y, Z) volume")
    if not -3 <= slice_axis < 3:
        raise MedsrError(f"{name}: slice_axis {slice_axis} is not an axis of a 3-D volume; use 0, 1 or 2")
    axis = slice_axis % 3
    spacing = [float(s) for s in spacing]
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise MedsrError(f"{name}: spacing {spacing} must be 3 positive numbers (mm), one per axis")
    if volume.shape[axis] < 2:
        raise MedsrError(f"{name}: only {volume.shape[axis]} slice along axis {axis}; through-plane SR needs at least 2 slices")
    in_plane = min(s for a, s in enumerate(spacing) if a != axis)
    target = in_plane if target_spacing is None else float(target_spacing)
    if not (math.isfinite(target) and target > 0):
        raise MedsrError(f"{name}: target spacing {target_spacing} must be a positive number of mm")
    count = through_plane_grid(volume.shape[axis], spacing[axis], target).count
    voxels = count * math.prod(n for a, n in enumerate(volume.shape) if a != axis)
    if voxels > MAX_PIXELS:
        raise MedsrError(f"{name}: {volume.shape[axis]} slices {spacing[axis]:g} mm apart make {count} at a target of {target:g} mm, "
                         f"{voxels:,} voxels, above medsr's limit of {MAX_PIXELS:,}; ask for a larger target "
                         "(--slice-spacing; in Python slice_spacing=)")
    if count <= volume.shape[axis]:
        raise NothingToThinError(
            f"{name}: {volume.shape[axis]} slices {spacing[axis]:g} mm apart make {count} at a target of {target:g} mm, so there is "
            "nothing to thin; ask for a smaller target (--slice-spacing; in Python slice_spacing=, or slice_axis= for another axis), "
            "or upscale in-plane instead (without --through-plane)", volume.shape[axis], spacing[axis])
    if not np.all(np.isfinite(volume)):
        raise MedsrError(f"{name}: the volume holds NaN or infinite values; fix or mask them first")
    return volume.astype(np.float32, copy=False), spacing, axis, target


def _new_spacing(spacing: list, axis: int, grid: ThroughPlaneGrid) -> tuple:
    return tuple(grid.spacing if a == axis else s for a, s in enumerate(spacing))


def interpolate_through_plane(volume: np.ndarray, spacing, slice_axis: int, *, target_spacing: float | None = None,
                              order: int = 3) -> ThroughPlaneResult:
    """The classical baseline on the same exact grid: order 3 = cubic B-spline, 1 = linear; clipped below at the input's minimum."""
    volume, spacing, axis, target = _check(volume, spacing, slice_axis, target_spacing, "volume")
    grid = through_plane_grid(volume.shape[axis], spacing[axis], target)
    matrix = slice_profile.interpolation_matrix(volume.shape[axis], grid.coords, order)
    out = np.maximum(slice_profile.apply_along_axis(matrix, volume, axis), volume.min()).astype(np.float32)
    return ThroughPlaneResult(out, _new_spacing(spacing, axis, grid), grid.positions, float(grid.positions[0]))


def check_model(model) -> None:
    """A MedsrError now, before any file is read, unless `model` loads as a through-plane model."""
    _load_model(model, torch.device("cpu"))


def _load_model(model, device: torch.device) -> torch.nn.Module:
    if isinstance(model, torch.nn.Module):
        return model.to(device).eval()
    network, meta = zoo.load(model, device)
    if meta.get("medsr_arch") != "through-plane":
        raise MedsrError(f"{meta.get('path', model)}: a {meta.get('medsr_arch')} model, not a through-plane one; "
                         f"use the shipped '{MODEL}' model or one trained with configs/through-plane.yaml")
    return network


def _run_planes(network, planes: np.ndarray, device, dtype) -> np.ndarray:
    """(B, H, W) planes in [0, 1], degraded along H -> the network's output, same shape, in batches."""
    out = planes.copy()
    # constant planes (the empty air around a head) have no detail to restore: they pass through
    busy = np.flatnonzero(planes.max(axis=(1, 2)) > planes.min(axis=(1, 2)))
    per_batch = max(1, BATCH_PIXELS // (planes.shape[1] * planes.shape[2]))
    memory_format = torch.channels_last if dtype is not None else torch.contiguous_format
    for start in range(0, len(busy), per_batch):
        chosen = busy[start:start + per_batch]
        x = to_signed(torch.from_numpy(planes[chosen])[:, None].to(device))
        with torch.no_grad(), hardware.autocast(device, dtype):
            y = network(x.contiguous(memory_format=memory_format))
        out[chosen] = to_unit(y.float(), clamp=False)[:, 0].cpu().numpy()
    return out


def adapt(network: torch.nn.Module, volume01: np.ndarray, slice_axis: int, factor: float, thickness: float, minutes: float,
          device: torch.device, dtype, seed: int = 0, batch_size: int = 8, hr_size: int = 96, lr: float = 5e-5) -> torch.nn.Module:
    """A copy of `network` fine-tuned for `minutes` on the volume's own in-plane planes (normal to the
    slice axis), degraded along an in-plane axis with the volume's factor and thickness (SMORE's self-supervision)."""
    size = min(s for a, s in enumerate(volume01.shape) if a != slice_axis)
    sampler = slice_profile.ThroughPlaneSampler([volume01], min(hr_size, size - size % 2), seed=seed, factors=(factor, factor),
                                                thickness=(thickness / factor, thickness / factor),
                                                gap_fraction=1.0 if thickness != factor else 0.0, plane_axes=(slice_axis,))
    tuned = copy.deepcopy(network).to(device).train()
    optimizer = torch.optim.Adam(tuned.parameters(), lr=lr)
    memory_format = torch.channels_last if dtype is not None else torch.contiguous_format
    end = time.monotonic() + minutes * 60
    while time.monotonic() < end:
        inp, target = sampler.next_batch(batch_size)
        with hardware.autocast(device, dtype):
            out = tuned(inp.to(device).contiguous(memory_format=memory_format))
        loss = torch.nn.functional.l1_loss(out.float(), target.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return tuned.eval()


class _Prepared(NamedTuple):
    """A checked volume ready for the through-plane network, in its conventions."""

    volume: np.ndarray  # float32, the caller's axes
    spacing: list
    axis: int
    grid: ThroughPlaneGrid
    thickness: float  # mm
    device: torch.device
    dtype: torch.dtype | None
    network: torch.nn.Module
    low: float  # intensities (v - low) / white: the slice axis first in each plane, white ~ 1
    white: float
    moved: np.ndarray  # (A, B, slices): a view of volume


def _prepare(volume: np.ndarray, spacing, slice_axis: int, model, target_spacing: float | None, slice_thickness: float | None,
             adapt_minutes: float, device: str, precision: str, name: str) -> _Prepared:
    volume, spacing, axis, target = _check(volume, spacing, slice_axis, target_spacing, name)
    if not (math.isfinite(adapt_minutes) and adapt_minutes >= 0):
        raise MedsrError(f"{name}: adapt_minutes {adapt_minutes} must be 0 (no adaptation) or more")
    thickness = spacing[axis] if slice_thickness is None else float(slice_thickness)
    if not (math.isfinite(thickness) and thickness > 0):
        raise MedsrError(f"{name}: slice thickness {slice_thickness} must be a positive number of mm")
    torch_device = hardware.resolve_device(device)
    # int8 concerns the in-plane models (medsr.models.int8); the through-plane network runs as auto then
    dtype = hardware.resolve_precision("auto" if precision == "int8" else precision, torch_device)
    low = min(0.0, float(volume.min()))
    return _Prepared(volume, spacing, axis, through_plane_grid(volume.shape[axis], spacing[axis], target), thickness, torch_device,
                     dtype, _load_model(model, torch_device), low, slice_profile.intensity_scale(volume - low), np.moveaxis(volume, axis, 2))


def _adapted(p: _Prepared, minutes: float) -> torch.nn.Module:
    return adapt(p.network, (p.moved - p.low) / p.white, 2, p.spacing[p.axis] / p.grid.spacing, p.thickness / p.grid.spacing,
                 minutes, p.device, p.dtype)


def adapted_model(volume: np.ndarray, spacing, slice_axis: int, minutes: float, *, model=MODEL, target_spacing: float | None = None,
                  slice_thickness: float | None = None, device: str = "auto", precision: str = "auto",
                  name: str = "volume") -> torch.nn.Module:
    """The through-plane network fine-tuned for `minutes` on this volume's own in-plane detail, as
    upscale_through_plane's adapt_minutes does, to pass on as its `model`: the volumes of a 4-D file share one."""
    prepared = _prepare(volume, spacing, slice_axis, model, target_spacing, slice_thickness, minutes, device, precision, name)
    return _adapted(prepared, minutes)


def upscale_through_plane(volume: np.ndarray, spacing, slice_axis: int, *, model=MODEL, target_spacing: float | None = None,
                          slice_thickness: float | None = None, adapt_minutes: float = 0, progress: bool | Callable = True,
                          device: str = "auto", precision: str = "auto", name: str = "volume") -> ThroughPlaneResult:
    """Thick slices made thin: resample `volume` along `slice_axis` to `target_spacing` mm (default: the
    finest in-plane spacing) with the through-plane network.

    spacing: voxel spacing (mm) per axis, the slice axis' entry being the distance between slice centres.
    slice_thickness: the slices' thickness (mm; default = spacing; smaller for gaps); it sets the slice
    profile of the adaptation pairs. adapt_minutes > 0 fine-tunes a copy of the model on this volume's
    in-plane planes first. progress: True for a tqdm bar, False, or a callable(done, total).
    model: a shipped name, a model file, or a loaded network. Returns ThroughPlaneResult."""
    prepared = _prepare(volume, spacing, slice_axis, model, target_spacing, slice_thickness, adapt_minutes, device, precision, name)
    volume, spacing, axis, grid, _, torch_device, dtype, network, low, white, moved = prepared
    if adapt_minutes > 0:
        network = _adapted(prepared, adapt_minutes)
    matrix = slice_profile.interpolation_matrix(moved.shape[2], grid.coords, order=3)
    out = np.zeros(moved.shape[:2] + (grid.count,), dtype=np.float32)

    # Slabs of planes, in both orientations: planes (slices, B) at fixed A, then (slices, A) at fixed B.
    per_slab = max(1, BATCH_PIXELS // (grid.count * max(moved.shape[:2])))
    slabs = [(0, start) for start in range(0, moved.shape[0], per_slab)] + [(1, start) for start in range(0, moved.shape[1], per_slab)]
    bar = tqdm(total=len(slabs), desc="through-plane", unit="slab", disable=progress is not True, leave=False)
    for done, (orientation, start) in enumerate(slabs, 1):
        index = (slice(start, start + per_slab), slice(None)) if orientation == 0 else (slice(None), slice(start, start + per_slab))
        slab = (np.tensordot(moved[index], matrix, axes=(2, 1)) - low) / white  # interpolated to the new grid
        planes = slab.transpose(0, 2, 1) if orientation == 0 else slab.transpose(1, 2, 0)  # (plane, new slices, in-plane)
        result = _run_planes(network, np.ascontiguousarray(planes, dtype=np.float32), torch_device, dtype)
        out[index] += result.transpose(0, 2, 1) if orientation == 0 else result.transpose(2, 0, 1)
        bar.update(1)
        if callable(progress):
            progress(done, len(slabs))
    bar.close()
    out = np.maximum(out * (white / 2) + low, volume.min())  # mean of the two orientations, back to the input's units
    out = _flat_kept(out, moved, grid.coords)
    return ThroughPlaneResult(np.moveaxis(out, 2, axis), _new_spacing(spacing, axis, grid), grid.positions, float(grid.positions[0]))


def _flat_kept(out: np.ndarray, moved: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """`out` (A, B, new slices) where the source `moved` (A, B, slices) is flat around each new voxel
    (the 5 nearest slices, 3x3 in-plane: all the cubic interpolation reads) set to that one value
    exactly, so a skull-stripped volume's zero background stays 0, as the in-plane models keep it."""
    from scipy import ndimage

    size = (3, 3, 5)
    flat = ndimage.maximum_filter(moved, size=size, mode="nearest") == ndimage.minimum_filter(moved, size=size, mode="nearest")
    for k, j in enumerate(np.clip(np.rint(coords).astype(int), 0, moved.shape[2] - 1)):  # slice by slice: no second volume
        out[:, :, k][flat[:, :, j]] = moved[:, :, j][flat[:, :, j]]
    return out


# ---- medsr upscale --through-plane: NIfTI volumes and DICOM series through the batch runner ----

@dataclass(frozen=True)
class ThroughPlane:
    """What `--through-plane` asks for: the target slice spacing in mm (None: the finest in-plane
    spacing), the slices' thickness where they have gaps (None: a DICOM series' SliceThickness, else
    their spacing), and minutes of adaptation (once per file)."""

    slice_spacing: float | None = None
    slice_thickness: float | None = None
    adapt_minutes: float = 0.0
    model: str | torch.nn.Module = MODEL  # a shipped name, a model file, or a loaded (adapted) network
    device: str = "auto"
    precision: str = "auto"

    def apply(self, stack: np.ndarray, slice_spacing: float, pixel_spacing, name: str,
              slice_thickness: float | None = None) -> ThroughPlaneResult:
        """(slices, rows, columns) in [0, 1] -> thin slices along the first axis, still in [0, 1];
        `slice_thickness`: the file's own, used where the options give none."""
        result = upscale_through_plane(stack, self._spacing(slice_spacing, pixel_spacing, name), 0, model=self.model,
                                       target_spacing=self.slice_spacing, slice_thickness=self._thickness(slice_thickness),
                                       adapt_minutes=self.adapt_minutes, device=self.device, precision=self.precision, name=name,
                                       progress=sys.stderr.isatty())  # a log gets the batch's plain lines, not a bar's redraws
        return result._replace(array=np.clip(result.array, 0.0, 1.0))

    def adapted_on(self, stack: np.ndarray, slice_spacing: float, pixel_spacing, name: str,
                   slice_thickness: float | None = None) -> ThroughPlane:
        """These options with the model fine-tuned once, on `stack` (apply's arguments), for all the
        volumes of one file to share: a 4-D file's adaptation takes adapt_minutes, not that per volume."""
        if self.adapt_minutes <= 0:
            return self
        network = adapted_model(stack, self._spacing(slice_spacing, pixel_spacing, name), 0, self.adapt_minutes, model=self.model,
                                target_spacing=self.slice_spacing, slice_thickness=self._thickness(slice_thickness),
                                device=self.device, precision=self.precision, name=name)
        return replace(self, model=network, adapt_minutes=0.0)

    @staticmethod
    def _spacing(slice_spacing: float, pixel_spacing, name: str) -> tuple:
        if pixel_spacing is None:
            raise MedsrError(f"{name}: has no in-plane pixel spacing, so its slices' thickness means nothing; fix the header")
        return slice_spacing, *pixel_spacing

    def _thickness(self, own: float | None) -> float | None:
        return self.slice_thickness if self.slice_thickness is not None else own


def through_plane_image(image: Image, options: ThroughPlane) -> Image:
    """A NIfTI volume from read_image (slices first) made thin along its slice axis, with the
    metadata of the new grid (same field of view), which write_image turns into the exact affine.
    A 4-D file's volumes (time points, directions) are made thin one by one (adapted once, on the first)."""
    from medsr.io import nifti  # on first use, as medsr.io imports its format modules (nibabel is slow to import)

    spacing = nifti.slice_spacing(image.meta)
    volumes = np.split(image.pixels, nifti.volume_count(image.meta))
    if len(volumes[0]) < 2:  # said in the file's axes, not the slices-first stack's
        raise MedsrError(f"{image.meta.path}: only {len(volumes[0])} slice along its slice axis (axis {image.meta.slice_axis} of "
                         f"the file); through-plane SR needs at least 2 slices")
    options = options.adapted_on(volumes[0], spacing, image.meta.pixel_spacing, image.meta.path) if len(volumes) > 1 else options
    results = [options.apply(volume, spacing, image.meta.pixel_spacing, image.meta.path) for volume in volumes]
    return Image(np.concatenate([result.array for result in results]), nifti.resliced(image.meta, results[0].spacing[0]))


def through_plane_series(series: Series, stacks: list[np.ndarray], options: ThroughPlane) -> tuple[list[np.ndarray], dict]:
    """Every volume of a DICOM series made thin: the new stacks, and the keyword arguments that tell
    write_derived_series where the new slices are (mm along the normal) and how thick."""
    first = series.volumes[0]
    if len(stacks) > 1:
        options = options.adapted_on(stacks[0], first.slice_spacing, first.pixel_spacing, str(first.paths[0]), first.slice_thickness)
    results = [options.apply(stack, volume.slice_spacing, volume.pixel_spacing, str(volume.paths[0]), volume.slice_thickness)
               for volume, stack in zip(series.volumes, stacks)]
    return [r.array for r in results], {"positions": first.positions[0] + results[0].positions, "slice_thickness": results[0].spacing[0]}


def upscale_image(image: Image, upscaler, options: ThroughPlane | None) -> Image:
    """An image from read_image with its thick slices made thin (`options`; None: not) and then
    upscaled in-plane (`upscaler`; None: not), with the metadata that writes it back."""
    if options is not None:
        image = through_plane_image(image, options)
    return Image(image.pixels if upscaler is None else upscaler.upscale(image.pixels), image.meta)


def upscale_series(series: Series, stacks: list[np.ndarray], upscaler, options: ThroughPlane | None) -> tuple[list[np.ndarray], dict]:
    """upscale_image for every volume of a DICOM series: the results, and the keyword arguments
    write_derived_series needs for a new grid of slices (none when the slices stay)."""
    grid = {}
    if options is not None:
        stacks, grid = through_plane_series(series, stacks, options)
    return [stack if upscaler is None else upscaler.upscale(stack) for stack in stacks], grid
