"""Diagnostic fidelity of the shipped models: the "Diagnostic fidelity" section of docs/RESULTS.md.

For each data set: a classifier is trained on the HR images of the train split (or reused from
runs/fidelity/<data>/classifier.safetensors), then `medsr evaluate --task classify` compares its
predictions on HR test images with those on bicubic and on each model's x3 upscaling of the LR image.
Writes docs/results/fidelity.md and puts it at the end of docs/RESULTS.md (make_results.py keeps it).

    python benchmarks/make_fidelity.py [--epochs 15] [--models default,default-gan,paper]
"""

import argparse
import time

import torch
from common import DATA, ROOT

from medsr import zoo
from medsr.evaluation import diagnostic, quality
from medsr.inference.upscaler import Upscaler

SECTION = "## Diagnostic fidelity"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=diagnostic.DEFAULT_EPOCHS)
    parser.add_argument("--models", default="default,default-gan,paper")
    args = parser.parse_args()
    methods = [quality.Method("bicubic")]
    for name in args.models.split(","):
        model, meta = zoo.load(name)
        methods.append(quality.Method(name, Upscaler(model, int(meta["medsr_scale"]), torch.device("cpu"), "auto", tile=0)))
    lines = [SECTION, "", f"Produced by `python benchmarks/make_fidelity.py --epochs {args.epochs}` ({time.strftime('%Y-%m-%d')}).",
             "Does the diagnosis survive super-resolution? A small CNN (0.2 M parameters, class-weighted cross-entropy)",
             f"is trained for {args.epochs} epochs on the HR images (paper protocol, 150x150) of the train split, then",
             "classifies the test split's HR images (the ceiling) and each method's x3 upscaling of the 50x50 LR image.",
             "Balanced accuracy is the mean of per-class recalls (chest X-ray: 102 NORMAL vs 885 PNEUMONIA); AUC is the",
             "macro one-vs-rest AUC; changed vs HR is the share of images whose predicted class differs from HR's.", ""]
    for modality in ("brain-mri", "chest-xray"):
        out = ROOT / "runs" / "fidelity" / modality
        saved = out / "classifier.safetensors"
        result = diagnostic.run_classify([str(DATA / modality)], methods, 3, out, classifier=saved if saved.is_file() else None,
                                       classifier_epochs=args.epochs)
        lines += [f"### {modality}", "", result["table"], ""]
    text = "\n".join(lines)
    (ROOT / "docs" / "results" / "fidelity.md").write_text(text)
    results = ROOT / "docs" / "RESULTS.md"
    before = results.read_text().split(SECTION)[0].rstrip("\n")
    results.write_text(before + "\n\n" + text)
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
