"""PyTorch vs onnxruntime: a 512x512 image upscaled x3 (to 1536x1536) by the default model, untiled,
median of a few runs; then the largest ONNX - PyTorch (fp32) difference on whole real images.

    python benchmarks/bench_onnx.py [--model default] [--runs 5] [--images 6]
"""

import argparse
import os
import statistics
import time

import numpy as np
import torch
from common import DATA, machine, timed

from medsr import hardware, zoo
from medsr.inference.onnx import onnx_bytes
from medsr.inference.upscaler import OnnxUpscaler, Upscaler
from medsr.io import read_image


def median_seconds(fn, runs: int) -> float:
    fn()  # warm-up: oneDNN / onnxruntime pick their kernels on the first call
    return statistics.median(timed(fn, repeats=1, warmup=0) for _ in range(runs))


def real_images(count: int) -> list:
    """`count` real scans: brain MRI, chest X-ray and DICOM files in equal shares."""
    groups = [sorted((DATA / "brain-mri" / "glioma").glob("*.jpg")), sorted((DATA / "chest-xray" / "NORMAL").glob("*.jpeg")),
              [DATA / "dicom" / name for name in ("chest-cr-siim.dcm", "shoulder-mr-MR2_UNCR.dcm", "head-mr-flair-implicit.dcm")]]
    per_group = -(-count // len(groups))
    return [path for group in groups for path in group[:per_group]][:count]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", type=int, default=6)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    generator, meta = zoo.load(args.model)
    scale = int(meta["medsr_scale"])
    start = time.perf_counter()
    model_bytes = onnx_bytes(generator, meta, args.model)
    export_seconds = time.perf_counter() - start
    import onnxruntime

    print(f"{machine()}; onnxruntime {onnxruntime.__version__}; load average before: {os.getloadavg()[0]:.1f}\n")
    runtimes = {"PyTorch fp32": Upscaler(generator, scale, cpu, "fp32", tile=0)}
    if hardware.cpu_has_fast_bf16():
        runtimes["PyTorch bf16"] = Upscaler(generator, scale, cpu, "bf16", tile=0)
    runtimes["onnxruntime fp32"] = OnnxUpscaler(model_bytes, scale, "cpu", tile=0)
    lr = np.random.default_rng(0).random((512, 512), dtype=np.float32)
    seconds = {name: median_seconds(lambda up=up: up.upscale(lr), args.runs) for name, up in runtimes.items()}
    print(f"{args.model}, 512x512 -> {512 * scale}x{512 * scale}, median of {args.runs} runs (export to ONNX: {export_seconds:.1f} s)\n")
    print("| runtime | seconds | vs PyTorch fp32 |\n|---|---:|---:|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.2f} | {seconds['PyTorch fp32'] / value:.2f}x |")
    if not DATA.is_dir():
        print(f"\n(no real images: {DATA} not found)")
        return
    # Whole images, tiled as `medsr upscale` runs them (medsr.settings.TILE), both runtimes in fp32.
    torch_up = Upscaler(generator, scale, cpu, "fp32")
    onnx_up = OnnxUpscaler(model_bytes, scale, "cpu")
    print("\n| image | size | max abs diff ([0, 1]) | mean abs diff |\n|---|---|---:|---:|")
    worst = 0.0
    for path in real_images(args.images):
        pixels = read_image(path).pixels
        diff = np.abs(onnx_up.upscale(pixels) - torch_up.upscale(pixels))
        worst = max(worst, float(diff.max()))
        print(f"| {path.parent.name}/{path.name} | {'x'.join(map(str, pixels.shape))} | {diff.max():.2e} | {diff.mean():.1e} |")
    print(f"\nlargest difference: {worst:.2e} in [0, 1] units ({worst * 255:.4f} of an 8-bit level)")


if __name__ == "__main__":
    main()
