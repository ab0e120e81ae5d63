"""Write docs/PERFORMANCE.md: every figure in it comes from the benchmark scripts, run here in one go
on this machine (named at the top), so that ratios compare figures of the same run.

    python benchmarks/make_performance.py [--reuse] [--quick] [--out FILE]

--quick runs only the default model's inference (no torch.compile) and the folder run (--workers 2,
no Ray), about 4 minutes, and --out writes elsewhere than docs/PERFORMANCE.md: for a short run on
another machine, such as two cores of a bigger one pinned by benchmarks/core_pair.sh.

Runs bench_infer.py (with bench_ceiling.py inside), int8_validation.py, bench_batch.py, bench_series.py,
bench_train.py and bench_onnx.py, each in its own process, and puts their Markdown together with
the text below. Takes about 15 minutes on a 2-core CPU; nothing else should run meanwhile.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT

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
brain MRI and chest X-ray. `auto` runs a model in int8 on CPUs with int8 units, and on CPUs with
AVX2 but no native bf16 (benchmarks/int8_here.py), when its int8 lost at most 0.05 dB against the calibrating CPU's float path
(fp32 for the shipped models) on the validation split (recorded in the model file when it shipped; next section), else in bf16
where native, else fp32 ("auto runs"). The profile and the ceiling share are of that float path.
The tile table (16 px of overlap until 2026-12-06, 20 now; since 2026-12-07 every row and precision timed in turns,
best of 3) is what medsr's default tiles
(`medsr.hardware.default_tile`) rest on: 512 LR pixels, so a 512x512 scan is one call, where the
AMD EPYC with AVX-512 ran 256 to 512 and one call alike within its run-to-run noise; 256 for bf16 on CPUs
with AMX, where 128 and 256 ran 1.3-1.6x faster than 512 or one call on the Xeon
(results/performance-amx.md; an earlier run there, on older code, gave 1.3-2x on 1024x1024).
The huge-pages table is torch's `THP_MEM_ALLOC_ENABLE` (PERFORMANCE.md's last section)."""),
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
# --quick: the scripts it runs, with their arguments
QUICK = {"bench_infer.py": ["--models", "default", "--no-compile"], "bench_batch.py": ["--no-ray", "--workers", "2"]}


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
    parser.add_argument("--quick", action="store_true", help="the default model's inference and the folder run only")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "PERFORMANCE.md")
    args = parser.parse_args()
    sections = [(title, [script[0], *QUICK[script[0]]], text) for title, script, text in SECTIONS if script[0] in QUICK] \
        if args.quick else SECTIONS
    bodies = []
    for _, script, _ in sections:
        started = time.perf_counter()
        bodies.append(run(script, args.reuse))
        print(f"{script[0]}: {time.perf_counter() - started:.0f} s", flush=True)
    measured_on = bodies[0].splitlines()[0]  # each script names its machine first: with --reuse, where they ran
    lines = ["# Performance", "", f"Made by `python benchmarks/make_performance.py{' --quick' if args.quick else ''}` (this file is its output) on:", "",
             f"**{measured_on}**", "",
             "Every figure below was measured in that one run; each section names the script that measured it.",
             "Machines change between sessions (AMD EPYC with AVX-512 BF16, Intel Sapphire Rapids with AMX, AMD EPYC",
             "with AVX2 only, Intel Xeon with AVX-512 VNNI and no bf16), so compare only figures from the same run.", ""]
    if not args.quick:
        lines += ["The same scripts on an Intel Xeon with AMX (two pinned cores of a 16-core server, torch 2.11), the default",
                  "model only: [results/performance-amx.md](results/performance-amx.md), made by",
                  "`bash benchmarks/core_pair.sh python benchmarks/make_performance.py --quick --out docs/results/performance-amx.md`",
                  "on 2026-11-30. Unlike now, that run had torch's huge pages on (THP_MEM_ALLOC_ENABLE=1) for every figure, its",
                  "matrix-multiply peak was one size's (2048^3), and its single-layer bf16 timings converted a float32 input in",
                  "each call, so its \"body layer alone\" figures read low. Its PSNR columns are n/a: the data sets were not on",
                  "that machine (they are below). The page was put together again with `--reuse` from that run's saved output,",
                  "so its prose is today's, and its huge-pages rows were relabelled (medsr leaves huge pages off now).", "",
                  "On an AMD EPYC without AVX-512 (AVX2 only: no native bf16, no VNNI; 2 cores, torch 2.13), the default",
                  "model only: [results/performance-avx2.md](results/performance-avx2.md), made on 2026-12-06 by",
                  "`python benchmarks/make_performance.py --quick --out docs/results/performance-avx2.md`; there `auto` runs",
                  "int8 in place of fp32, and the shipped int8 calibrations lose what they lose with VNNI",
                  "([results/int8-avx2.md](results/int8-avx2.md), `python benchmarks/int8_here.py`).", "",
                  "On an Intel Xeon with AVX-512 and VNNI but no native bf16 and no AMX (2 cores, torch 2.13), the default",
                  "model only: [results/performance-avx512-vnni.md](results/performance-avx512-vnni.md), made on 2026-12-07 by",
                  "`python benchmarks/make_performance.py --quick --out docs/results/performance-avx512-vnni.md`; there `auto` runs",
                  "int8, 3.2x faster than fp32 on one 512x512 scan.", "",
                  "On an Intel Xeon with AMX as a 2-core machine of its own (torch 2.13), the default model only:",
                  "[results/performance-amx-2core.md](results/performance-amx-2core.md), made on 2026-12-07 by",
                  "`python benchmarks/make_performance.py --quick --out docs/results/performance-amx-2core.md`; there `auto` runs int8,",
                  "0.13 s for one 512x512 scan against 0.17 s in bf16 and 0.71 s in fp32. Its tile table ranks 512-px tiles a little",
                  "above 256-px ones for bf16 (0.78 against 0.85 s on 1024x1024; 0.83 against 0.97 s in an earlier run), the reverse",
                  "of the server's above (torch 2.11, huge pages on); medsr's bf16 tile on AMX stays 256 until the two machines agree.", ""]
    for (title, script, text), body in zip(sections, bodies):
        lines += [f"## {title}", "", f"`python benchmarks/{' '.join(script)}`", "", text, "", body, ""]
    lines += [] if args.quick else ["## Tried and not shipped, or not tried", "",
              "- TorchScript freezing: slower than eager (above). torch.compile: measured above; whatever it gains per call has",
              "  to repay its compile time first, and medsr does not use it (yet).",
              "- Other channel counts: the ceiling table gives the body convolution's throughput at 32, 48 and 64 channels; the",
              "  default keeps 48 (its retrained weights depend on it).",
              "- int8 (VNNI / AMX-INT8) for models whose int8 loses more than 0.05 dB on the validation split (`large`):",
              "  `--precision int8` only, `auto` keeps them in bf16 (fp32 where bf16 is not native).",
              "- Transparent huge pages for torch's large buffers (`THP_MEM_ALLOC_ENABLE=1`, read by torch as it loads): measured",
              "  above. medsr leaves torch's default (off): on the AMX server (results/performance-amx.md) its bf16 and int8 paths",
              "  ran slower with it, though fp32 ran faster on both CPUs; set it in the environment for fp32 runs.",
              "- Smaller tiles for int8 and fp32 on AMX CPUs: bf16 runs in 256-px tiles there (above); int8, which `auto` runs",
              "  for the default there, and fp32 keep 512 until the tile table's int8 and fp32 columns are measured on such a CPU",
              "  (the AMX runs so far timed bf16 tiles only).", ""]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
