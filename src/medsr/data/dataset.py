"""Datasets: scan folders, split them deterministically, decode once, sample LR/HR pairs.

The split of a file is decided by a hash of `<parent folder>/<file name>` (its path relative to
its class folder), so it does not change when files are added, when the data is moved, or when
a parent folder (`../shared/data` or `../shared/data/brain-mri`) is given as the root: a test
image stays a test image whatever root a command is given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medsr.data import augment as aug_lib
from medsr.data import degrade, realistic, slice_profile
from medsr.errors import MedsrError
from medsr.files import LEDGER_NAME, OUTPUT_MARKER, marked_at
from medsr.io import is_supported, read_image, read_mnist, to_uint
from medsr.io.types import as_unit
from medsr.models.value_range import to_signed, to_unit

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DEGRADATIONS = ("bicubic", "realesrgan", "light")


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
        if root.is_file():
            raise MedsrError(f"{root}: a file, where a folder of images is wanted; pass the folder that holds it (see README, 'Data layout')")
        if not root.is_dir():
            raise MedsrError(f"{root}: data folder not found; pass an existing folder (see README, 'Data layout')")
        supported = {p: is_supported(p) for p in _files_below(root)}
        for path in sorted(p for p, ok in supported.items() if ok):
            parent = path.parent.relative_to(root).as_posix()
            items.append(Item(path, f"{path.parent.name}/{path.name}", "" if parent == "." else parent))
        # Named as PACS name DICOM files (IM0001, 1.2.840...5) yet without the DICM preamble that tells one: said, not dropped silently
        unnamed = sorted(p for p, ok in supported.items() if not ok and (not p.suffix or p.suffix[1:].isdigit()))
        if unnamed:
            more = f" and {len(unnamed) - 1} more file(s)" if len(unnamed) > 1 else ""
            log.warning("note: %s%s in %s: no image extension and no DICOM preamble, left out; a DICOM file "
                        "without its 128-byte preamble needs a .dcm name", unnamed[0], more, root)
    if not items:
        raise MedsrError(f"{', '.join(map(str, roots))}: no image files found; supported: PNG, JPEG, TIFF, DICOM, NIfTI")
    return items


def _files_below(root: Path) -> list[Path]:
    """Every file below `root`, except medsr's own outputs: outputs are never read back as inputs. In
    a folder medsr writes into (it holds OUTPUT_MARKER) and below, only the files already there
    before medsr first wrote into it (older than the marker) are the user's and read; a folder with an
    upscale run's ledger but no marker (older runs) is left out whole. Those, a folder that cannot be
    read and a link to a folder (not followed: a link can loop) are said so in a warning, not skipped in silence."""
    def unreadable(err: OSError) -> None:
        log.warning("note: %s: cannot read this folder (%s); its files are left out", err.filename, err.strerror)

    files = []
    since = {str(root): math.inf}  # folder -> when medsr first wrote into it or a folder above it
    for folder, subfolders, names in os.walk(root, onerror=unreadable):
        medsr_since = since.get(os.path.dirname(folder), math.inf) if folder != str(root) else math.inf
        if folder != str(root) and OUTPUT_MARKER in names:
            medsr_since = min(medsr_since, marked_at(Path(folder)))
            log.warning("note: %s: medsr's outputs there are left out (files there before medsr first wrote into it are read); "
                        "pass that folder itself to use them", folder)
        elif folder != str(root) and LEDGER_NAME in names:
            log.warning("note: %s: left out, it holds medsr's outputs; pass that folder itself to use them", folder)
            subfolders.clear()
            continue
        since[folder] = medsr_since
        for name in subfolders:
            if os.path.islink(os.path.join(folder, name)):
                log.warning("note: %s: a link to a folder, not followed; pass the folder it points to if its files are wanted",
                            os.path.join(folder, name))
        files += [Path(folder, name) for name in names if _users_file(os.path.join(folder, name), medsr_since)]
    return files


def _users_file(path: str, medsr_since: float) -> bool:
    """A file at `path` older than `medsr_since`: a regular file, a link to one, or a broken link (kept,
    so that reading it fails in one line naming it, rather than it vanishing from the run)."""
    try:
        found = os.stat(path)
    except OSError:
        try:
            found = os.lstat(path)
        except OSError:
            return False
        return stat.S_ISLNK(found.st_mode) and found.st_mtime < medsr_since
    return stat.S_ISREG(found.st_mode) and found.st_mtime < medsr_since


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


def spread(items: list, count: int | None) -> list:
    """`count` items evenly spaced through the list (all of them when count is None or not smaller):
    of a sorted list, every class folder and data set is in, where the first `count` would all
    come from the first."""
    if count is None or count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


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
    of its HR (medsr.data.realistic); "light" adds mild noise and JPEG to the bicubic LR, as in
    exported scans (LightDegradation); `augment` cuts images to a zero background (before the LR
    degradation) and adds flips, quarter turns and CutBlur (whose LR input is then the folded
    HR-sized image), see medsr.data.augment.
    The sampler's own torch.Generator makes the stream reproducible and resumable (state_dict).
    """

    def __init__(self, arrays: list[np.ndarray], protocol: str, scale: int, hr_size: int, seed: int = 0, flips: bool = True,
                 augment: aug_lib.Augment | None = None, degradation: str = "bicubic", light: LightDegradation | None = None):
        if protocol not in ("paper", "patch", "mnist"):
            raise MedsrError(f"unknown protocol '{protocol}'; use paper, patch or mnist")
        if degradation not in DEGRADATIONS:
            raise MedsrError(f"unknown degradation '{degradation}'; use {' or '.join(DEGRADATIONS)}")
        self.augment, self.degradation = augment or aug_lib.Augment(), degradation
        self.light = light or LightDegradation()
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
        if self.augment.zero_background:
            lr, hr = aug_lib.zero_background(lr, hr, self.scale, self.augment.zero_background, self.generator)
        if self.degradation == "realesrgan":
            lr = to_signed(realistic.degrade(to_unit(hr), self.scale, self.generator))
        elif self.degradation == "light":
            lr = to_signed(self.light.apply(to_unit(lr), self.generator))
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
        if len(state["perm"]) not in (0, len(self)):  # (0: saved before the first batch)
            raise MedsrError(f"the training images changed since this checkpoint ({len(state['perm'])} then, {len(self)} now); "
                             "put them back as they were, or start a new run (--set name=...)")
        self.generator.set_state(state["generator"])
        self.perm, self.pos = state["perm"], state["pos"]


@dataclass
class LightDegradation:
    """What exported scans carry on top of a clean downscale: with probability `noise`, Gaussian noise
    of sigma U(`noise_sigma`) 8-bit levels; then with probability `jpeg`, an 8-bit JPEG round trip
    at an integer quality in `jpeg_quality`. Draws come from the sampler's generator (resumable)."""

    jpeg: float = 0.5
    jpeg_quality: tuple = (30, 95)
    noise: float = 0.3
    noise_sigma: tuple = (0.5, 3.0)

    def apply(self, lr01: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, 1, h, w) [0, 1] -> the same, each image degraded on its own."""
        out = []
        for image in lr01.split(1):
            if float(torch.rand((), generator=generator)) < self.noise:
                low, high = self.noise_sigma
                sigma = (low + (high - low) * float(torch.rand((), generator=generator))) / 255.0
                image = (image + sigma * torch.randn(image.shape, generator=generator)).clamp(0, 1)
            if float(torch.rand((), generator=generator)) < self.jpeg:
                image = realistic.jpeg(image, generator, self.jpeg_quality)
            out.append(image)
        return torch.cat(out)


MIX_SOURCES = ("paper", "native", "volumes")


class MixedSampler:
    """protocol "mixed": each batch mixes the sources in the shares the recipe's `mix` gives.

    paper:   the paper protocol's pairs (HR 150, clean), so its figures do not regress;
    native:  random hr_size crops of the images at their own resolution, LR with LightDegradation;
    volumes: random hr_size crops of the slices of NIfTI volumes (often skull-stripped, a zero
             background), LR with LightDegradation; whole volumes are held out by name
             (`volume_val`, `volume_test`), as in the through-plane recipe.
    """

    def __init__(self, sources: dict[str, PairSampler], shares: dict[str, float]):
        self.sources, self.shares = sources, shares

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources.values())

    def _counts(self, total: int) -> dict[str, int]:
        names = list(self.sources)
        weight = sum(self.shares[n] for n in names)
        counts = {n: int(round(total * self.shares[n] / weight)) for n in names[:-1]}
        counts[names[-1]] = total - sum(counts.values())
        return counts

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.sources[n].next_batch(c) for n, c in self._counts(batch_size).items() if c > 0]
        return torch.cat([lr for lr, _ in pairs]), torch.cat([hr for _, hr in pairs])

    def fixed_pairs(self, max_images: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each source's validation pairs, evenly spread over its images, in the training shares."""
        lrs, hrs = [], []
        for name, count in self._counts(max_images or 64).items():
            lr, hr = self.sources[name].fixed_pairs(None)
            pick = torch.linspace(0, len(lr) - 1, min(count, len(lr))).round().long()
            lrs.append(lr[pick])
            hrs.append(hr[pick])
        return torch.cat(lrs), torch.cat(hrs)

    def state_dict(self) -> dict:
        return {name: source.state_dict() for name, source in self.sources.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, source in self.sources.items():
            source.load_state_dict(state[name])


def volume_slices(files: list[Path], min_foreground: float = 0.15) -> list[np.ndarray]:
    """The slices of NIfTI volumes as medsr reads them (slices first), 16-bit, those with at least
    `min_foreground` of their pixels above zero."""
    slices = []
    for path in files:
        for frame in read_image(path).pixels:
            if (frame > 0).mean() >= min_foreground:
                slices.append(to_uint(frame, 16))
    return slices


def _split_arrays(data_dirs: list[str], split: str, limit: int | None, val_fraction: float = 0.1,
                  test_fraction: float = 0.1) -> list[np.ndarray]:
    """The split's images decoded (load_arrays), `limit` of them spread evenly over the sorted files
    so that every class is in; a split with no file is a MedsrError saying why that happens."""
    items = scan(data_dirs)
    chosen = select(items, split, val_fraction, test_fraction)
    if not chosen:
        raise MedsrError(f"{', '.join(map(str, data_dirs))}: none of its {len(items)} image file(s) falls in the '{split}' split "
                         f"(each file's split comes from a hash of its name: val {val_fraction:g}, test {test_fraction:g}); "
                         f"add images, a few dozen give every split some")
    return load_arrays(spread(chosen, limit), limit)[0]


def mix_options(mix: dict) -> tuple[dict, str | None, dict, LightDegradation]:
    """A recipe's `mix` as (shares by source, volume_data, {val, test: held-out volume stems}, the
    LightDegradation); an unknown key is a MedsrError naming the known ones."""
    options = dict(mix)
    shares = {name: options.pop(name, 0) for name in MIX_SOURCES}
    for name, share in shares.items():
        if type(share) not in (int, float) or not 0 <= share < math.inf:
            raise MedsrError(f"mix.{name} must be a share of 0 or more, not {share!r}; e.g. mix: {{paper: 0.5, native: 0.5}}")
    volume_data = options.pop("volume_data", None)
    holdout = {"val": options.pop("volume_val", []), "test": options.pop("volume_test", [])}
    light_keys = {f.name for f in dataclasses.fields(LightDegradation)}
    if set(options) - light_keys:
        raise MedsrError(f"unknown mix option(s) {sorted(set(options) - light_keys)}; known: {', '.join(MIX_SOURCES)}, "
                         f"volume_data, volume_val, volume_test, {', '.join(sorted(light_keys))}")
    return shares, volume_data, holdout, LightDegradation(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})


def build_mixed_sampler(data_dirs: list[str], split: str, scale: int, hr_size: int, seed: int, limit: int | None,
                        split_fractions: dict, mix: dict, augment: aug_lib.Augment | None = None) -> MixedSampler:
    """The MixedSampler of a recipe's `mix`; `augment` applies to every source (the trainer passes it for training only).
    `limit` caps the images of each source, the volumes read and their slices too, spread evenly."""
    shares, volume_data, holdout, light = mix_options(mix)
    degradation = "light" if split == "train" else "bicubic"  # validation stays the clean protocol
    sources = {}
    if shares["paper"] > 0 or shares["native"] > 0:
        arrays = _split_arrays(data_dirs, split, limit, **split_fractions)
        if shares["paper"] > 0:
            sources["paper"] = PairSampler(arrays, "paper", scale, hr_size, seed=seed, augment=augment)
        if shares["native"] > 0:
            sources["native"] = PairSampler(arrays, "patch", scale, hr_size, seed=seed + 1, augment=augment, degradation=degradation,
                                            light=light)
    if shares["volumes"] > 0:
        if not volume_data:
            raise MedsrError("mix.volumes needs mix.volume_data, a folder of NIfTI volumes (e.g. ${MEDSR_DATA}/nifti)")
        files = spread(slice_profile.volume_files([volume_data], split, holdout), limit)
        sources["volumes"] = PairSampler(spread(volume_slices(files), limit), "patch", scale, hr_size, seed=seed + 2, augment=augment,
                                         degradation=degradation, light=light)
    if not sources:
        raise MedsrError(f"mix {mix}: give at least one of {', '.join(MIX_SOURCES)} a share above 0")
    return MixedSampler(sources, shares)


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
                  augment: aug_lib.Augment | None = None, degradation: str = "bicubic", through_plane: dict | None = None,
                  mix: dict | None = None) -> PairSampler:
    """Scan, split, decode once, and wrap in a PairSampler: the whole data path in one call.
    protocol "through-plane": planes of NIfTI volumes degraded by thick slices (medsr.data.slice_profile);
    protocol "mixed": paper pairs, native crops and volume slices in one batch (MixedSampler)."""
    if protocol == "mixed":
        fractions = dict(val_fraction=val_fraction, test_fraction=test_fraction)
        return build_mixed_sampler(data_dirs, split, scale, hr_size, seed, limit, fractions, mix or {}, augment)
    if protocol == "through-plane":
        return slice_profile.build_through_plane_sampler(data_dirs, split, hr_size, seed=seed, limit=limit, options=through_plane)
    if protocol == "mnist":
        arrays = mnist_arrays(data_dirs[0], split, val_fraction, test_fraction)[:limit]
    else:
        arrays = _split_arrays(data_dirs, split, limit, val_fraction, test_fraction)
    return PairSampler(arrays, protocol, scale, hr_size, seed=seed, augment=augment, degradation=degradation)
