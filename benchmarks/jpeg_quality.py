"""Which model is closer to the original on JPEG inputs, by JPEG quality? Measured on the VALIDATION
split; writes docs/results/jpeg-quality.md.

Native-protocol pairs of both data sets (48 images spread over their classes), the LR saved as an
8-bit JPEG at each quality and read back (medsr.data.degrade.jpeg_round_trip), then upscaled by
`default` and by `default-jpeg` (what `medsr upscale` runs on JPEG files), both in bf16 where the
CPU has it. PSNR against the HR image, border 3 px, mean over the images.

    python benchmarks/jpeg_quality.py [--limit 48] [--qualities 75,85,90,93,95,98]
"""

import argparse

import numpy as np
import torch
from common import DATA, FLOAT, ROOT, machine

from medsr import metrics
from medsr.data import degrade, load_arrays, scan, select, spread
from medsr.inference.upscaler import load_upscaler
from medsr.io.types import as_unit

MODELS = ("default", "default-jpeg")


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
             f"Produced by `python benchmarks/jpeg_quality.py` ({machine()}).",
             f"{len(pairs)} validation images of both data sets, native protocol, the LR saved as a JPEG at each quality;",
             f"PSNR over bicubic of the same JPEG input, {FLOAT}.", "",
             "| JPEG quality | bicubic (dB) | default vs bicubic (dB) | default-jpeg vs bicubic (dB) | default-jpeg − default (dB) |",
             "|---:|---:|---:|---:|---:|"]
    for quality in qualities:
        psnr = {name: [] for name in ("bicubic", *MODELS)}
        for lr, hr in pairs:
            lr_jpeg = degrade.jpeg_round_trip(as_tensor(lr), quality)
            psnr["bicubic"].append(metrics.psnr(degrade.upscale_baseline(lr_jpeg, 3).clamp(0, 1), as_tensor(hr), 3).item())
            for name, upscaler in upscalers.items():
                psnr[name].append(metrics.psnr(as_tensor(upscaler.upscale_plane(lr_jpeg[0, 0].numpy())), as_tensor(hr), 3).item())
        mean = {name: float(np.mean(values)) for name, values in psnr.items()}
        lines.append(f"| {quality} | {mean['bicubic']:.2f} | {mean['default'] - mean['bicubic']:+.2f} | "
                     f"{mean['default-jpeg'] - mean['bicubic']:+.2f} | {mean['default-jpeg'] - mean['default']:+.2f} |")
        print(lines[-1], flush=True)
    out = ROOT / "docs" / "results" / "jpeg-quality.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
