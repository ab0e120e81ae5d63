"""Datasets: scan folders, split them deterministically, decode once, sample LR/HR pairs.

The split of a file is decided by a hash of `<parent folder>/<file name>` (its path relative to
its class folder), so it does not change when files are added, when the data is moved, or when
a parent folder (`../shared/data` or `../shared/data/brain-mri`) is given as the root: a test
image stays a test image whatever root a command is given.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medsr.data import augment as aug_lib
from medsr.data import degrade, realistic, slice_profile
from medsr.errors import MedsrError
from medsr.io import is_supported, read_image, read_mnist, to_uint
from medsr.io.types import as_unit
from medsr.models.value_range import to_signed, to_unit

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DEGRADATIONS = ("bicubic", "realesrgan")


@dataclass(frozen=True)
class Item:
    path: Path
    key: str  # "<parent>/<name>": what the split hash is taken of
    label: str  # class folder relative to the root ("" for files directly in the root)


def scan(roots: str | Path | list) -> list[Item]:
    """All supported image files below one or more folders (recursive), sorted by path."""
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    items = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise MedsrError(f"{root}: data folder not found; pass an existing folder (see README, 'Data layout')")
        for path in sorted(p for p in root.rglob("*") if p.is_file() and is_supported(p)):
            parent = path.parent.relative_to(root).as_posix()
            items.append(Item(path, f"{path.parent.name}/{path.name}", "" if parent == "." else parent))
    if not items:
        raise MedsrError(f"{', '.join(map(str, roots))}: no image files found; supported: PNG, JPEG, TIFF, DICOM, NIfTI")
    return items


def split_of(key: str, val_fraction: float = 0.1, test_fraction: float = 0.1) -> str:
    """Deterministic split from a hash of the key: the same file always lands in the same split."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def select(items: list[Item], split: str | None, val_fraction: float = 0.1, test_fraction: float = 0.1) -> list[Item]:
    if split in (None, "all"):
        return items
    if split not in SPLITS:
        raise MedsrError(f"unknown split '{split}'; use train, val, test or all")
    return [it for it in items if split_of(it.key, val_fraction, test_fraction) == split]


def load_arrays(items: list[Item], limit: int | None = None) -> tuple[list[np.ndarray], list[Item]]:
    """Decode each file once into a compact integer array (uint8 or uint16, 2-D; every frame or
    slice of a 3-D file is one image). Unreadable files are logged and skipped."""
    arrays, kept = [], []
    for item in items:
        if limit is not None and len(arrays) >= limit:
            break
        try:
            image = read_image(item.path)
        except MedsrError as err:
            log.warning("skipped: %s", err)
            continue
        bits = 8 if image.meta.bit_depth <= 8 else 16
        frames = image.pixels if image.pixels.ndim == 3 else image.pixels[None]
        for frame in frames:
            arrays.append(to_uint(frame, bits))
            kept.append(item)
    if not arrays:
        raise MedsrError("no readable images in the selected data; check the folders and --split")
    return arrays, kept


class PairSampler:
    """Yields (lr, hr) batches in [-1, 1], shaped (B, 1, h, w), from images decoded once.

    protocol:
      - "paper": the seed paper's degradation, precomputed once: centre square crop, HR resized
        to hr_size (150), LR = HR / scale (50). Batches are drawn without replacement per epoch.
      - "patch": random HR crops of hr_size from the full-resolution images (kept in memory as
        uint8/uint16), LR by antialiased bicubic downscale, random flips.
      - "mnist": 28x28 digits from an IDX file, LR = HR / scale.
    degradation "realesrgan" replaces each batch's LR with Real-ESRGAN's second-order degradation
    of its HR (medsr.data.realistic); `augment` adds flips, quarter turns and CutBlur (whose
    LR input is then the folded HR-sized image, see medsr.data.augment).
    The sampler's own torch.Generator makes the stream reproducible and resumable (state_dict).
    """

    def __init__(self, arrays: list[np.ndarray], protocol: str, scale: int, hr_size: int, seed: int = 0, flips: bool = True,
                 augment: aug_lib.Augment | None = None, degradation: str = "bicubic"):
        if protocol not in ("paper", "patch", "mnist"):
            raise MedsrError(f"unknown protocol '{protocol}'; use paper, patch or mnist")
        if degradation not in DEGRADATIONS:
            raise MedsrError(f"unknown degradation '{degradation}'; use {' or '.join(DEGRADATIONS)}")
        self.augment, self.degradation = augment or aug_lib.Augment(), degradation
        if hr_size % scale:
            raise MedsrError(f"hr_size {hr_size} is not divisible by scale {scale}; choose a multiple of the scale")
        self.protocol, self.scale, self.hr_size, self.flips = protocol, scale, hr_size, flips
        self.generator = torch.Generator().manual_seed(seed)
        self.perm, self.pos = torch.empty(0, dtype=torch.long), 0
        if protocol == "patch":
            small = [a.shape for a in arrays if min(a.shape) < hr_size]
            if len(small) == len(arrays):
                raise MedsrError(f"every image is smaller than hr_size={hr_size}; lower hr_size")
            self.arrays = [a for a in arrays if min(a.shape) >= hr_size]
            self.hr = self.lr = None
        else:
            lr, hr = zip(*(degrade.paper_pair(as_unit(a)[0], hr_size, scale) for a in arrays))
            self.lr, self.hr = to_signed(torch.cat(lr)), to_signed(torch.cat(hr))
            self.arrays = None

    def __len__(self) -> int:
        return len(self.arrays) if self.arrays is not None else len(self.hr)

    def _next_indices(self, batch_size: int) -> torch.Tensor:
        out = []
        while len(out) < batch_size:
            if self.pos >= len(self.perm):
                self.perm, self.pos = torch.randperm(len(self), generator=self.generator), 0
            take = min(batch_size - len(out), len(self.perm) - self.pos)
            out.extend(self.perm[self.pos : self.pos + take].tolist())
            self.pos += take
        return torch.tensor(out)

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        lr, hr = self._pairs(self._next_indices(batch_size))
        if self.degradation == "realesrgan":
            lr = to_signed(realistic.degrade(to_unit(hr), self.scale, self.generator))
        if self.augment.hflip or self.augment.vflip or self.augment.rot90:
            lr, hr = aug_lib.geometric(lr, hr, self.augment, self.generator)
        if self.augment.cutblur:
            mixed = aug_lib.cutblur(lr, hr, self.scale, self.augment.cutblur, self.augment.cutblur_alpha, self.generator)
            lr = aug_lib.fold(mixed, self.scale)
        return lr, hr

    def _pairs(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.arrays is None:
            return self.lr[idx], self.hr[idx]
        p = self.hr_size
        patches = []
        for i in idx.tolist():
            array = self.arrays[i]
            top = int(torch.randint(0, array.shape[0] - p + 1, (1,), generator=self.generator))
            left = int(torch.randint(0, array.shape[1] - p + 1, (1,), generator=self.generator))
            patch = torch.from_numpy(as_unit(array[top : top + p, left : left + p])[0])
            if self.flips:
                flip_h, flip_v = torch.rand(2, generator=self.generator).tolist()
                patch = patch.flip(1) if flip_h < 0.5 else patch
                patch = patch.flip(0) if flip_v < 0.5 else patch
            patches.append(patch)
        hr = torch.stack(patches)[:, None]
        lr = degrade.downscale(hr, self.scale).clamp(0, 1)
        return to_signed(lr), to_signed(hr)

    def fixed_pairs(self, max_images: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic (lr, hr) pairs for validation: the precomputed pairs, or for "patch" the
        central hr_size crop of each image."""
        if self.arrays is None:
            return self.lr[:max_images], self.hr[:max_images]
        crops = [torch.from_numpy(as_unit(degrade.center_crop(a, self.hr_size, self.hr_size))[0]) for a in self.arrays[:max_images]]
        hr = torch.stack(crops)[:, None]
        return to_signed(degrade.downscale(hr, self.scale).clamp(0, 1)), to_signed(hr)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.perm, self.pos = state["perm"], state["pos"]


def mnist_arrays(folder: str | Path, split: str | None, val_fraction: float = 0.1, test_fraction: float = 0.1) -> list[np.ndarray]:
    """MNIST digits from an IDX file in `folder`, split by a hash of the digit's index."""
    folder = Path(folder)
    files = sorted(folder.glob("*images*idx3*")) if folder.is_dir() else [folder]
    if not files:
        raise MedsrError(f"{folder}: no MNIST '*images-idx3*' file found; point data at the folder holding it")
    images, _ = read_mnist(files[0])
    return [img for i, img in enumerate(images) if split in (None, "all") or split_of(f"mnist/{i}", val_fraction, test_fraction) == split]


def build_sampler(data_dirs: list[str], split: str, protocol: str, scale: int, hr_size: int, seed: int = 0,
                  limit: int | None = None, val_fraction: float = 0.1, test_fraction: float = 0.1,
                  augment: aug_lib.Augment | None = None, degradation: str = "bicubic", through_plane: dict | None = None) -> PairSampler:
    """Scan, split, decode once, and wrap in a PairSampler: the whole data path in one call.
    protocol "through-plane": planes of NIfTI volumes degraded by thick slices (medsr.data.slice_profile)."""
    if protocol == "through-plane":
        return slice_profile.build_through_plane_sampler(data_dirs, split, hr_size, seed=seed, limit=limit, options=through_plane)
    if protocol == "mnist":
        arrays = mnist_arrays(data_dirs[0], split, val_fraction, test_fraction)[:limit]
    else:
        arrays, _ = load_arrays(select(scan(data_dirs), split, val_fraction, test_fraction), limit)
    return PairSampler(arrays, protocol, scale, hr_size, seed=seed, augment=augment, degradation=degradation)
