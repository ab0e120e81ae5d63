"""Evaluation: PSNR / SSIM / MS-SSIM of models against classical baselines on a data split.

Protocols (the LR is always made from the HR by antialiased bicubic downscale):
- paper:  HR = the centre square crop resized to 150x150, LR 50x50 (the seed paper's protocol;
          at x4 the HR is 148x148, the nearest size the scale divides);
- native: HR = the image at its own resolution, centre-cropped to at most 1500 px per side
          (and to a multiple of the scale), LR = HR / scale.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from medsr import metrics
from medsr.data import degrade, load_arrays, scan, select
from medsr.data.dataset import as_unit_float
from medsr.errors import MedsrError
from medsr.files import atomic_write
from medsr.inference.upscaler import Upscaler

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


def make_pair(array01: np.ndarray, protocol: str, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(lr, hr) float32 [0, 1] arrays for one image under an evaluation protocol."""
    if protocol == "paper":
        # HR 150 px at x3 (the paper); at other scales the nearest side the scale divides (x2: 150, x4: 148)
        lr, hr = degrade.paper_pair(array01, degrade.PAPER_HR_SIZE // scale * scale, scale)
    elif protocol == "native":
        hr = torch.from_numpy(degrade.native_hr(array01, scale).copy())[None, None]
        lr = degrade.downscale(hr, scale).clamp(0, 1)
    else:
        raise MedsrError(f"unknown protocol '{protocol}'; use paper or native")
    return lr[0, 0].numpy(), hr[0, 0].numpy()


def evaluate(data_dirs: list[str], methods: list[Method], scale: int, protocol: str = "paper", split: str = "test",
             limit: int | None = None) -> list[dict]:
    """Per-image rows {file, label, method, psnr, ssim, ms_ssim, hf_ratio}."""
    items = select(scan(data_dirs), split)
    if not items:
        raise MedsrError(f"{', '.join(data_dirs)}: no images in the '{split}' split; use --split all or add images")
    arrays, kept = load_arrays(items, limit)
    rows = []
    for array, item in tqdm(list(zip(arrays, kept)), desc="evaluate", unit="img", dynamic_ncols=True):
        lr, hr = make_pair(as_unit_float(array), protocol, scale)
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
    lines = ["| method | images | PSNR (dB) | vs bicubic (dB) | SSIM | MS-SSIM | fine detail (HF ratio, 1 = HR) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        delta = f"{s['psnr'] - ref['psnr']:+.2f}" if ref else ""
        lines.append(f"| {s['method']} | {s['images']} | {s['psnr']:.2f} | {delta} | {s['ssim']:.4f} | {s['ms_ssim']:.4f} | {s['hf_ratio']:.3f} |")
    return "\n".join(lines)


def write_reports(rows: list[dict], summary: list[dict], out_dir: Path, context: dict,
                  names: tuple[str, str, str] = ("per_image.csv", "summary.csv", "results.json")) -> list[Path]:
    """per-image CSV, summary CSV, and a JSON with context + summary + rows, each written atomically;
    `names` lets another report (medsr.evaluation.diagnostic) sit beside these in the same folder."""
    paths = [Path(out_dir) / name for name in names]
    for path, table in zip(paths[:2], (rows, summary)):
        def write_csv(tmp: Path, table=table) -> None:
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(table[0]))
                writer.writeheader()
                writer.writerows(table)
        atomic_write(path, write_csv)
    text = json.dumps({**context, "summary": summary, "per_image": rows}, indent=1)
    atomic_write(paths[2], lambda tmp: tmp.write_text(text))
    return paths
