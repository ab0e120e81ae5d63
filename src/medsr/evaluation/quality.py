"""Evaluation: PSNR / SSIM / MS-SSIM of models against classical baselines on a data split.

Protocols (medsr.data.degrade.make_pair; the LR is always the HR's antialiased bicubic downscale):
- paper:  HR = the centre square crop resized to 150x150, LR 50x50 (the seed paper's protocol;
          at x4 the HR is 148x148, the nearest size the scale divides);
- native: HR = the image at its own resolution, centre-cropped to at most 1500 px per side
          (and to a multiple of the scale), LR = HR / scale.

Images that cannot be scored are left out of the rows and the means, with one logged note saying
how many and why: a blank HR (one constant value after the border crop, e.g. an all-black image:
PSNR would be infinite or undefined, the fine-detail ratio a division by nothing), and an image
that, cut to a multiple of the scale, is narrower than SSIM's window after the border crop
(too_small; 1x1 images too). The means skip values that are not finite (NaN where a metric does
not apply; an infinite PSNR of an exact copy). When no image can be scored, a MedsrError says so.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from medsr import metrics
from medsr.data import degrade, load_arrays, scan, select, slice_profile, spread
from medsr.data.dataset import volume_slices
from medsr.errors import MedsrError
from medsr.evaluation import report
from medsr.inference.upscaler import Upscaler
from medsr.io import formats
from medsr.io.types import as_unit

log = logging.getLogger(__name__)

BASELINES = ("nearest", "bicubic", "lanczos")
METRICS = ("psnr", "ssim", "ms_ssim", "hf_ratio", "overshoot", "block_grid", "input_block_grid")
MIN_SCORED_SIDE = metrics.SSIM_WINDOW  # the smallest HR side, after the border crop, that is scored
BLANK_SPAN = 1 / 65535  # an HR whose values span less (one 16-bit grey level) is blank
GRID_CROP = 256  # the block-grid measure upscales this centre crop of each JPEG file, cut on its 8-pixel grid


@dataclass
class Method:
    name: str
    upscaler: Upscaler | None = None  # None: a classical interpolation named by `name`
    held_out: dict = field(default_factory=dict)  # volumes its recipe kept out of training by name: stem -> val | test

    def run(self, lr01: np.ndarray, scale: int) -> np.ndarray:
        if self.upscaler is None:
            out = degrade.upscale_baseline(torch.from_numpy(lr01)[None, None], scale, self.name)
            return out[0, 0].clamp(0, 1).numpy()
        return self.upscaler.upscale_plane(lr01)


def held_out_volumes(meta: dict) -> dict[str, str]:
    """Stem -> "val" or "test" for the NIfTI volumes a model's recipe (its file's medsr_recipe) kept
    out of training by name (mix.volume_val / volume_test, through_plane's val / test); the other
    volumes beside them were trained on, whatever the file-name hash of the split would say."""
    recipe = json.loads(meta.get("medsr_recipe") or "{}")
    mix, through = recipe.get("mix") or {}, recipe.get("through_plane") or {}
    named = {stem: "val" for stem in [*mix.get("volume_val", []), *through.get("val", [])]}
    return named | {stem: "test" for stem in [*mix.get("volume_test", []), *through.get("test", [])]}


def held_out_by(methods: list[Method]) -> dict[str, str]:
    """The volumes any of the methods' recipes held out: test where one model tested on it, else val."""
    named = {stem: kind for method in methods for stem, kind in method.held_out.items() if kind == "val"}
    return named | {stem: kind for method in methods for stem, kind in method.held_out.items() if kind == "test"}


def split_items(data_dirs: list[str], split: str, limit: int | None = None, held_out: dict | None = None) -> list:
    """The files `evaluate` scores: the split's images, or `limit` of them spread evenly over the
    sorted list, so every class is in. NIfTI volumes in a folder holding one that `held_out` names
    (held_out_volumes) take their split from it: "train" unless named, as the models trained."""
    check_limit(limit)
    held_out = held_out or {}
    items = scan(data_dirs)
    folders = {item.path.parent for item in items if _volume_stem(item.path) in held_out}
    by_name = {item.path for item in items if item.path.parent in folders and _volume_stem(item.path) is not None}
    items = select([item for item in items if item.path not in by_name], split) + [
        item for item in items if item.path in by_name and split in ("all", held_out.get(_volume_stem(item.path), "train"))]
    items.sort(key=lambda item: item.path)
    if not items:
        raise MedsrError(f"{', '.join(data_dirs)}: no images in the '{split}' split; use --split all or add images")
    return spread(items, limit)


def image_names(kept: list) -> list[str]:
    """A name for each image load_arrays decoded (its items, one per image): the file, and for a
    file of several slices or frames FILE#k (k from 0), so that each row says which slice it scored."""
    counts, seen, names = Counter(item.path for item in kept), Counter(), []
    for item in kept:
        names.append(str(item.path) if counts[item.path] == 1 else f"{item.path}#{seen[item.path]}")
        seen[item.path] += 1
    return names


def _volume_stem(path: Path) -> str | None:
    """slice_profile.volume_stem of a NIfTI file (how recipes name volumes), else None."""
    return slice_profile.volume_stem(path) if formats.file_extension(path) in (".nii", ".nii.gz") else None


def check_limit(limit: int | None) -> None:
    """A MedsrError unless `limit` (--limit, a number of images) is None or at least 1."""
    if limit is not None and limit < 1:
        raise MedsrError(f"--limit {limit}: the number of images must be at least 1; give --limit 1 or more, "
                         f"or leave it out to use the whole split")


def evaluate(data_dirs: list[str], methods: list[Method], scale: int, protocol: str = "paper", split: str = "test",
             limit: int | None = None) -> list[dict]:
    """Per-image rows {file, label, method, psnr, ssim, ms_ssim, hf_ratio, overshoot, block_grid, input_block_grid}
    for the split's images (`limit`: that many, spread evenly over the sorted list, so every class is in;
    each slice or frame of a 3-D file counts as one).

    overshoot: metrics.edge_overshoot of the output against its LR input. block_grid (JPEG-coded
    files only, formats.jpeg_coded: JPEG files and DICOM stored as lossy JPEG; else NaN): the file
    itself, not a downscale, is what a user upscales, so a centre crop of it on its 8-pixel grid is
    upscaled and metrics.block_grid_ratio compares output (on the 8*scale grid) with input
    (input_block_grid)."""
    arrays, kept = load_arrays(split_items(data_dirs, split, limit, held_out_by(methods)))
    named = [(name, item.label, as_unit(array)[0], formats.jpeg_coded(item.path))
             for name, array, item in zip(image_names(kept), arrays, kept)]
    return evaluate_arrays(spread(named, limit), methods, scale, protocol)  # a volume's slices are images too


def evaluate_arrays(images: list[tuple[str, str, np.ndarray, bool]], methods: list[Method], scale: int,
                    protocol: str = "native") -> list[dict]:
    """evaluate's rows for (name, label, [0, 1] 2-D array, jpeg_coded) tuples, e.g. the slices of a volume."""
    rows = []
    left_out = {"blank": [], "small": []}
    for name, label, image, coded in tqdm(images, desc="evaluate", unit="img", dynamic_ncols=True):
        if too_small(image, scale):
            left_out["small"].append(name)
            continue
        lr, hr = degrade.make_pair(image, protocol, scale)
        if np.ptp(metrics.crop_border(hr, scale)) < BLANK_SPAN:
            left_out["blank"].append(name)
            continue
        hr_t, lr_t = torch.from_numpy(hr)[None, None], torch.from_numpy(lr)[None, None]
        jpeg = grid_crop(image) if coded and min(image.shape) >= 8 else None  # at least one 8x8 block
        input_grid = float("nan") if jpeg is None else metrics.block_grid_ratio(torch.from_numpy(jpeg)[None, None], 8).item()
        for method in methods:
            sr_t = torch.from_numpy(method.run(lr, scale))[None, None]
            scores = {
                "psnr": metrics.psnr(sr_t, hr_t, scale).item(),
                "ssim": metrics.ssim(sr_t, hr_t, scale).item(),
                "ms_ssim": metrics.ms_ssim(sr_t, hr_t, scale).item(),
                "hf_ratio": metrics.hf_energy_ratio(sr_t, hr_t, scale, scale).item(),
                "overshoot": metrics.edge_overshoot(sr_t, lr_t, scale).item(),
                "block_grid": float("nan"),
                "input_block_grid": input_grid,
            }
            if jpeg is not None:
                out = torch.from_numpy(method.run(jpeg, scale))[None, None]
                scores["block_grid"] = metrics.block_grid_ratio(out, 8 * scale).item()
            rows.append({"file": name, "label": label, "method": method.name, **scores})
    names = left_out["blank"] + left_out["small"]
    if names:
        why = []
        if left_out["blank"]:
            why.append(f"{len(left_out['blank'])} blank (one constant value: nothing to score)")
        if left_out["small"]:
            why.append(f"{len(left_out['small'])} too small (narrower than SSIM's {MIN_SCORED_SIDE}-px window once cut to "
                       f"a multiple of {scale} and the {scale}-px border cropped)")
        why = "; ".join(why)
        if not rows:
            raise MedsrError(f"{', '.join(names[:3])}{', ...' if len(names) > 3 else ''}: no image can be scored ({why}); "
                             f"evaluate images with content")
        log.warning("note: %d of %d images left out of the scores: %s; e.g. %s", len(names), len(images), why, names[0])
    return rows


def too_small(image: np.ndarray, scale: int) -> bool:
    """Whether the image, cut to a multiple of the scale (the native protocols' HR), is narrower than
    MIN_SCORED_SIDE after the border crop (1x1 images too); the paper protocol would blow it up
    to an HR without real detail."""
    return min(image.shape) // scale * scale - 2 * scale < MIN_SCORED_SIDE


def volume_slice_images(path: Path, step: int = 1) -> list[tuple[str, str, np.ndarray, bool]]:
    """evaluate_arrays' tuples for every `step`-th slice of a NIfTI volume among those with some head
    in them (medsr.data.dataset.volume_slices), in [0, 1]."""
    slices = volume_slices([path])[::step]
    return [(f"{Path(path).name.split('.')[0]}[{i}]", "T1", s.astype(np.float32) / 65535, False) for i, s in enumerate(slices)]


def grid_crop(image: np.ndarray) -> np.ndarray:
    """The centre GRID_CROP square (or less on a smaller image) cut on the 8-pixel JPEG grid."""
    h, w = image.shape
    side = min(GRID_CROP, h // 8 * 8, w // 8 * 8)
    top, left = (h - side) // 2 // 8 * 8, (w - side) // 2 // 8 * 8
    return np.ascontiguousarray(image[top:top + side, left:left + side])


def summarize(rows: list[dict]) -> list[dict]:
    """Mean of each metric per method, in the order methods first appear; values that are not
    finite are left out of each mean (NaN: the metric does not apply; inf: an exact copy's PSNR),
    and a metric with no finite value is NaN."""
    order = list(dict.fromkeys(r["method"] for r in rows))
    out = []
    for name in order:
        mine = [r for r in rows if r["method"] == name]
        summary = {"method": name, "images": len(mine)}
        for key in METRICS:
            values = [r[key] for r in mine if math.isfinite(r[key])]
            summary[key] = float(np.mean(values)) if values else float("nan")
        out.append(summary)
    return out


def markdown_table(summary: list[dict], reference: str = "bicubic") -> str:
    ref = next((s for s in summary if s["method"] == reference), None)
    header = ["method", "images", "PSNR (dB)", "vs bicubic (dB)", "SSIM", "MS-SSIM", "fine detail (HF ratio, 1 = HR)",
              "edge overshoot (%)", "JPEG block grid (input)"]
    grid = lambda s: "n/a" if math.isnan(s["block_grid"]) else f"{s['block_grid']:.2f} ({s['input_block_grid']:.2f})"
    rows = [[s["method"], str(s["images"]), report.number(s["psnr"], ".2f"), report.number(s["psnr"] - ref["psnr"], "+.2f") if ref else "",
             report.number(s["ssim"], ".4f"), report.number(s["ms_ssim"], ".4f"), report.number(s["hf_ratio"], ".3f"),
             report.number(100 * s["overshoot"], ".3f"), grid(s)]
            for s in summary]
    return report.markdown_table(header, rows)
