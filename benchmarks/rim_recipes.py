"""Recipe changes tried against the rim inside skull-stripped edges (issue 14), on the VALIDATION
split; writes docs/results/rim-recipes.md.

The shipped default's error 2-3 px inside the edge of a zero background stays a little above
bicubic's on the validation volume's slices. Each variant below fine-tunes the shipped default for
`--steps` more steps of configs/default.yaml with one change (same seed), and all are scored as
benchmarks/zero_background.py scores its shares (zero_background.validation_report):
  - control: the recipe as it is (what the extra steps alone do);
  - more volume slices: mix shares paper 0.25, native 0.25, volumes 0.5 (the real skull-stripped
    edges of the T1 volumes, instead of 0.25);
  - the same with half the pairs cut to a zero background (augment zero_background 0.5, not 0.3);
  - MSE instead of L1: L1 learns the median of what an edge may be, MSE its mean, and the rim is a
    mean error.
Finished runs are reused from runs/rim-recipes/ (delete it after reshipping default).

    python benchmarks/rim_recipes.py [--steps 600] [--limit 24]
"""

import argparse

import torch
from common import FLOAT
from zero_background import fine_tuned_default, write_validation_doc

from medsr import zoo
from medsr.evaluation import quality
from medsr.inference.upscaler import Upscaler

MORE_VOLUMES = ["mix.paper=0.25", "mix.native=0.25", "mix.volumes=0.5"]
VARIANTS = {  # label: (run name, recipe changes)
    "control (the recipe as it is)": ("ctrl", []),
    "more volume slices (0.5)": ("vol50", MORE_VOLUMES),
    "more volume slices, zero_background 0.5": ("vol50-zb5", [*MORE_VOLUMES, "augment={zero_background: 0.5}"]),
    "MSE instead of L1": ("mse", ["pixel_loss=mse"]),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--limit", type=int, default=24, help="validation images per data set (spread over the classes)")
    args = parser.parse_args()
    model, _ = zoo.load("default")
    methods = [quality.Method("bicubic"), quality.Method("default", Upscaler(model, 3, torch.device("cpu"), FLOAT, tile=0))]
    for label, (name, changes) in VARIANTS.items():
        tuned = fine_tuned_default(args.steps, changes, "rim-recipes", f"{name}-{args.steps}")
        methods.append(quality.Method(f"default + {args.steps} steps, {label}", tuned))
    write_validation_doc("rim-recipes.md", "Recipe changes against the rim at skull-stripped edges (validation split)",
                         f"python benchmarks/rim_recipes.py --steps {args.steps} --limit {args.limit}",
                         f"The shipped default, fine-tuned for {args.steps} more steps of configs/default.yaml with one change each "
                         f"(same seed); x3, {FLOAT}.", methods, args.limit)


if __name__ == "__main__":
    main()
