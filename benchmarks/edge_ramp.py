"""What the rim measure sees: the mean intensity at each distance inside the edge of a zero
background, for the original and each method; writes docs/results/edge-ramp.md.

The rim in RESULTS.md's quality bar is the largest mean error (method - original) 2-6 px inside
such an edge (medsr.metrics.zero_edge_profile). A positive error there can be a bright line (the
intensity rises and falls again: a false structure) or a ramp that climbs a little faster than the
original's (no line). This script prints the mean intensity itself, % of each image's range, at 1 to
10 px in (the distance taken in the original, as zero_edge_profile takes it), and whether each
method's profile has a local maximum (a line) within 6 px, on:
  - the validation volume's slices (brain-t1-sub-08, every 4th with some head);
  - the kept-out test subject's slices (brain-t1-sub-09; reported, never used to choose);
  - the demo's brain (a slice of the MNI152 template, in no split).

    python benchmarks/edge_ramp.py [--models default,default-paper]
"""

import argparse

import numpy as np
import torch
from common import DATA, FLOAT, ROOT, machine
from zero_background import demo_brain

from medsr import metrics, zoo
from medsr.data import degrade
from medsr.evaluation import quality
from medsr.inference.upscaler import Upscaler

DEPTH = 10
LINE_WITHIN = 6


def ramp(images: list[np.ndarray], method: quality.Method | None) -> np.ndarray:
    """Mean of the method's output (None: the original) at each distance 1..DEPTH inside the original's
    zero-background edge, % of the original's range."""
    rows = []
    for image in images:
        lr, hr = degrade.make_pair(image, "native", 3, native_cap=None)
        out = hr if method is None else method.run(lr, 3)
        low, span = float(hr.min()), max(float(hr.max() - hr.min()), 1e-12)
        distance = metrics.zero_edge_distance(hr)  # as medsr.metrics.zero_edge_profile takes it
        rows.append([100 * ((out - low) / span)[distance == d].mean() if (distance == d).any() else np.nan for d in range(1, DEPTH + 1)])
    return np.nanmean(np.array(rows, dtype=float), axis=0)


def has_line(values: np.ndarray) -> bool:
    """A local maximum within LINE_WITHIN px: the intensity rises and falls again, a bright line."""
    inner = values[:LINE_WITHIN + 1]
    return bool(any(inner[d] > inner[d - 1] and inner[d] > inner[d + 1] for d in range(1, LINE_WITHIN)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="default,default-paper")
    args = parser.parse_args()
    methods = {"original": None, "bicubic": quality.Method("bicubic")}
    for name in args.models.split(","):
        methods[name] = quality.Method(name, Upscaler(zoo.load(name)[0], 3, torch.device("cpu"), FLOAT, tile=0))
    sets = {f"{stem} slices ({split}, every 4th with some head)": [image for _, _, image, _ in
                                                                    quality.volume_slice_images(DATA / "nifti" / f"{stem}.nii.gz", 4)]
            for stem, split in (("brain-t1-sub-08", "validation"), ("brain-t1-sub-09", "test"))}
    if (brain := demo_brain()) is not None:
        sets["the demo's brain (MNI152 template slice, in no split)"] = [brain]
    head = " | ".join(f"{d} px" for d in range(1, DEPTH + 1))
    lines = ["# The mean intensity inside the edge of a zero background", "",
             f"Produced by `python benchmarks/edge_ramp.py --models {args.models}` ({machine()}).",
             "Each image downscaled x3 (native protocol) and upscaled; the mean of each output at each distance inside the "
             f"original's zero-background edge, % of the original's range; x3, {FLOAT}. \"line\": the profile has a local "
             f"maximum within {LINE_WITHIN} px (the intensity rises and falls again), as a bright line inside the edge makes.", ""]
    for where, images in sets.items():
        lines += [f"## {where}", "", f"| method | {head} | line |", "|---|" + "---:|" * DEPTH + ":---:|"]
        for name, method in methods.items():
            values = ramp(images, method)
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {'yes' if has_line(values) else 'no'} |")
            print(lines[-1], flush=True)
        lines.append("")
    out = ROOT / "docs" / "results" / "edge-ramp.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
