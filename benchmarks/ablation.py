"""Does the weight-free perceptual loss help? Does CutBlur? Write docs/ABLATION.md.

Trains the default recipe (EDSR-style, L1) three times with the same wall-time budget on this CPU:
plain; plus the `ssim-grad` loss (MS-SSIM + image gradients, no downloaded weights); plus CutBlur
(with `generator.hr_input: true`, which CutBlur needs). Then evaluates each on the test split of both
data sets (paper protocol) against bicubic.

    python benchmarks/ablation.py [--minutes 5] [--limit N]
"""

import argparse
import time

import torch
from common import DATA, ROOT

from medsr import zoo
from medsr.evaluation import quality
from medsr.inference.upscaler import Upscaler
from medsr.training.config import load_config
from medsr.training.trainer import Trainer

VARIANTS = {
    "L1 (the default recipe)": [],
    "L1 + 0.1 x ssim-grad": ["perceptual_loss=ssim-grad", "perceptual_weight=0.1"],
    "L1 + CutBlur (p = 0.5)": ["generator={channels: 48, num_blocks: 8, hr_input: true}", "augment={cutblur: 0.5}"],
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    runs = ROOT / "runs" / "ablation"
    methods, steps = [quality.Method("bicubic")], []
    for i, (label, overrides) in enumerate(VARIANTS.items()):
        name = f"variant-{i}"
        if not (runs / name / "model.safetensors").is_file():
            cfg = load_config(ROOT / "configs" / "default.yaml", [f"name={name}", f"out_dir={runs}", "lr_schedule=constant",
                                                                  f"time_budget_minutes={args.minutes}", *overrides])
            Trainer(cfg).fit()
        model, meta = zoo.load(runs / name)
        methods.append(quality.Method(label, Upscaler(model, 3, torch.device("cpu"), "auto", tile=0)))
        steps.append(f"| {label} | {meta['medsr_step']} |")
    command = f"python benchmarks/ablation.py --minutes {args.minutes:g}" + (f" --limit {args.limit}" if args.limit else "")
    lines = ["# Ablation: the weight-free perceptual loss and CutBlur", "",
             f"Produced by `{command}` ({time.strftime('%Y-%m-%d')}): the default recipe (EDSR-style, L1, EMA,",
             f"constant learning rate) trained three times for {args.minutes:g} min each on the 2-core CPU, then tested",
             "on the test split (paper protocol, x3). Same seed; only the named change differs.", "",
             "| variant | steps in the budget |", "|---|---:|", *steps, ""]
    for modality in ("brain-mri", "chest-xray"):
        summary = quality.summarize(quality.evaluate([str(DATA / modality)], methods, 3, "paper", "test", args.limit))
        lines += [f"## {modality}", "", quality.markdown_table(summary), ""]
        print(lines[-2])
    (ROOT / "docs" / "ABLATION.md").write_text("\n".join(lines))
    print(f"wrote {ROOT / 'docs' / 'ABLATION.md'}")


if __name__ == "__main__":
    main()
