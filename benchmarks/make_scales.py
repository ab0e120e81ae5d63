"""Write docs/SCALES.md: the shipped default recipe at x2, x3 and x4 against interpolation on the test
split (paper protocol: HR 150x150 from the centre square, 148x148 at x4 so it divides; LR = HR / scale),
and each scale's rim inside the edge of a zero background (the kept-out T1 subject's slices and the
demo's brain, native protocol; benchmarks/zero_background.py's measure).

    python benchmarks/make_scales.py [--limit N]
"""

import argparse
import time

import torch
from common import DATA, ROOT
from make_results import TEST_VOLUME, rim_images
from zero_background import profile_table

from medsr import zoo
from medsr.evaluation import quality, report
from medsr.inference.upscaler import Upscaler

MODELS = {2: "default-x2", 3: "default", 4: "default-x4"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    command = "python benchmarks/make_scales.py" + (f" --limit {args.limit}" if args.limit else "")
    lines = ["# One recipe, three scales", "",
             f"Produced by `{command}` (test split, paper protocol, precision auto as `medsr upscale` runs it on this CPU, "
             f"named in each heading; {time.strftime('%Y-%m-%d')}). The three models share",
             "configs/default.yaml's network, loss and data mix (paper pairs, native crops, volume slices, light degradation);",
             "`default` fine-tuned default-paper for 3000 steps, `default-x2` and `default-x4` started from `default` for 1500",
             "(configs/default-x2.yaml, configs/default-x4.yaml; each model card has its steps and wall time), all three with",
             "the recipe's zero-background cuts.",
             "PSNR and SSIM after a border crop of `scale` pixels, 8-bit data range. HR is the centre square",
             "resized to 150x150 (148x148 at x4, so that it divides), LR = HR / scale by antialiased bicubic.",
             "Rim: the mean of (method - original) at each distance inside the edge of a zero background, % of the image's",
             f"range (`medsr.metrics.zero_edge_profile`), on every 16th head-holding slice of {TEST_VOLUME} (kept out of every",
             "recipe) and on the demo's brain (the MNI152 template slice `medsr demo` shows), native protocol at each scale.", ""]
    rims_on = rim_images(quality.volume_slice_images(DATA / "nifti" / f"{TEST_VOLUME}.nii.gz", 16))
    for scale, name in MODELS.items():
        model, meta = zoo.load(name)
        upscaler = Upscaler(model, scale, torch.device("cpu"), "auto", tile=0)
        methods = [quality.Method(b) for b in quality.BASELINES] + [quality.Method(name, upscaler)]
        for modality in ("brain-mri", "chest-xray"):
            rows = quality.evaluate([str(DATA / modality)], methods, scale, "paper", "test", args.limit)
            summary = quality.summarize(rows)
            if scale != 3:  # x3 is docs/results/<modality>-paper, written by make_results.py
                report.write_reports(rows, summary, ROOT / "docs" / "results" / f"{modality}-paper-x{scale}",
                                 {"data": modality, "protocol": "paper", "split": "test", "scale": scale})
            lines += [f"## x{scale}, {modality} ({name} in {upscaler.precision})", "", quality.markdown_table(summary), ""]
            print("\n".join(lines[-4:]))
        for where, images in rims_on.items():
            table, _ = profile_table(methods, images, scale)
            lines += [f"### x{scale}, rim inside the edge of a zero background: {where}", "", *table, ""]
            print("\n".join(lines[-len(table) - 2:]))
    (ROOT / "docs" / "SCALES.md").write_text("\n".join(lines))
    print(f"wrote {ROOT / 'docs' / 'SCALES.md'}")


if __name__ == "__main__":
    main()
