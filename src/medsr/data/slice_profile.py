"""Thick slices along one axis: the slice-profile degradation, its inverse's baseline, and training pairs.

Units are voxels of the fine grid along the degraded axis. Fine voxel j covers [j - 0.5, j + 0.5].
A thick-slice acquisition samples every `spacing` voxels (non-integer allowed) with a slice profile
of FWHM `thickness` (default: = spacing; thickness < spacing is a gap between slices). Edge-aligned
sampling (the default) puts thick slice i's centre at (i + 0.5) * spacing - 0.5, so n thick slices
cover exactly n * spacing fine voxels, as n slices of spacing d cover n * d mm in a scanner.

Both the degradation and the interpolation back are small dense matrices applied along one axis:
exact for any non-integer spacing and phase, and one matrix product on a whole slab.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from medsr.errors import MedsrError
from medsr.models.value_range import to_signed

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548
PROFILES = ("gaussian", "rect")


def profile_weights(offsets: np.ndarray, thickness: float, profile: str | Callable = "gaussian") -> np.ndarray:
    """Unnormalised slice-profile weights at `offsets` (fine voxels from the slice centre).
    gaussian: FWHM = thickness; rect: a box `thickness` wide; or a callable(offsets, thickness)."""
    if callable(profile):
        return np.asarray(profile(offsets, thickness), dtype=np.float64)
    if profile == "gaussian":
        sigma = thickness / FWHM_PER_SIGMA
        return np.exp(-0.5 * (offsets / sigma) ** 2)
    if profile == "rect":
        # partial-volume weight of each fine voxel inside the box [-t/2, t/2]
        return np.clip(np.minimum(offsets + 0.5, thickness / 2) - np.maximum(offsets - 0.5, -thickness / 2), 0, 1)
    raise MedsrError(f"unknown slice profile {profile!r}; use {' or '.join(PROFILES)} or a callable(offsets, thickness)")


def edge_aligned_positions(n_fine: int, spacing: float) -> np.ndarray:
    """Centres (fine-voxel units) of the thick slices that fit in n_fine voxels, the first at the grid's edge."""
    count = math.floor(n_fine / spacing + 1e-6)
    if count < 2:
        raise MedsrError(f"spacing {spacing:g} leaves fewer than 2 thick slices in {n_fine} voxels; use a smaller factor")
    return (np.arange(count) + 0.5) * spacing - 0.5


def degrade_matrix(n_fine: int, positions: np.ndarray, thickness: float, profile: str | Callable = "gaussian") -> np.ndarray:
    """(len(positions), n_fine) matrix: row i is the slice profile centred at positions[i], normalised
    to sum 1 over the voxels inside the grid (weights beyond the edges are dropped, not wrapped)."""
    if thickness <= 0:
        raise MedsrError(f"slice thickness {thickness:g} must be > 0")
    offsets = np.arange(n_fine)[None, :] - np.asarray(positions, dtype=np.float64)[:, None]
    weights = profile_weights(offsets, thickness, profile)
    total = weights.sum(axis=1, keepdims=True)
    if np.any(total <= 0):
        raise MedsrError("a slice profile has no weight inside the grid; check thickness and positions")
    return (weights / total).astype(np.float32)


def interpolation_matrix(n_coarse: int, coords: np.ndarray, order: int = 3) -> np.ndarray:
    """(len(coords), n_coarse) matrix interpolating n_coarse samples at coarse-index coordinates
    `coords`: order 3 is the cubic B-spline (scipy.ndimage), 1 linear; mirror at the half-sample edges."""
    coords = np.asarray(coords, dtype=np.float64)
    # One call: the 2-D spline of the identity, read at integer columns, is the 1-D spline of each unit vector.
    rows, cols = np.broadcast_arrays(coords[:, None], np.arange(n_coarse)[None, :])
    from scipy import ndimage  # here: a plain image upscale never needs scipy (start-up time)

    return ndimage.map_coordinates(np.eye(n_coarse), [rows, cols], order=order, mode="reflect").astype(np.float32)


def apply_along_axis(matrix: np.ndarray, array: np.ndarray, axis: int) -> np.ndarray:
    """matrix @ array along `axis` (the axis keeps its place; its length becomes matrix.shape[0])."""
    moved = np.moveaxis(array, axis, 0)
    out = np.tensordot(matrix, moved, axes=(1, 0))
    return np.moveaxis(out, 0, axis)


def simulate_thick_slices(array: np.ndarray, axis: int, spacing: float, thickness: float | None = None,
                          profile: str | Callable = "gaussian", positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Thick slices of `array` along `axis`: profile of FWHM `thickness` (default = spacing),
    one every `spacing` voxels (edge-aligned unless `positions` are given). Returns (slices, positions)."""
    if spacing <= 0:
        raise MedsrError(f"slice spacing {spacing:g} must be > 0")
    n_fine = array.shape[axis]
    positions = edge_aligned_positions(n_fine, spacing) if positions is None else np.asarray(positions, dtype=np.float64)
    matrix = degrade_matrix(n_fine, positions, spacing if thickness is None else thickness, profile)
    return apply_along_axis(matrix, np.asarray(array, dtype=np.float32), axis).astype(np.float32), positions


def interpolate_back(slices: np.ndarray, axis: int, positions: np.ndarray, n_fine: int, order: int = 3) -> np.ndarray:
    """Thick slices at fine-grid `positions` (evenly spaced) interpolated to fine voxels 0..n_fine-1."""
    spacing = positions[1] - positions[0] if len(positions) > 1 else 1.0
    coords = (np.arange(n_fine) - positions[0]) / spacing
    return apply_along_axis(interpolation_matrix(len(positions), coords, order), slices, axis).astype(np.float32)


def make_pair(plane: np.ndarray, spacing: float, thickness: float | None = None, phase: float | None = None,
              profile: str | Callable = "gaussian", order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A training pair from one fine 2-D plane, degraded along its first axis: (input, target), both
    plane-sized; input = thick slices (first at `phase`, default edge-aligned) interpolated back."""
    n_fine = plane.shape[0]
    if phase is None:
        positions = edge_aligned_positions(n_fine, spacing)
    else:
        positions = phase + spacing * np.arange(math.floor((n_fine - 1 - phase) / spacing) + 1)
    slices, positions = simulate_thick_slices(plane, 0, spacing, thickness, profile, positions)
    return interpolate_back(slices, 0, positions, n_fine, order), np.asarray(plane, dtype=np.float32)


def intensity_scale(volume: np.ndarray) -> float:
    """A robust white level: the 99.5th percentile of the non-zero voxels (1 for an empty volume)."""
    values = volume[volume > 0]
    if values.size == 0:
        return 1.0
    return float(np.percentile(values, 99.5)) or 1.0


# ---- training: pairs from NIfTI volumes' planes ------------------------------------------------
def read_volume(path: Path) -> np.ndarray:
    """A 3-D NIfTI as float32 in its own axis order (not medsr.io's slices-first record: the recipe
    draws planes of every orientation), scaled so its white level is 1."""
    import nibabel as nib  # here, as medsr.io does: importing medsr.data must not load nibabel (start-up time)

    try:
        volume = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    except Exception as err:  # noqa: BLE001 - every unreadable file gets the same advice
        raise MedsrError(f"{path}: not a readable NIfTI volume ({type(err).__name__}); check the file") from None
    volume = np.squeeze(volume)
    if volume.ndim != 3:
        raise MedsrError(f"{path}: a {volume.ndim}-D image, not a 3-D volume; pass one 3-D NIfTI")
    return volume / intensity_scale(volume)


def volume_stem(path: Path) -> str:
    """A NIfTI file's name without .nii / .nii.gz: how recipes name volumes (brain-t1-sub-08)."""
    return path.name.removesuffix(".gz").removesuffix(".nii")


def volume_files(data_dirs: list[str], split: str, holdout: dict) -> list[Path]:
    """The NIfTI volumes of a split: `holdout` names the val and test files (stems, e.g. brain-t1-sub-08);
    every other volume is train. Naming subjects keeps a whole volume on one side of the split."""
    files = []
    for root in map(Path, data_dirs):
        if not root.is_dir():
            raise MedsrError(f"{root}: data folder not found; pass a folder of NIfTI volumes")
        files += sorted(root.glob("*.nii")) + sorted(root.glob("*.nii.gz"))
    val, test = set(holdout.get("val", [])), set(holdout.get("test", []))
    unknown = sorted((val | test) - {volume_stem(f) for f in files})
    if unknown:  # a misspelt held-out subject would be trained on
        raise MedsrError(f"{', '.join(data_dirs)}: no volume named {', '.join(unknown)} to hold out for val/test; name them by "
                         f"file name without .nii/.nii.gz (here: {', '.join(sorted(map(volume_stem, files))[:10]) or 'no NIfTI files'})")
    if split == "val":
        chosen = [f for f in files if volume_stem(f) in val]
    elif split == "test":
        chosen = [f for f in files if volume_stem(f) in test]
    else:
        chosen = [f for f in files if volume_stem(f) not in val | test]
    if not chosen:
        raise MedsrError(f"{', '.join(data_dirs)}: no NIfTI volumes for split '{split}' (holdout {holdout}); check data and through_plane")
    return chosen


class ThroughPlaneSampler:
    """Yields (input, target) batches in [-1, 1], (B, 1, size, size): random planes of the volumes
    (any orientation), degraded along their first axis with a random factor in `factors`, a random
    phase, and thickness = factor x U(`thickness`) in a fraction `gap_fraction` of pairs (else = factor).
    The generator is a torch.Generator, so the stream is reproducible and resumable (state_dict)."""

    def __init__(self, volumes: list[np.ndarray], hr_size: int, seed: int = 0, factors=(2.0, 6.0), thickness=(0.5, 1.0),
                 gap_fraction: float = 0.25, min_foreground: float = 0.25, plane_axes=(0, 1, 2)):
        self.volumes, self.hr_size, self.plane_axes = volumes, hr_size, tuple(plane_axes)
        self.factors, self.thickness, self.gap_fraction, self.min_foreground = tuple(factors), tuple(thickness), gap_fraction, min_foreground
        self.generator = torch.Generator().manual_seed(seed)
        # planes worth training on: those with some head in them, per volume and orientation
        self.planes = [[np.flatnonzero((v > 0).mean(axis=tuple(a for a in range(3) if a != axis)) > 0.1) for axis in range(3)]
                       for v in volumes]
        for v, planes in zip(volumes, self.planes):
            for axis in self.plane_axes:
                if len(planes[axis]) == 0:  # no plane with enough foreground: take them all
                    planes[axis] = np.arange(v.shape[axis])
                if min(n for a, n in enumerate(v.shape) if a != axis) < hr_size:
                    raise MedsrError(f"a {v.shape} volume's planes are smaller than hr_size={hr_size}; lower hr_size")

    def __len__(self) -> int:
        return sum(v.shape[0] for v in self.volumes)

    def _uniform(self, low: float, high: float, generator: torch.Generator) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))

    def _draw(self, generator: torch.Generator, factor: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        pick = lambda n: int(torch.randint(0, n, (), generator=generator))
        v = pick(len(self.volumes))
        axis = self.plane_axes[pick(len(self.plane_axes))]
        index = self.planes[v][axis][pick(len(self.planes[v][axis]))]
        plane = self.volumes[v][(slice(None),) * axis + (int(index),)]  # a view (np.take would copy the volume)
        if pick(2):
            plane = plane.T  # degrade either in-plane direction
        if pick(2):
            plane = plane[::-1]
        if pick(2):
            plane = plane[:, ::-1]
        factor = self._uniform(*self.factors, generator) if factor is None else factor
        thickness = factor * (self._uniform(*self.thickness, generator) if self._uniform(0, 1, generator) < self.gap_fraction else 1.0)
        inp, target = make_pair(np.ascontiguousarray(plane), factor, thickness, phase=self._uniform(0, factor, generator))
        p = self.hr_size
        for _ in range(10):  # prefer crops that are mostly head, not background
            top, left = pick(plane.shape[0] - p + 1), pick(plane.shape[1] - p + 1)
            if (target[top:top + p, left:left + p] > 0).mean() >= self.min_foreground:
                break
        return inp[top:top + p, left:left + p], target[top:top + p, left:left + p]

    def _batch(self, count: int, generator: torch.Generator, factors=None) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self._draw(generator, None if factors is None else factors[i % len(factors)]) for i in range(count)]
        inp = torch.from_numpy(np.stack([a for a, _ in pairs]))[:, None]
        target = torch.from_numpy(np.stack([b for _, b in pairs]))[:, None]
        return to_signed(inp), to_signed(target)

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._batch(batch_size, self.generator)

    def fixed_pairs(self, max_images: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic validation pairs: factors 2, 2.5, 3, 4, 5, 6 in turn, planes from a fixed seed."""
        return self._batch(max_images or 48, torch.Generator().manual_seed(12345), factors=(2.0, 2.5, 3.0, 4.0, 5.0, 6.0))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def check_through_plane_options(options: dict) -> None:
    """A MedsrError naming the known keys if a recipe's `through_plane` has another."""
    known = {"val", "test", "factors", "thickness", "gap_fraction", "min_foreground"}
    if set(options) - known:
        raise MedsrError(f"unknown through_plane option(s) {sorted(set(options) - known)}; known: {', '.join(sorted(known))}")


def build_through_plane_sampler(data_dirs: list[str], split: str, hr_size: int, seed: int = 0, limit: int | None = None,
                                options: dict | None = None) -> ThroughPlaneSampler:
    """Read the split's NIfTI volumes once and wrap them in a ThroughPlaneSampler. `options`: the recipe's
    through_plane dict: {val: [stems], test: [stems], factors: [lo, hi], thickness: [lo, hi], gap_fraction}."""
    options = dict(options or {})
    holdout = {"val": options.pop("val", []), "test": options.pop("test", [])}
    check_through_plane_options(options)
    files = volume_files(data_dirs, split, holdout)[:limit]
    return ThroughPlaneSampler([read_volume(f) for f in files], hr_size, seed=seed, **options)
