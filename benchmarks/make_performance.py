"""Write docs/PERFORMANCE.md: every figure in it comes from the benchmark scripts, run here in one go
on this machine (named at the top), so that ratios compare figures of the same run.

    python benchmarks/make_performance.py [--reuse]

Runs bench_infer.py (with bench_ceiling.py inside), int8_validation.py, bench_batch.py, bench_series.py,
bench_train.py and bench_onnx.py, each in its own process, and puts their Markdown together with
the text below. Takes about 15 minutes on a 2-core CPU; nothing else should run meanwhile.
"""

import argparse
import subprocess
import sys
import time

from common import ROOT, machine

SECTIONS = [
    ("Inference: the ceiling, the models, tiles, torch.compile", ["bench_infer.py"], """\
The ceiling is what this CPU does on one matrix multiply and on the default model's own layer
shapes, measured in the same run; the model's convolutions are then given as a share of it.
"fp32, old layout" is fp32 as medsr ran it until 2026-11-29: the model contiguous while its input
was channels_last, so oneDNN converted layouts at every layer. Now model and input are both
channels_last in every precision, so the fp32 column is a fair baseline for the bf16 one. "old
layout" is built once outside the timed calls, as the others are, and a model's paths are timed
in turns (best of 5 each), so that a slow spell of this shared host does not fall on one alone. int8 is `--precision int8`
(medsr.models.int8): the residual body in int8 through oneDNN's VNNI / AMX kernels, calibrated on
train-split images when the model shipped. The PSNR columns are over test images spread evenly over
brain MRI and chest X-ray. `auto` runs a model in int8 on CPUs with int8 units when its int8 lost at
most 0.05 dB against bf16 on the validation split (recorded in the model file when it shipped;
next section), else in bf16 ("auto runs"). The profile and the ceiling share are of the bf16 path.
The tile table is what `medsr.settings.TILE` (512) rests on: 256 to 512 and one untiled call are
alike within this host's run-to-run noise, 128 is slower; 512 makes a 512x512 scan one call."""),
    ("int8: its set-up, chosen on the validation split", ["int8_validation.py"], """\
The calibration shipped with the default models against each of its two ideas left out and
against more calibration images; PSNR change from bf16 on validation images. Equalization scales
the channels between each block's two convs to one range (the same function in float), so one
int8 scale fits them all; the onednn backend runs each block's second conv and its residual
addition as one int8 op, one rounding fewer."""),
    ("Whole runs: `medsr upscale` on a folder", ["bench_batch.py"], """\
40 synthetic 512x512 PNGs upscaled x3 with the default model, one `medsr upscale` call per row in
one process (model loading included, Python start-up not). `--workers` threads read ahead and
write behind while the model runs. `--streams 2` (the default on a CPU with 2 or more threads)
upscales two files at once, each on half the threads; `--streams 1` is one file at a time on all
of them, as medsr ran before 2026-11-29. The outputs are the same bytes either way (tests/test_batch.py).
The marginal time is what one more image costs in a long run. The one-thread table is the floor:
what one image costs in CPU-seconds, step by step, and so the least marginal time this machine's
cores allow with every core busy. PNGs are written at zlib level 1 with run-length matching:
lossless like every setting, much faster than Pillow's default level 6, for somewhat larger files."""),
    ("A DICOM series", ["bench_series.py"], """\
A synthetic 130-slice 256x256 series (nilearn's MNI152 template, written as DICOM) upscaled x3
in-plane as one job, then read back by dcm2niix."""),
    ("Training throughput", ["bench_train.py"], """\
Both loops consume the same pre-made batches, so the speed-up is compute only; what making the
batches costs is in its own columns. "convs upsampler (before)" is the default recipe as it trained
until 2026-11-29; it now trains EDSR's "fused" upsampler (one 5x5 conv on the LR grid and a pixel
shuffle, the same linear map as two convs on 432 channels and the tail; medsr.models.edsr)."""),
    ("ONNX runtime", ["bench_onnx.py"], """\
The default model in PyTorch (fp32, bf16) and onnxruntime (fp32, exported in memory), and the
largest difference between the runtimes on whole real images."""),
]


def run(script: list[str], reuse: bool) -> str:
    """The script's Markdown output, kept in runs/performance/ so that --reuse can take it after a later script failed."""
    saved = ROOT / "runs" / "performance" / f"{script[0]}.md"
    if reuse and saved.is_file():
        return saved.read_text()
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script[0]), *script[1:]], capture_output=True, text=True,
                         cwd=ROOT / "benchmarks")
    if out.returncode != 0:
        raise SystemExit(f"{script[0]} failed:\n{out.stderr[-2000:]}")
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(out.stdout.strip())
    return out.stdout.strip()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reuse", action="store_true", help="take each script's output from runs/performance/ where an earlier "
                        "call of this run left it (same machine, minutes apart), and run only the missing ones")
    args = parser.parse_args()
    lines = ["# Performance", "", "Made by `python benchmarks/make_performance.py` (this file is its output) on:", "",
             f"**{machine()}**", "",
             "Every figure below was measured in that one run; each section names the script that measured it.",
             "Machines change between sessions (AMD EPYC with AVX-512 BF16, Intel Sapphire Rapids with AMX), so",
             "compare only figures from the same run.", ""]
    for title, script, text in SECTIONS:
        started = time.perf_counter()
        body = run(script, args.reuse)
        lines += [f"## {title}", "", f"`python benchmarks/{' '.join(script)}`", "", text, "", body, ""]
        print(f"{script[0]}: {time.perf_counter() - started:.0f} s", flush=True)
    lines += ["## Tried and not shipped, or not tried", "",
              "- TorchScript freezing: slower than eager (above). torch.compile: measured above; whatever it gains per call has",
              "  to repay its compile time first, and medsr does not use it (yet).",
              "- Other channel counts: the ceiling table gives the body convolution's throughput at 32, 48 and 64 channels; the",
              "  default keeps 48 (its retrained weights depend on it).",
              "- int8 (VNNI / AMX-INT8) for models whose int8 loses more than 0.05 dB on the validation split (`large`):",
              "  `--precision int8` only, `auto` keeps them in bf16.", ""]
    (ROOT / "docs" / "PERFORMANCE.md").write_text("\n".join(lines))
    print(f"wrote {ROOT / 'docs' / 'PERFORMANCE.md'}")


if __name__ == "__main__":
    main()
