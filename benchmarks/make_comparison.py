"""Write docs/COMPARISON.md: the seed paper's comparison (its Figure 7) with numbers.

Every model is trained on the train split of both data sets with the same wall-time budget on
this CPU, then `medsr compare` runs on each modality's test split (paper protocol). Then the
paper's MNIST baseline (28x28, x2) is evaluated and drawn.

    bash benchmarks/train_comparison.sh       # trains every model into runs/compare/ (about 1 h on 2 cores), then runs:
    python benchmarks/make_comparison.py [--limit N]
"""

import argparse
import json
import shutil
import time

import numpy as np
import torch
from common import DATA, ROOT, machine

from medsr import figures, metrics, zoo
from medsr.data import build_sampler, degrade
from medsr.evaluation.compare import compare
from medsr.inference.upscaler import Upscaler
from medsr.models.value_range import to_unit

RUNS = ROOT / "runs" / "compare"
TRAINED = ["paper", "default-paper", "srgan", "esrgan", "real-esrgan", "swinir", "resshift"]
DOCS = ROOT / "docs" / "comparison"
READING = "## Reading of these numbers"  # written by hand below the generated part; kept when it is regenerated


def run_info(name: str) -> str:
    meta = zoo.read_metadata(RUNS / name / "model.safetensors")
    recipe = json.loads(meta["medsr_recipe"])
    return (f"| {name} | `configs/{name}.yaml` | {recipe['model']} | {int(meta['medsr_step'])} | "
            f"{float(meta['medsr_train_seconds']) / 60:.1f} |")


def mnist_section(limit: int = 500) -> list[str]:
    """PSNR of the MNIST baseline against bicubic on the MNIST test split, and its figure."""
    run = RUNS / "mnist-baseline"
    model, meta = zoo.load(run)
    scale = int(meta["medsr_scale"])
    lr, hr = build_sampler([str(DATA / "mnist")], "test", "mnist", scale, 28).fixed_pairs(limit)
    lr01, hr01 = to_unit(lr), to_unit(hr)
    upscaler = Upscaler(model, scale, torch.device("cpu"), "auto", tile=0, normalize=False)
    sr01 = torch.from_numpy(np.stack([upscaler.upscale_plane(x[0].numpy()) for x in lr01]))[:, None]
    bicubic = degrade.upscale_baseline(lr01, scale).clamp(0, 1)
    psnr = {name: metrics.psnr(x, hr01, scale).mean().item() for name, x in (("bicubic", bicubic), ("dcgan", sr01))}
    ssim = {name: metrics.ssim(x, hr01, scale).mean().item() for name, x in (("bicubic", bicubic), ("dcgan", sr01))}
    rows = [[figures.tile(x[0].numpy(), label if i == 0 else "", 84, figures.Image.Resampling.NEAREST) for i, x in enumerate(batch[:10])]
            for label, batch in (("HR 28x28", hr01), (f"LR {28 // scale}x{28 // scale}", lr01), ("bicubic", bicubic), ("dcgan", sr01))]
    figures.grid(rows).save(DOCS / "mnist.png")
    return ["## The paper's MNIST baseline", "",
            f"`configs/mnist-baseline.yaml` (DCGAN-style generator and discriminator, x{scale}: 14x14 -> 28x28), "
            f"{int(meta['medsr_step'])} steps, {float(meta['medsr_train_seconds']) / 60:.1f} min. "
            f"Test split ({len(hr)} digits, border {scale} px):", "",
            "| method | PSNR (dB) | SSIM |", "|---|---:|---:|",
            *[f"| {name} | {psnr[name]:.2f} | {ssim[name]:.4f} |" for name in psnr], "",
            "Rows: HR, LR, bicubic, the baseline's output.", "", "![MNIST baseline](comparison/mnist.png)", ""]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    budget = json.loads(zoo.read_metadata(RUNS / "swinir" / "model.safetensors")["medsr_recipe"])["time_budget_minutes"]
    models = ["bicubic", "lanczos"] + [f"{name}={RUNS / name}" for name in TRAINED]
    command = "python benchmarks/make_comparison.py" + (f" --limit {args.limit}" if args.limit else "")
    lines = ["# The paper's comparison, with numbers", "",
             f"Produced by `bash benchmarks/train_comparison.sh`, which trains what is missing in runs/compare/ and then runs "
             f"`{command}` ({time.strftime('%Y-%m-%d')}).", "",
             'The figures below are written into docs/comparison/ by the command above and are not committed: they show'
             ' images of ../shared/data, whose rules forbid committing crops or re-encodings of its files. Run the command (or `medsr compare`) to see them.', "",
             "The seed paper compared its GAN with SRGAN, ESRGAN, Real-ESRGAN, SwinIR and ResShift by eye (its Figure 7).",
             "Here each is trained by medsr on the same data (train split of both data sets, paper protocol: HR 150x150,",
             "LR 50x50, x3), with the same wall-time budget on the same 2-core CPU, and all are tested on the same",
             "test split with the same degradation (antialiased bicubic). PSNR/SSIM/MS-SSIM after a 3 px border crop;",
             "fine detail = the share of the original's power above the LR Nyquist frequency (1 = as much as HR; see",
             "docs/RESULTS.md); ms per 512x512 = upscaling a 512x512 image to 1536x1536 as `medsr upscale` does on this CPU",
             f"(precision auto, its default tiles; {machine()}).", "",
             f"## Training (budget: {budget:g} min of wall time each, precision auto: bf16 where the CPU has it, batch 16)", "",
             "| model | recipe | architecture | steps | minutes |", "|---|---|---|---:|---:|",
             *[run_info(name) for name in TRAINED], "",
             "Reduced sizes (see each recipe) so that each architecture gets a fair number of steps in the budget.",
             "The perceptual term of srgan / esrgan / real-esrgan is the weight-free `ssim-grad` loss (MS-SSIM + image",
             "gradients), because medsr downloads no VGG19 weights; `--set perceptual_loss=vgg19 --set vgg_weights=PATH`",
             "switches to VGG19 features (see configs/). medsr's own network is here as `default-paper`, trained from scratch",
             "like the others (today's `default` continues from that model on native-resolution data, so it cannot start",
             "from scratch). The shipped `default-paper` and `paper` models were trained longer (docs/RESULTS.md); here",
             "they get the same budget as the others.", ""]
    DOCS.mkdir(parents=True, exist_ok=True)
    for modality in ("brain-mri", "chest-xray"):
        out = ROOT / "runs" / "comparison" / modality
        result = compare([str(DATA / modality)], models, out, limit=args.limit, n_figures=2)
        shutil.copy(out / "summary.png", DOCS / f"{modality}-summary.png")
        shutil.copy(out / "summary.csv", DOCS / f"{modality}-summary.csv")
        lines += [f"## {modality}, test split", "", result["table"], "",
                  f"![{modality} summary](comparison/{modality}-summary.png)", "",
                  "Columns: LR (nearest), each method, HR. Per image, with zoomed insets and |error| maps:", ""]
        for path in result["figures"]:
            shutil.copy(path, DOCS / f"{modality}-{path.name}")
            lines += [f"![{path.stem}](comparison/{modality}-{path.name})", ""]
    lines += mnist_section()
    doc = ROOT / "docs" / "COMPARISON.md"
    reading = doc.read_text().partition(READING)[2] if doc.is_file() else ""  # the hand-written reading is kept
    doc.write_text("\n".join(lines) + (f"\n{READING}{reading}" if reading else ""))
    print(f"wrote {ROOT / 'docs' / 'COMPARISON.md'}")


if __name__ == "__main__":
    main()
