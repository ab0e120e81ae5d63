"""The share of zero-background cuts for the default recipe at another scale (configs/default-x2.yaml,
configs/default-x4.yaml), chosen on the VALIDATION split; writes docs/results/zero-background-xN.md.

The x3 share (0.3) came from benchmarks/zero_background.py; whether it suits the other scales is
measured here (at x4, where a rim remains, 0.6 did not lower it: docs/results/zero-background-x4.md). Each share
trains the recipe as written (from the shipped x3 default, its steps, its seed) with
`augment: {zero_background: SHARE}`, and validation_report scores them: the edge profile on the
validation volume's slices and the demo's brain, PSNR on both data sets' validation images.
Finished runs are reused from runs/zero-background/.

    python benchmarks/zero_background_scale.py configs/default-x4.yaml [--shares 0.3 0.6] [--limit 24]
"""

import argparse
from pathlib import Path

import torch
from common import FLOAT, ROOT, machine, trained_run
from zero_background import validation_report

from medsr.evaluation import quality
from medsr.inference.upscaler import Upscaler
from medsr.training.config import load_config


def trained(config: Path, share: float) -> tuple[str, Upscaler]:
    """The recipe at `config` trained as written but for its share of zero-background cuts."""
    cfg = load_config(config, [f"augment={{zero_background: {share}}}"])
    name = f"{cfg.name}-zb{share:g}"
    model, _ = trained_run(cfg, ROOT / "runs" / "zero-background", name)
    return f"{cfg.name}, zero_background {share:g}", Upscaler(model, cfg.scale, torch.device("cpu"), FLOAT, tile=0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.3, 0.6], help="shares of training pairs cut to a zero background")
    parser.add_argument("--limit", type=int, default=24, help="validation images per data set (spread over the classes)")
    args = parser.parse_args()
    scale = load_config(args.config).scale
    methods = [quality.Method("bicubic")] + [quality.Method(*trained(args.config, share)) for share in args.shares]
    shares = " ".join(f"{share:g}" for share in args.shares)
    lines = [f"# Zero-background cuts at x{scale} (validation split)", "",
             f"Produced by `python benchmarks/zero_background_scale.py {args.config} --shares {shares} --limit {args.limit}` ({machine()}).",
             f"{args.config} trained as written, each with a share of its training pairs cut to a zero background "
             f"(`augment: {{zero_background: SHARE}}`, SHARE {shares}); x{scale}, {FLOAT}.", ""]
    lines += validation_report(methods, scale, args.limit)
    out = ROOT / "docs" / "results" / f"zero-background-x{scale}.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
