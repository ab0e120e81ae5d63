"""Write docs/RESULTS.md: shipped models vs nearest/bicubic/Lanczos on the test split of each
modality, under the paper and native protocols, and the issue's quality bar checked against them.

    python benchmarks/make_results.py [--models default,default-gan,paper] [--limit N]
"""

import argparse
import time

import torch
from common import DATA, ROOT

from medsr import hardware, zoo
from medsr.evaluation import quality, report
from medsr.inference.upscaler import Upscaler

MODELS = "default,default-gan,paper"
# (model, protocol, modality) -> least PSNR gain over bicubic in dB
PSNR_BAR = {("default", "paper", "brain-mri"): 2.5, ("default", "paper", "chest-xray"): 1.5,
            ("default", "native", "brain-mri"): 0.5, ("default", "native", "chest-xray"): 0.5}
HF_RATIO_TEXT = """\
**Fine detail (HF ratio)**: the power an image has above the LR image's Nyquist frequency (detail
a 3x smaller image cannot hold, so the method had to restore it), as a share of the original's
(`medsr.metrics.hf_energy_ratio`). 1.0 is as much fine detail as the original; bicubic is far
below. A PSNR-trained network predicts the average of all plausible details, which is smooth, so
its ratio stays low; an adversarial model is trained to make its output indistinguishable from
real scans, and real scans have this texture. The ratio counts detail, not whether it is the right
detail: read it beside PSNR and SSIM. We use it rather than LPIPS or NIQE because those need
ImageNet-trained networks or natural-image statistics that medsr cannot download and that were
never fitted to grayscale medical images, while the spectrum needs no model at all.
"""


def bar_lines(results: dict) -> list[str]:
    """The issue's bar, each line checked against the measured summaries."""
    lines = ["## Quality bar", "", "| check | measured | bar | met |", "|---|---:|---:|:---:|"]
    for (model, protocol, modality), least in PSNR_BAR.items():
        by_name = results.get((modality, protocol), {})
        if model in by_name:
            gain = by_name[model]["psnr"] - by_name["bicubic"]["psnr"]
            lines.append(f"| {model} PSNR − bicubic, {modality}, {protocol} | {gain:+.2f} dB | ≥ {least:+.1f} dB | {'yes' if gain >= least else 'no'} |")
            ssim, ssim_bic = by_name[model]["ssim"], by_name["bicubic"]["ssim"]
            lines.append(f"| {model} SSIM, {modality}, {protocol} | {ssim:.4f} | > {ssim_bic:.4f} (bicubic) | {'yes' if ssim > ssim_bic else 'no'} |")
    for (modality, protocol), by_name in results.items():
        if "default-gan" in by_name and "default" in by_name:
            gan, default, bicubic = by_name["default-gan"], by_name["default"], by_name["bicubic"]
            lines.append(f"| default-gan PSNR − bicubic, {modality}, {protocol} | {gan['psnr'] - bicubic['psnr']:+.2f} dB | ≥ 0 | "
                         f"{'yes' if gan['psnr'] >= bicubic['psnr'] else 'no'} |")
            closer = abs(gan["hf_ratio"] - 1) < abs(default["hf_ratio"] - 1)
            lines.append(f"| default-gan HF ratio closer to 1 than default, {modality}, {protocol} | {gan['hf_ratio']:.3f} "
                         f"| default {default['hf_ratio']:.3f} | {'yes' if closer else 'no'} |")
    return lines + [""]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    methods = [quality.Method(name) for name in quality.BASELINES]
    for name in args.models.split(","):
        model, meta = zoo.load(name)
        methods.append(quality.Method(name, Upscaler(model, int(meta["medsr_scale"]), cpu, "auto", tile=0)))
    command = "python benchmarks/make_results.py" + (f" --models {args.models}" if args.models != MODELS else "") + \
        (f" --limit {args.limit}" if args.limit else "")
    lines = ["# Results", "", f"Produced by `{command}` (test split, x3, "
             f"precision {'bf16' if hardware.cpu_has_fast_bf16() else 'fp32'}; {time.strftime('%Y-%m-%d')}).",
             "PSNR and SSIM after a border crop of 3 px; data range of the images' bit depth (8-bit here).",
             "paper protocol: HR = centre square resized to 150x150, LR 50x50; native protocol: HR at the image's",
             "own resolution, centre-cropped to at most 1500 px, LR = HR / 3. Both LR by antialiased bicubic.",
             "Models: see their cards in src/medsr/zoo/ (`medsr models`); `paper` had 10 of its recipe's 50 epochs (docs/PAPER.md).",
             "", HF_RATIO_TEXT]
    results, tables = {}, []
    for modality in ("brain-mri", "chest-xray"):
        for protocol in ("paper", "native"):
            rows = quality.evaluate([str(DATA / modality)], methods, 3, protocol, "test", args.limit)
            summary = quality.summarize(rows)
            report.write_reports(rows, summary, ROOT / "docs" / "results" / f"{modality}-{protocol}",
                             {"data": modality, "protocol": protocol, "split": "test", "scale": 3})
            results[modality, protocol] = {row["method"]: row for row in summary}
            tables += [f"## {modality}, {protocol} protocol", "", quality.markdown_table(summary), ""]
            print(tables[-3], tables[-2], sep="\n")
    lines += bar_lines(results) + tables
    fidelity = ROOT / "docs" / "results" / "fidelity.md"  # made by benchmarks/make_fidelity.py
    if fidelity.is_file():
        lines += [fidelity.read_text()]
    (ROOT / "docs" / "RESULTS.md").write_text("\n".join(lines))
    print(f"wrote {ROOT / 'docs' / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
