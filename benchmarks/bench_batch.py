"""Batch throughput: `medsr upscale` over a folder of synthetic 512x512 8-bit PNGs with the default
model (x3, to 1536x1536), files/s with 0, 1 and 2 I/O threads (--workers), and the time of a
resume pass that finds every output complete and skips it.

    python benchmarks/bench_batch.py [--files 40] [--workers 0,1,2]

Each timing is one whole `medsr upscale` call in this process (model loading included, Python and
torch start-up not), after a 2-file warm-up run.
"""

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import common  # noqa: F401 - sets MEDSR_DATA like every benchmark
import numpy as np
import torch
from PIL import Image

from medsr import cli, hardware


def synthetic_scan(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """Smooth shapes plus a little noise: compresses like a real scan, unlike pure noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.3 + 0.2 * np.sin(xx * rng.uniform(3, 9)) * np.cos(yy * rng.uniform(3, 9))
    for _ in range(6):
        cy, cx, r = rng.uniform(0.2, 0.8, 3) * (1, 1, 0.3)
        img += 0.25 * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)
    img += rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def upscale(args: list[str]) -> float:
    """Seconds for one `medsr upscale` call; its per-file lines are swallowed."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["upscale", *args])
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"medsr upscale {' '.join(args)} exited with {code}")
    return seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--workers", default="0,1,2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.files):
            Image.fromarray(synthetic_scan(rng)).save(src / f"scan_{i:04d}.png")
        upscale([str(src / "scan_0000.png"), str(src / "scan_0001.png"), "-o", str(Path(tmp) / "warmup")])
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {hardware.cpu_has_fast_bf16()}, "
              f"{args.files} files of 512x512 -> 1536x1536, default model, --precision auto\n")
        print("| run | seconds | files/s |\n|---|---:|---:|")
        for workers in args.workers.split(","):
            out = Path(tmp) / f"out-{workers}"
            seconds = upscale([str(src), "-o", str(out), "--workers", workers])
            print(f"| --workers {workers} | {seconds:.1f} | {args.files / seconds:.2f} |", flush=True)
        seconds = upscale([str(src), "-o", str(out), "--workers", workers])
        print(f"| resume, all complete (--workers {workers}) | {seconds:.2f} | {args.files / seconds:.0f} |")


if __name__ == "__main__":
    main()
