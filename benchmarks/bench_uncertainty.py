"""How well does the hallucination map (`medsr upscale --uncertainty`) follow the real error?

On test-split images (paper protocol, x3) of each data set, spread evenly over its classes, for each model with its default
reference: the Pearson correlation between the combined map and the true |SR - HR| (blurred like
the map's disagreement term), the mean of each, and the true error inside and outside flagged
pixels (combined > 0.3).

    python benchmarks/bench_uncertainty.py [--images 20]
"""

import argparse

import numpy as np
import torch
from common import DATA, machine

from medsr import zoo
from medsr.data import degrade, load_arrays, scan, select, spread
from medsr.inference import hallucination
from medsr.inference.upscaler import Upscaler
from medsr.io.types import as_unit


def upscaler(name: str) -> Upscaler:
    model, meta = zoo.load(name)
    return Upscaler(model, int(meta["medsr_scale"]), torch.device("cpu"), "auto", tile=0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args()
    print(f"`python benchmarks/bench_uncertainty.py --images {args.images}` ({args.images} test-split images per data set, spread "
          f"evenly over its classes; paper protocol, x3; {machine()})\n")
    print("| data | model (reference) | Pearson r(map, true error) | mean map | mean true error / 10 % of range | "
          "true error, flagged / unflagged |")
    print("|---|---|---:|---:|---:|---:|")
    for modality in ("brain-mri", "chest-xray"):
        arrays, _ = load_arrays(spread(select(scan([str(DATA / modality)]), "test"), args.images))  # every class, not the first
        for name in ("default-gan", "default"):
            main_model, reference = upscaler(name), upscaler(hallucination.reference_model_name(name))
            maps, errors = [], []
            for array in arrays:
                lr, hr = degrade.make_pair(as_unit(array)[0], "paper", 3)
                result = hallucination.hallucination_maps(lr, main_model, reference)
                span = max(float(lr.max() - lr.min()), 1e-6)
                true_error = hallucination.disagreement(result["sr"], hr) / (hallucination.COMBINED_UNIT * span)
                maps.append(result["combined"].ravel())
                errors.append(true_error.ravel())
            m, e = np.concatenate(maps), np.concatenate(errors)
            flagged = m > 0.3
            ratio = e[flagged].mean() / e[~flagged].mean() if flagged.any() and (~flagged).any() else float("nan")
            print(f"| {modality} | {name} ({hallucination.reference_model_name(name)}) | {np.corrcoef(m, e)[0, 1]:.2f} | {m.mean():.3f} | "
                  f"{e.mean():.3f} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
