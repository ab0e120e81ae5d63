"""Which ideas of the default recipe help? Measured on the VALIDATION split; write docs/ABLATION.md.

The default recipe (configs/default.yaml) fine-tunes default-paper. Here it is run four times for
the same number of steps, each adding one idea to the one before:
  1. the paper protocol's pairs only (what default-paper was trained on);
  2. + native-resolution crops of both data sets and crops of T1 volume slices (clean LR);
  3. + mild noise and JPEG on those crops' LR (the light degradation);
  4. + the neighbourhood clamp of the output (clamp_margin 0.04);
Then ideas tried on top of 4, one change each:
  5. JPEG at high qualities only (80-98 instead of 30-95), not shipped;
  6. distillation from `large` (teacher_weight 1: its output as a second target), not shipped;
  7. 30 % of the pairs cut to a zero background (augment zero_background): the shipped recipe
     since 2026-12-06 (docs/results/zero-background.md measured it as a fine-tune of the default).
All train the "fused" upsampler, as the shipped recipe does. Finished variants are reused from
runs/ablation/: a variant's folder is named by its number and a hash of its whole recipe (steps
included), so a changed recipe trains again. The hash does not cover the weights it starts from
(default-paper, and `large` for variant 6): delete runs/ablation/ after reshipping those.
Each is scored on the validation split only (recipes are chosen there; the test split is for
reporting, docs/RESULTS.md): both data sets under the paper and native protocols, with the edge
overshoot and the JPEG block-grid ratio, and the slices of the validation volume (sub-08), with the
error inside a zero background's edge (the rim; benchmarks/zero_background.py's validation_report).

    python benchmarks/ablation.py [--steps 400] [--limit 24]
"""

import argparse
import dataclasses
import hashlib
import json
import time

import torch
from common import DATA, FLOAT, ROOT, machine, trained_run
from zero_background import VAL_VOLUME, validation_report

from medsr import zoo
from medsr.evaluation import quality
from medsr.inference.upscaler import Upscaler
from medsr.training.config import load_config

PLAIN = "generator={channels: 48, num_blocks: 8, upsampler: fused}"
CLEAN_MIX = "mix={paper: 0.375, native: 0.375, volumes: 0.25, volume_data: '${MEDSR_DATA}/nifti', volume_val: [brain-t1-sub-08], " \
            "volume_test: [brain-t1-sub-09], jpeg: 0, noise: 0}"
NO_CUTS = "augment={}"
VARIANTS = {
    "1. paper pairs only": ["protocol=paper", PLAIN, NO_CUTS],
    "2. + native crops and volume slices": [CLEAN_MIX, PLAIN, NO_CUTS],
    "3. + noise and JPEG on their LR": [PLAIN, NO_CUTS],
    "4. + neighbourhood clamp": [NO_CUTS],
    "5. not shipped: 4, JPEG quality 80-98": ["mix.jpeg_quality=[80, 98]", NO_CUTS],
    "6. not shipped: 4 + distillation from large": ["teacher=large", "teacher_weight=1.0", NO_CUTS],
    "7. 4 + zero-background cuts (the default recipe)": [],
}
MARGINS = (None, 0.02, 0.03, 0.04, 0.05)


def recipe_hash(cfg) -> str:
    """Eight hex digits of the recipe's every field but its name and output folder."""
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("name", "out_dir")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:8]


def margin_tables(limit: int) -> list[str]:
    """The shipped default with its clamp margin changed at inference, on the brain MRI validation images."""
    methods = [quality.Method("bicubic")]
    for margin in MARGINS:
        model, _ = zoo.load("default")
        model.clamp_margin = margin
        methods.append(quality.Method(f"default, margin {margin if margin is not None else 'none (no clamp)'}",
                                      Upscaler(model, 3, torch.device("cpu"), FLOAT, tile=0)))
    lines = ["## The clamp's margin (the shipped default, margin changed at inference; brain MRI, validation)", ""]
    for protocol in ("paper", "native"):
        summary = quality.summarize(quality.evaluate([str(DATA / "brain-mri")], methods, 3, protocol, "val", limit))
        lines += [f"### {protocol} protocol", "", quality.markdown_table(summary), ""]
    return lines


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--limit", type=int, default=24, help="validation images per data set (spread over the classes)")
    args = parser.parse_args()
    runs = ROOT / "runs" / "ablation"
    methods, steps = [quality.Method("bicubic")], []
    for i, (label, overrides) in enumerate(VARIANTS.items()):
        recipe = ["epochs=1", f"steps_per_epoch={args.steps}", *overrides]
        cfg = load_config(ROOT / "configs" / "default.yaml", recipe)
        name = f"variant-{i + 1}-{recipe_hash(cfg)}"
        model, meta = trained_run(cfg, runs, name)
        methods.append(quality.Method(label, Upscaler(model, 3, torch.device("cpu"), FLOAT, tile=0)))
        steps.append(f"| {label} | {meta['medsr_step']} |")
    command = f"python benchmarks/ablation.py --steps {args.steps} --limit {args.limit}"
    lines = ["# Ablation: what the default recipe's ideas bring (validation split)", "",
             f"Produced by `{command}` ({machine()}).",
             f"Each variant fine-tunes default-paper for {args.steps} steps (configs/default.yaml with the changes named; same seed),",
             "then is scored on the VALIDATION split, x3: recipes are chosen here, the test split only reports (docs/RESULTS.md).",
             f"{args.limit} images per data set, spread over its classes; the slices of {VAL_VOLUME} with some head in them.", "",
             "| variant | steps |", "|---|---:|", *steps, ""]
    lines += validation_report(methods, 3, args.limit)
    lines += margin_tables(args.limit)
    print("\n".join(lines[-12:]))
    (ROOT / "docs" / "ABLATION.md").write_text("\n".join(lines))
    print(f"wrote {ROOT / 'docs' / 'ABLATION.md'} at {time.strftime('%H:%M')}")


if __name__ == "__main__":
    main()
