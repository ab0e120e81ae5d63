"""Which model is closer to the original on JPEG inputs, by JPEG quality? Measured on the VALIDATION
split; writes docs/results/jpeg-quality.md.

Native-protocol pairs of both data sets (48 images spread over their classes), the LR saved as an
8-bit JPEG at each quality and read back (medsr.data.degrade.jpeg_round_trip), then upscaled by
`default` and by `default-jpeg` (what `medsr upscale` runs on JPEG files), both in bf16 where the
CPU has it. PSNR against the HR image, border 3 px, mean over the images; the block-grid ratio
(medsr.metrics.block_grid_ratio) of the JPEG input on its 8-pixel grid and of each output on the
24-pixel one.

A second table describes the data sets' own JPEG files (validation split): the quality their
luminance quantization table was written with (matched against the IJG tables Pillow and libjpeg
use) and how strongly they show their block grid.

    python benchmarks/jpeg_quality.py [--limit 48] [--qualities 75,85,90,93,95,98]
"""

import argparse

import numpy as np
import torch
from common import DATA, FLOAT, ROOT, machine
from PIL import Image

from medsr import metrics
from medsr.data import degrade, load_arrays, scan, select, spread
from medsr.evaluation import quality as evaluation
from medsr.inference.upscaler import load_upscaler
from medsr.io.types import as_unit

MODELS = ("default", "default-jpeg")
# ITU T.81 Annex K luminance table, which IJG libjpeg (and so Pillow) scales by the quality setting
IJG_LUMINANCE = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                          14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
                          49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])


def written_quality(path) -> str:
    """The IJG quality whose luminance table the file holds ("~Q" for the nearest when none matches exactly)."""
    with Image.open(path) as image:
        table = np.sort(np.asarray(image.quantization[0]))
    errors = []
    for quality in range(1, 101):
        scale = 5000 / quality if quality < 50 else 200 - 2 * quality
        errors.append(np.abs(np.sort(np.clip((IJG_LUMINANCE * scale + 50) // 100, 1, 255)) - table).sum())
    best = int(np.argmin(errors))
    return f"{best + 1}" if errors[best] == 0 else f"~{best + 1}"


def own_files(modality: str) -> list[str]:
    """Table rows for the data set's own validation JPEG files, by the quality they were written with."""
    items = [item for item in select(scan([str(DATA / modality)]), "val") if item.path.suffix.lower() in (".jpg", ".jpeg")]
    arrays, kept = load_arrays(items)
    by_quality: dict[str, list[float]] = {}
    for array, item in zip(arrays, kept):
        crop = evaluation.grid_crop(as_unit(array)[0])
        by_quality.setdefault(written_quality(item.path), []).append(metrics.block_grid_ratio(torch.from_numpy(crop)[None, None], 8).item())
    return [f"| {modality} | {quality} | {len(ratios)} | {np.mean(ratios):.2f} |" for quality, ratios in sorted(by_quality.items())]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=48)
    parser.add_argument("--qualities", default="75,85,90,93,95,98")
    args = parser.parse_args()
    qualities = [int(q) for q in args.qualities.split(",")]
    items = spread(select(scan([str(DATA / "brain-mri"), str(DATA / "chest-xray")]), "val"), args.limit)
    arrays, _ = load_arrays(items)
    pairs = [degrade.make_pair(as_unit(array)[0], "native", 3) for array in arrays]
    upscalers = {name: load_upscaler(name, precision=FLOAT, tile=0)[0] for name in MODELS}
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    lines = ["## JPEG inputs by quality: default or default-jpeg (validation split)", "",
             f"Produced by `python benchmarks/jpeg_quality.py --limit {args.limit} --qualities {args.qualities}` ({machine()}).",
             f"{len(pairs)} validation images of both data sets, native protocol, the LR saved as a JPEG at each quality;",
             f"PSNR over bicubic of the same JPEG input, {FLOAT}; block-grid ratio (about 1: no grid) of the JPEG input and of each output.", "",
             "| JPEG quality | bicubic (dB) | default vs bicubic (dB) | default-jpeg vs bicubic (dB) | default-jpeg − default (dB) "
             "| block grid: input | default | default-jpeg |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for quality in qualities:
        psnr = {name: [] for name in ("bicubic", *MODELS)}
        grid = {name: [] for name in ("input", *MODELS)}
        for lr, hr in pairs:
            lr_jpeg = degrade.jpeg_round_trip(as_tensor(lr), quality)
            psnr["bicubic"].append(metrics.psnr(degrade.upscale_baseline(lr_jpeg, 3).clamp(0, 1), as_tensor(hr), 3).item())
            grid["input"].append(metrics.block_grid_ratio(lr_jpeg, 8).item())
            for name, upscaler in upscalers.items():
                sr = as_tensor(upscaler.upscale_plane(lr_jpeg[0, 0].numpy()))
                psnr[name].append(metrics.psnr(sr, as_tensor(hr), 3).item())
                grid[name].append(metrics.block_grid_ratio(sr, 24).item())
        mean = {name: float(np.mean(values)) for name, values in psnr.items()}
        ratio = {name: float(np.mean(values)) for name, values in grid.items()}
        lines.append(f"| {quality} | {mean['bicubic']:.2f} | {mean['default'] - mean['bicubic']:+.2f} | "
                     f"{mean['default-jpeg'] - mean['bicubic']:+.2f} | {mean['default-jpeg'] - mean['default']:+.2f} | "
                     f"{ratio['input']:.2f} | {ratio['default']:.2f} | {ratio['default-jpeg']:.2f} |")
        print(lines[-1], flush=True)
    lines += ["", "The data sets' own JPEG files (validation split): the quality their luminance table was written with, "
              "and their block-grid ratio (a 256-px crop on the grid, as medsr evaluate measures it).", "",
              "| data set | written with quality | files | block grid |", "|---|---:|---:|---:|"]
    for modality in ("brain-mri", "chest-xray"):
        lines += own_files(modality)
        print("\n".join(lines[-3:]), flush=True)
    out = ROOT / "docs" / "results" / "jpeg-quality.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
