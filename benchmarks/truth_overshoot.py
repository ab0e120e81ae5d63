"""How often does the truth itself "overshoot"? Writes docs/results/truth-overshoot.md.

The edge-overshoot measure (medsr.metrics.edge_overshoot) counts output pixels that leave the range
of their 3x3 LR source neighbourhood by more than 5 % of the LR image's range. It is meant to catch
invented lines at hard edges, but real detail finer than an LR pixel (a thin bright vessel averaged
away in the LR) leaves that range too. Scoring the HR images themselves against their own LR says
how much of a method's overshoot any faithful upscale would have, and so how strict the
"no more than bicubic's" target of issue 14 is. Same images as docs/RESULTS.md (test split,
`--limit` per data set spread over the classes; the kept-out T1 subject's slices).

    python benchmarks/truth_overshoot.py [--limit 50]
"""

import argparse

import numpy as np
import torch
from common import DATA, ROOT, machine

from medsr import metrics
from medsr.data import degrade, load_arrays
from medsr.evaluation import quality
from medsr.io.types import as_unit

TEST_VOLUME = "brain-t1-sub-09"


def overshoot(images: list[np.ndarray], protocol: str) -> tuple[float, float]:
    """Mean edge overshoot (%) of the HR images and of bicubic, each against the pair's LR."""
    truth, bicubic = [], []
    for image in images:
        lr, hr = (torch.from_numpy(a)[None, None] for a in degrade.make_pair(image, protocol, 3))
        truth.append(metrics.edge_overshoot(hr, lr, 3).item())
        bicubic.append(metrics.edge_overshoot(degrade.upscale_baseline(lr, 3).clamp(0, 1), lr, 3).item())
    return 100 * float(np.mean(truth)), 100 * float(np.mean(bicubic))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=50)
    args = parser.parse_args()
    lines = ["## Edge overshoot of the truth (test split)", "",
             f"Produced by `python benchmarks/truth_overshoot.py --limit {args.limit}` ({machine()}).",
             "Share of pixels more than 5 % of the LR image's range outside their 3x3 LR source neighbourhood (x3),",
             "for the HR image itself and for bicubic. A faithful upscale overshoots about as often as the truth does.", "",
             "| images | protocol | count | HR itself (%) | bicubic (%) |", "|---|---|---:|---:|---:|"]
    for modality in ("brain-mri", "chest-xray"):
        arrays, _ = load_arrays(quality.split_items([str(DATA / modality)], "test", args.limit))  # make_results' images
        images = [as_unit(array)[0] for array in arrays]
        for protocol in ("paper", "native"):
            lines.append(f"| {modality} | {protocol} | {len(images)} | %.3f | %.3f |" % overshoot(images, protocol))
            print(lines[-1], flush=True)
    slices = [image for _, _, image, _ in quality.volume_slice_images(DATA / "nifti" / f"{TEST_VOLUME}.nii.gz", 16)]
    lines.append(f"| {TEST_VOLUME} slices (every 16th with head) | native | {len(slices)} | %.3f | %.3f |" % overshoot(slices, "native"))
    print(lines[-1])
    out = ROOT / "docs" / "results" / "truth-overshoot.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
