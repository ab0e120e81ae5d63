"""Inference speed of the shipped models, against the machine's own ceiling measured in the same run.

- per model, a 512x512 image upscaled x3 to 1536x1536 in one call: fp32 as medsr ran it until
  2026-11-29 (model contiguous, input channels_last: a layout conversion at every layer), fp32 and
  bf16 as medsr runs them now (both channels_last; bf16 only where the CPU has it natively), and
  int8 (--precision int8: the residual body in int8, medsr.models.int8) for the models calibrated
  for it; the test-split PSNR change bf16 brings over fp32 (paper protocol) and int8 over the float
  path (bf16 where native, else fp32; paper and native protocols), on test images spread evenly
  over brain MRI and chest X-ray. A model's paths are timed in turns, best of 5 each, so a slow
  spell of the host does not fall on one of them alone;
- where the default model's time goes (torch.profiler) and its convolutions' throughput as a share
  of the float path's matrix-multiply peak and of the same layer alone (benchmarks/bench_ceiling.py);
- the default model with torch's large buffers in transparent huge pages (THP_MEM_ALLOC_ENABLE=1, an
  opt-in of torch's) and without (torch's default, as medsr runs), each in fresh processes taken in
  turns, since torch reads the setting as it loads;
- tile sizes on a 512x512 and a 1024x1024 image (the float path and int8), and two ways to fuse
  the elementwise work into the convolutions (TorchScript freezing, torch.compile) against eager.

    python benchmarks/bench_infer.py [--models default,large,default-gan,paper] [--images 40] [--no-compile]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import bench_ceiling
import numpy as np
import torch
from common import DATA, FLOAT, FLOATS, best_of, best_of_interleaved, machine

from medsr import hardware, metrics, zoo
from medsr.data import degrade, load_arrays, scan, select, spread
from medsr.inference.upscaler import Upscaler
from medsr.io.types import as_unit
from medsr.settings import TILE_OVERLAP

CPU = torch.device("cpu")
TILES = (0, 128, 256, 384, 512)
PATHS = (*FLOATS, "int8")  # the default model's paths


def smooth_image(side: int, seed: int = 0) -> np.ndarray:
    """Timing input: speed does not depend on content, but a smooth image is a fair stand-in for a scan."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 1, side // 16, side // 16), dtype=np.float32))
    return torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic").clamp(0, 1)[0, 0].numpy()


def test_pairs(count: int, protocol: str) -> list:
    items = select(scan([DATA / "brain-mri", DATA / "chest-xray"]), "test")
    arrays, _ = load_arrays(spread(items, count))
    return [degrade.make_pair(as_unit(a)[0], protocol, 3) for a in arrays]


def mean_psnr(upscaler: Upscaler, pairs: list) -> float:
    return float(np.mean([metrics.psnr(torch.from_numpy(upscaler.upscale(lr))[None, None], torch.from_numpy(hr)[None, None], 3).item()
                          for lr, hr in pairs]))


def old_fp32(model) -> Upscaler:
    """fp32 as shipped before: the model left contiguous while its input is channels_last. Built
    once, outside the timed calls, as the new paths are."""
    up = Upscaler(model, 3, CPU, "fp32", tile=0)
    up.model = up.model.to(memory_format=torch.contiguous_format)
    return up


def cell(value: float, suffix: str = "") -> str:
    """A table cell to two decimals ("x" after a ratio), or "n/a" where the path was not run."""
    return "n/a" if np.isnan(value) else f"{value:.2f}{suffix}"


def conv_flops(model: torch.nn.Module, side: int, kind: type = torch.nn.Conv2d) -> float:
    """FLOPs of the fused default model's convolutions of class `kind` (the float ones, or the int8
    ones, torch.ao.nn.quantized.Conv2d) on a side x side LR input (all on the LR grid; the unfused
    layers kept for the border strips, `.original`, are left out: ~2 % of the work)."""
    return sum(2 * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * side * side
               for name, m in model.named_modules() if isinstance(m, kind) and ".original" not in name)


def profile(upscaler: Upscaler, image: np.ndarray) -> dict[str, float]:
    """Self CPU seconds by operator for one call."""
    upscaler.upscale(image)
    with torch.profiler.profile() as prof:
        upscaler.upscale(image)
    return {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}


def default_paths(image: np.ndarray) -> dict[str, float]:
    """Seconds per call of the default model's fp32, bf16 (where native) and int8 paths on `image`, in turns, best of 3."""
    model = zoo.load("default")[0]
    runs = {p: Upscaler(model, 3, CPU, p, tile=0) for p in PATHS}
    return best_of_interleaved({p: lambda u=u: u.upscale(image) for p, u in runs.items()}, 3)


def huge_pages(rounds: int = 2) -> str:
    """A Markdown table: the default model's paths with huge pages off and on, fresh processes in turns."""
    best = {}
    for _ in range(rounds):
        for value in ("0", "1"):
            out = subprocess.run([sys.executable, __file__, "--default-paths"], env={**os.environ, "THP_MEM_ALLOC_ENABLE": value},
                                 capture_output=True, text=True, check=True)
            for path, seconds in json.loads(out.stdout.splitlines()[-1]).items():
                best[value, path] = min(seconds, best.get((value, path), float("inf")))
    kernel = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = kernel.read_text().strip() if kernel.is_file() else "unknown"
    rows = [f"| THP_MEM_ALLOC_ENABLE={value} ({label}) | " + " | ".join(f"{best[value, p]:.2f}" for p in PATHS) + " |"
            for value, label in (("0", "torch's default, as medsr runs"), ("1", "opt-in"))]
    gain = " | ".join(f"{best['0', p] / best['1', p]:.2f}x" for p in PATHS)
    return (f"\nHuge pages for torch's large buffers, default model, 512x512 (best of {rounds} processes x 3 calls each; "
            f"kernel's transparent_hugepage: `{mode}`):\n\n| setting | " + " | ".join(f"{p} (s)" for p in PATHS) + " |\n|---|"
            + "---:|" * len(PATHS) + "\n" + "\n".join(rows) + f"\n| speed-up | {gain} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="default,large,default-gan,paper")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--default-paths", action="store_true", help="only time the default model's paths (JSON); for huge_pages")
    args = parser.parse_args()
    if args.default_paths:
        print(json.dumps(default_paths(smooth_image(512))))
        return
    print(f"{machine()}\n")
    ceiling = bench_ceiling.measure()
    print(bench_ceiling.markdown(ceiling), "\n")
    image = smooth_image(512)
    pairs = {p: test_pairs(args.images, p) for p in ("paper", "native")} if DATA.is_dir() else None

    def delta(a: Upscaler, b: Upscaler, protocol: str) -> str:
        return f"{mean_psnr(a, pairs[protocol]) - mean_psnr(b, pairs[protocol]):+.3f}" if pairs else "n/a"

    count = len(pairs["paper"]) if pairs else 0
    print(f"| model | fp32, old layout (s) | fp32 (s) | bf16 (s) | int8 (s) | fp32 speed-up | bf16 vs fp32 | int8 vs {FLOAT} | "
          f"bf16 - fp32 test PSNR, paper (dB) | int8 - {FLOAT} test PSNR, paper / native (dB) | auto runs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in args.models.split(","):
        model = zoo.load(name)[0]
        runs = {p: Upscaler(model, 3, CPU, p, tile=0) for p in (*FLOATS, *(("int8",) if hasattr(model, "int8_calibration") else ()))}
        if name == "default":
            runs["old"] = old_fp32(model)
        seconds = best_of_interleaved({p: lambda u=u: u.upscale(image) for p, u in runs.items()}, 5)
        old, bf16, int8 = (seconds.get(p, float("nan")) for p in ("old", "bf16", "int8"))
        int8_delta = "n/a"
        if "int8" in runs:
            int8_delta = f"{delta(runs['int8'], runs[FLOAT], 'paper')} / {delta(runs['int8'], runs[FLOAT], 'native')}"
        print(f"| {name} | {cell(old)} | {seconds['fp32']:.2f} | {cell(bf16)} | {cell(int8)} | "
              f"{cell(old / seconds['fp32'], 'x')} | {cell(seconds['fp32'] / bf16, 'x')} | {cell(seconds[FLOAT] / int8, 'x')} | "
              f"{delta(runs['bf16'], runs['fp32'], 'paper') if 'bf16' in runs else 'n/a'} | "
              f"{int8_delta} | {Upscaler(model, 3, CPU, 'auto', tile=0).precision} |", flush=True)
    print(f"\n(PSNR changes over {count} test images per protocol.)")

    default = Upscaler(zoo.load("default")[0], 3, CPU, FLOAT, tile=0)
    by_op = profile(default, image)
    total, conv = sum(by_op.values()), by_op.get("aten::mkldnn_convolution", 0.0)
    flops = conv_flops(default.model, 512)
    body = ceiling["conv"]["body conv 48->48 3x3 (x17)"][FLOAT]
    print(f"\nDefault model, {FLOAT}, one 512x512 call, profiled: {total:.3f} s of operator time, convolutions {conv:.3f} s "
          f"({100 * conv / total:.0f} %); the rest: " + ", ".join(f"{k.removeprefix('aten::')} {v * 1000:.0f} ms" for k, v in
                                                                 sorted(by_op.items(), key=lambda kv: -kv[1])[1:6]))
    print(f"Convolutions: {flops / 1e9:.0f} GFLOP in {conv:.3f} s = {flops / conv / 1e9:.0f} GFLOP/s, "
          f"{100 * flops / conv / 1e9 / ceiling['matmul'][FLOAT]:.0f} % of the {FLOAT} matrix-multiply peak and "
          f"{100 * flops / conv / 1e9 / body:.0f} % of the body layer alone ({FLOAT}). At the peak, these convolutions alone "
          f"would need {flops / 1e9 / ceiling['matmul'][FLOAT]:.3f} s: the least a 512x512 image can take in {FLOAT} on this CPU.")

    quantized = Upscaler(default.model, 3, CPU, "int8", tile=0)
    by_op = profile(quantized, image)
    total = sum(by_op.values())
    int8_conv = sum(v for k, v in by_op.items() if k.startswith("quantized::conv2d"))
    ops = conv_flops(quantized.model, 512, torch.ao.nn.quantized.Conv2d)
    print(f"\nDefault model, int8, one 512x512 call, profiled: {total:.3f} s of operator time, int8 convolutions {int8_conv:.3f} s "
          f"({100 * int8_conv / total:.0f} %); the rest: " + ", ".join(
              [f"{k.removeprefix('aten::')} {v * 1000:.0f} ms" for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])
               if not k.startswith("quantized::conv2d")][:5]))
    print(f"int8 convolutions: {ops / 1e9:.0f} GOP in {int8_conv:.3f} s = {ops / int8_conv / 1e9:.0f} GOP/s, "
          f"{100 * ops / int8_conv / 1e9 / ceiling['int8'][48]:.0f} % of the int8 body layer alone.")

    print(huge_pages(), flush=True)

    big = smooth_image(1024, seed=1)
    print(f"\n| tile (LR px, {TILE_OVERLAP} px overlap) | 512x512, {FLOAT} (s) | 512x512, int8 (s) | 1024x1024, {FLOAT} (s) | "
          f"1024x1024, int8 (s) |\n|---|---:|---:|---:|---:|")
    # every tile size and precision in turns, so that a slow spell of a shared host does not fall on one row alone
    runs = {(tile, p): Upscaler(default.model, 3, CPU, p, tile=tile) for tile in TILES for p in (FLOAT, "int8")}
    small = best_of_interleaved({key: lambda u=u: u.upscale(image) for key, u in runs.items()}, 3)
    large = best_of_interleaved({key: lambda u=u: u.upscale(big) for key, u in runs.items()}, 3)
    for tile in TILES:
        print(f"| {tile or 'none (one call)'} | {small[tile, FLOAT]:.2f} | {small[tile, 'int8']:.2f} | {large[tile, FLOAT]:.2f} | "
              f"{large[tile, 'int8']:.2f} |", flush=True)
    print(f"\nmedsr's default tile on this CPU (medsr.hardware.default_tile): {hardware.default_tile(CPU, FLOAT)} in {FLOAT}, "
          f"{hardware.default_tile(CPU, 'int8')} in int8.")

    frozen = Upscaler(default.model, 3, CPU, FLOAT, tile=0)
    example = torch.zeros(1, 1, 512, 512).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=frozen.dtype is not None):
        # TorchScript freezing hands the graph to oneDNN's fusion passes (conv + ReLU, conv + add as post-ops)
        frozen.model = torch.jit.freeze(torch.jit.trace(frozen.model, example, check_trace=False))
    print(f"\nTraced and frozen (TorchScript, oneDNN fusion), 512x512, {FLOAT}: {best_of(lambda: frozen.upscale(image), 3):.2f} s; "
          f"eager {best_of(lambda: default.upscale(image), 3):.2f} s.")

    if not args.no_compile:
        compiled = Upscaler(default.model, 3, CPU, FLOAT, tile=0)
        compiled.model = torch.compile(compiled.model)
        start = time.perf_counter()
        try:
            compiled.upscale(image)
        except Exception as err:  # noqa: BLE001 - report whatever stops the compiler
            print(f"\ntorch.compile failed: {type(err).__name__}: {str(err).splitlines()[0]}")
            return
        first = time.perf_counter() - start
        print(f"\ntorch.compile (inductor, default mode), 512x512, {FLOAT}: first call {first:.1f} s, then "
              f"{best_of(lambda: compiled.upscale(image), 3):.2f} s per call; eager {best_of(lambda: default.upscale(image), 3):.2f} s.")


if __name__ == "__main__":
    main()
