"""Does a longer run of the default's recipe pay? Measured on the VALIDATION split; writes
docs/results/recipe-length.md.

configs/default.yaml trains 3000 steps from default-paper: the length a 2-core CPU without bf16
units runs in 40 minutes. On a CPU with AMX the same recipe runs about 10 steps a second, so a run
several times as long is affordable. Here the recipe is trained as it is, with only its step
count (steps_per_epoch) changed, for each of `--steps`, and scored beside the shipped default
(zero_background.validation_report: the rim inside skull-stripped edges, PSNR and the other
measures on both data sets' validation images, paper and native protocols, and the validation
volume's slices). Finished runs are reused from runs/recipe-length/default-<steps>.

    python benchmarks/recipe_length.py [--steps 20000] [--limit 24]
"""

import argparse

import torch
from common import FLOAT, ROOT, trained_run
from zero_background import write_validation_doc

from medsr import zoo
from medsr.evaluation import quality
from medsr.inference.upscaler import Upscaler
from medsr.training.config import load_config


def recipe_at(steps: int) -> tuple[Upscaler, dict]:
    """configs/default.yaml as it is but for its step count, trained once into runs/recipe-length/default-<steps>;
    the network ready to run, and its file's metadata."""
    cfg = load_config(ROOT / "configs" / "default.yaml", ["epochs=1", f"steps_per_epoch={steps}"])
    model, meta = trained_run(cfg, ROOT / "runs" / "recipe-length", f"default-{steps}")
    return Upscaler(model, 3, torch.device("cpu"), FLOAT, tile=0), meta


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, nargs="+", default=[20000], help="step counts to train the recipe for")
    parser.add_argument("--limit", type=int, default=24, help="validation images per data set (spread over the classes)")
    args = parser.parse_args()
    model, _ = zoo.load("default")
    methods = [quality.Method("bicubic"), quality.Method("default (3000 steps, shipped)", Upscaler(model, 3, torch.device("cpu"), FLOAT, tile=0))]
    times = ["## Training time", "", "| steps | wall time (min) |", "|---:|---:|"]
    for steps in args.steps:
        upscaler, meta = recipe_at(steps)
        methods.append(quality.Method(f"default's recipe, {steps} steps", upscaler))
        times.append(f"| {steps} | {float(meta['medsr_train_seconds']) / 60:.1f} |")
    steps = " ".join(str(s) for s in args.steps)
    write_validation_doc("recipe-length.md", "A longer run of the default's recipe (validation split)",
                         f"python benchmarks/recipe_length.py --steps {steps} --limit {args.limit}",
                         "configs/default.yaml trained from default-paper as it is, with only its step count changed "
                         f"(same seed, `precision: auto`); scored x3 in {FLOAT}. The shipped default was trained by the same recipe in fp32 "
                         "on an AMD EPYC with AVX2 (its card). Wall times are those each run's model file recorded when it was trained "
                         "(a run reused from runs/ keeps the machine it was trained on).",
                         methods, args.limit, [*times, ""])


if __name__ == "__main__":
    main()
