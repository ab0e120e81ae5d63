"""Does cutting training images to a zero background take away the rim at skull-stripped edges?
Measured on the VALIDATION split; writes docs/results/zero-background.md.

The shipped default draws a bright line a few pixels inside the edge of a zero background (the
demo's brain figure; issue 14): it learnt the bright scalp line of scans with a skull. The
recipe key `augment: {zero_background: p}` cuts a share p of the training pairs with a random
soft-edged ellipse (medsr.data.augment.zero_background). Here the shipped default is fine-tuned
with its own recipe for `--steps` steps, without the cuts and with each share of them (same
seed), and all are scored against it:
  - the edge profile (medsr.metrics.zero_edge_profile): the mean error at each distance inside
    the zero background's edge, on the validation volume's slices (sub-08, every 4th with some
    head) and on the demo's brain (a slice of the MNI152 template, in no split);
  - PSNR, SSIM and the other measures on both data sets' validation images (paper and native
    protocols) and the validation volume's slices, so that a fix of the rim that costs quality shows.
Finished runs are reused from runs/zero-background/ (delete it after reshipping default).

    python benchmarks/zero_background.py [--steps 600] [--shares 0.3 0.6] [--limit 24]
"""

import argparse

import numpy as np
import torch
from common import DATA, FLOAT, ROOT, machine, trained_run

from medsr import metrics, zoo
from medsr.data import degrade
from medsr.demo import demo_images
from medsr.errors import MedsrError
from medsr.evaluation import quality
from medsr.inference.upscaler import Upscaler
from medsr.training.config import load_config

VAL_VOLUME = "brain-t1-sub-08"
DEPTH = 6


def fine_tuned_default(steps: int, changes: list[str], runs: str, name: str) -> Upscaler:
    """The shipped default after `steps` more steps of configs/default.yaml with `changes` (key=value,
    as --set takes them), trained once into runs/<runs>/<name> and reused from there."""
    cfg = load_config(ROOT / "configs" / "default.yaml",
                      ["init_from=default", "epochs=1", f"steps_per_epoch={steps}", "checkpoint_every=200", *changes])
    model, _ = trained_run(cfg, ROOT / "runs" / runs, name)
    return Upscaler(model, 3, torch.device("cpu"), FLOAT, tile=0)


def fine_tuned(steps: int, share: float) -> tuple[str, Upscaler]:
    """The shipped default after `steps` more steps of its recipe with a `share` of zero-background cuts."""
    upscaler = fine_tuned_default(steps, [f"augment={{zero_background: {share}}}"], "zero-background", f"default+{steps}-zb{share:g}")
    return f"default + {steps} steps, zero_background {share:g}", upscaler


def profile(method: quality.Method, images: list[np.ndarray], scale: int = 3) -> np.ndarray:
    """The mean zero_edge_profile (x100: % of the range) of a method over images, each downscaled by scale (native protocol)."""
    rows = []
    for image in images:
        lr, hr = degrade.make_pair(image, "native", scale, native_cap=None)
        rows.append(metrics.zero_edge_profile(torch.from_numpy(method.run(lr, scale)), torch.from_numpy(hr), DEPTH).numpy())
    return 100 * np.nanmean(np.stack(rows), axis=0)


def profile_table(methods: list[quality.Method], images: list[np.ndarray], scale: int = 3) -> tuple[list[str], dict[str, float]]:
    """A Markdown table of each method's profile, and each method's rim: its largest error 2 or more pixels in (%, 0 if none)."""
    head = " | ".join(f"{d} px" for d in range(1, DEPTH + 1))
    lines = [f"| method | {head} | rim: largest error 2-{DEPTH} px in (%) |", "|---|" + "---:|" * (DEPTH + 1)]
    rims = {}
    for method in methods:
        values = profile(method, images, scale)
        rims[method.name] = max(0.0, float(values[1:].max()))
        lines.append(f"| {method.name} | " + " | ".join(f"{v:+.2f}" for v in values) + f" | {rims[method.name]:.2f} |")
    return lines, rims


def demo_brain() -> np.ndarray | None:
    """The demo's brain image (a slice of the MNI152 template), or None without nilearn."""
    try:
        return demo_images().get("brain-mri")
    except MedsrError:
        return None


def validation_report(methods: list[quality.Method], scale: int, limit: int) -> list[str]:
    """Markdown sections scoring methods on the validation split at `scale`: the edge profile on the
    validation volume's slices and the demo's brain, then PSNR and the other measures on both data
    sets (paper and native protocols) and on the volume's slices."""
    slices = quality.volume_slice_images(DATA / "nifti" / f"{VAL_VOLUME}.nii.gz", 4)
    lines = ["## Error inside the edge of a zero background", "",
             "Mean of (method - original) at each distance inside the edge, % of the image's range "
             "(`medsr.metrics.zero_edge_profile`): a bright rim shows as a positive error a few pixels in.", "",
             f"### {VAL_VOLUME} slices (validation volume, every 4th with some head)", "",
             *profile_table(methods, [image for _, _, image, _ in slices], scale)[0], ""]
    print("\n".join(lines), flush=True)
    brain = demo_brain()
    if brain is not None:
        block = ["### The demo's brain (MNI152 template slice, `medsr demo`; in no split)", "", *profile_table(methods, [brain], scale)[0], ""]
        lines += block
        print("\n".join(block), flush=True)
    for modality in ("brain-mri", "chest-xray"):
        for protocol in ("paper", "native"):
            summary = quality.summarize(quality.evaluate([str(DATA / modality)], methods, scale, protocol, "val", limit))
            lines += [f"## {modality}, {protocol} protocol", "", quality.markdown_table(summary), ""]
            print("\n".join(lines[-4:]), flush=True)
    summary = quality.summarize(quality.evaluate_arrays(slices, methods, scale, "native"))
    lines += [f"## T1 volume slices ({VAL_VOLUME}, every 4th with some head), native protocol", "", quality.markdown_table(summary), ""]
    print("\n".join(lines[-4:]), flush=True)
    return lines


def write_validation_doc(file_name: str, title: str, command: str, about: str, methods: list[quality.Method], limit: int,
                         sections: list[str] = ()) -> None:
    """docs/results/<file_name>: the title, the command and machine, `about`, any `sections` of the
    caller's own, then validation_report of the methods at x3."""
    lines = [f"# {title}", "", f"Produced by `{command}` ({machine()}).", about, "", *sections]
    print("\n".join(lines), flush=True)
    lines += validation_report(methods, 3, limit)
    out = ROOT / "docs" / "results" / file_name
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.3, 0.6], help="shares of training pairs cut to a zero background")
    parser.add_argument("--limit", type=int, default=24, help="validation images per data set (spread over the classes)")
    args = parser.parse_args()
    model, _ = zoo.load("default")
    methods = [quality.Method("bicubic"), quality.Method("default", Upscaler(model, 3, torch.device("cpu"), FLOAT, tile=0))]
    methods += [quality.Method(*fine_tuned(args.steps, share)) for share in (0.0, *args.shares)]
    shares = " ".join(f"{share:g}" for share in args.shares)
    command = f"python benchmarks/zero_background.py --steps {args.steps} --shares {shares} --limit {args.limit}"
    write_validation_doc("zero-background.md", "Zero-background cuts against the rim at skull-stripped edges (validation split)", command,
                         f"The shipped default, fine-tuned for {args.steps} more steps of configs/default.yaml without and with a share of "
                         f"its training pairs cut to a zero background (`augment: {{zero_background: SHARE}}`, SHARE {shares}); x3, {FLOAT}.",
                         methods, args.limit)


if __name__ == "__main__":
    main()
