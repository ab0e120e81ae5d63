"""Evaluation: PSNR / SSIM / MS-SSIM of models against classical baselines on a data split.

Protocols (medsr.data.degrade.make_pair; the LR is always the HR's antialiased bicubic downscale):
- paper:  HR = the centre square crop resized to 150x150, LR 50x50 (the seed paper's protocol;
          at x4 the HR is 148x148, the nearest size the scale divides);
- native: HR = the image at its own resolution, centre-cropped to at most 1500 px per side
          (and to a multiple of the scale), LR = HR / scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from medsr import metrics
from medsr.data import degrade, load_arrays, scan, select
from medsr.errors import MedsrError
from medsr.evaluation import report
from medsr.inference.upscaler import Upscaler
from medsr.io.types import as_unit

BASELINES = ("nearest", "bicubic", "lanczos")
METRICS = ("psnr", "ssim", "ms_ssim", "hf_ratio")


@dataclass
class Method:
    name: str
    upscaler: Upscaler | None = None  # None: a classical interpolation named by `name`

    def run(self, lr01: np.ndarray, scale: int) -> np.ndarray:
        if self.upscaler is None:
            out = degrade.upscale_baseline(torch.from_numpy(lr01)[None, None], scale, self.name)
            return out[0, 0].clamp(0, 1).numpy()
        return self.upscaler.upscale_plane(lr01)


def evaluate(data_dirs: list[str], methods: list[Method], scale: int, protocol: str = "paper", split: str = "test",
             limit: int | None = None) -> list[dict]:
    """Per-image rows {file, label, method, psnr, ssim, ms_ssim, hf_ratio}."""
    items = select(scan(data_dirs), split)
    if not items:
        raise MedsrError(f"{', '.join(data_dirs)}: no images in the '{split}' split; use --split all or add images")
    arrays, kept = load_arrays(items, limit)
    rows = []
    for array, item in tqdm(list(zip(arrays, kept)), desc="evaluate", unit="img", dynamic_ncols=True):
        lr, hr = degrade.make_pair(as_unit(array)[0], protocol, scale)
        hr_t = torch.from_numpy(hr)[None, None]
        for method in methods:
            sr_t = torch.from_numpy(method.run(lr, scale))[None, None]
            scores = {
                "psnr": metrics.psnr(sr_t, hr_t, scale).item(),
                "ssim": metrics.ssim(sr_t, hr_t, scale).item(),
                "ms_ssim": metrics.ms_ssim(sr_t, hr_t, scale).item(),
                "hf_ratio": metrics.hf_energy_ratio(sr_t, hr_t, scale, scale).item(),
            }
            rows.append({"file": str(item.path), "label": item.label, "method": method.name, **scores})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean of each metric per method, in the order methods first appear."""
    order = list(dict.fromkeys(r["method"] for r in rows))
    out = []
    for name in order:
        mine = [r for r in rows if r["method"] == name]
        summary = {"method": name, "images": len(mine)}
        for key in METRICS:
            values = [r[key] for r in mine if not math.isnan(r[key])]
            summary[key] = float(np.mean(values)) if values else float("nan")
        out.append(summary)
    return out


def markdown_table(summary: list[dict], reference: str = "bicubic") -> str:
    ref = next((s for s in summary if s["method"] == reference), None)
    header = ["method", "images", "PSNR (dB)", "vs bicubic (dB)", "SSIM", "MS-SSIM", "fine detail (HF ratio, 1 = HR)"]
    rows = [[s["method"], str(s["images"]), f"{s['psnr']:.2f}", f"{s['psnr'] - ref['psnr']:+.2f}" if ref else "",
             f"{s['ssim']:.4f}", f"{s['ms_ssim']:.4f}", f"{s['hf_ratio']:.3f}"] for s in summary]
    return report.markdown_table(header, rows)
