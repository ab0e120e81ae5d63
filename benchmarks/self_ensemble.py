"""Does geometric self-ensembling pay? Measured on the VALIDATION split; writes
docs/results/self-ensemble.md.

Self-ensembling (EDSR's "+" models) upscales each image in the 8 orientations of the square (4
rotations, each mirrored or not), turns the 8 results back and averages them: a known gain of a
tenth of a dB or so on natural images, for 8 times the compute. Here the shipped default with and
without it, scored by zero_background.validation_report (the rim inside skull-stripped edges,
PSNR and the other measures on both data sets' validation images and the validation volume's slices).

    python benchmarks/self_ensemble.py [--model default] [--limit 12]
"""

import argparse

import numpy as np
import torch
from common import FLOAT
from zero_background import write_validation_doc

from medsr import zoo
from medsr.evaluation import quality
from medsr.inference.upscaler import Upscaler


class SelfEnsemble:
    """An upscaler's output averaged over the 8 orientations of its input (quality.Method calls upscale_plane)."""

    def __init__(self, upscaler: Upscaler):
        self.upscaler = upscaler

    def upscale_plane(self, lr01: np.ndarray) -> np.ndarray:
        outputs = []
        for turns in range(4):
            for mirrored in (False, True):
                view = np.rot90(lr01, turns)
                view = view[:, ::-1] if mirrored else view
                out = self.upscaler.upscale_plane(np.ascontiguousarray(view))
                outputs.append(np.rot90(out[:, ::-1] if mirrored else out, -turns))
        return np.mean(outputs, axis=0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default", help="a shipped model name")
    parser.add_argument("--limit", type=int, default=12, help="validation images per data set (spread over the classes)")
    args = parser.parse_args()
    model, _ = zoo.load(args.model)
    upscaler = Upscaler(model, 3, torch.device("cpu"), FLOAT, tile=0)
    methods = [quality.Method("bicubic"), quality.Method(args.model, upscaler),
               quality.Method(f"{args.model}, x8 self-ensemble", SelfEnsemble(upscaler))]
    write_validation_doc("self-ensemble.md", "Geometric self-ensembling (validation split)",
                         f"python benchmarks/self_ensemble.py --model {args.model} --limit {args.limit}",
                         f"{args.model} as shipped, and the mean of its outputs over the 8 orientations of each input "
                         f"(8x its compute); x3, {FLOAT}.", methods, args.limit)


if __name__ == "__main__":
    main()
