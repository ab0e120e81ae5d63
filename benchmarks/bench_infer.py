"""Inference latency: a 512x512 image upscaled x3 (to 1536x1536), fp32 vs bf16, per model.
Also the PSNR cost of bf16: mean test-split PSNR (paper protocol) in bf16 minus fp32.

    python benchmarks/bench_infer.py [--models default,default-gan,paper] [--images 40]
"""

import argparse

import numpy as np
import torch
from common import DATA, timed

from medsr import hardware, metrics, zoo
from medsr.data import degrade, load_arrays, scan, select
from medsr.inference.upscaler import Upscaler
from medsr.io.types import as_unit
from medsr.models import create_generator


def model_by_name(name):
    if name in zoo.shipped_models():
        return zoo.load(name)[0]
    return create_generator(name, scale=3).eval()  # untrained: timing only


def test_psnr(upscaler, pairs):
    return float(np.mean([metrics.psnr(torch.from_numpy(upscaler.upscale(lr))[None, None], torch.from_numpy(hr)[None, None], 3).item()
                          for lr, hr in pairs]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="default,default-gan,paper")
    parser.add_argument("--images", type=int, default=40)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    lr = np.random.default_rng(0).random((512, 512), dtype=np.float32)
    pairs = None
    if DATA.is_dir():
        arrays, _ = load_arrays(select(scan([DATA / "brain-mri", DATA / "chest-xray"]), "test"), args.images)
        pairs = [degrade.make_pair(as_unit(a)[0], "paper", 3) for a in arrays]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {hardware.cpu_has_fast_bf16()}\n")
    print("| model | fp32 (s) | bf16 (s) | speed-up | bf16 - fp32 test PSNR (dB) |\n|---|---:|---:|---:|---:|")
    for name in args.models.split(","):
        model = model_by_name(name)
        seconds, psnr = {}, {}
        for precision in ("fp32", "bf16"):
            up = Upscaler(model, 3, cpu, precision, tile=0)
            seconds[precision] = timed(lambda: up.upscale(lr), repeats=3, warmup=1)
            if pairs and name in zoo.shipped_models():
                psnr[precision] = test_psnr(up, pairs)
        delta = f"{psnr['bf16'] - psnr['fp32']:+.3f} ({len(pairs)} images)" if psnr else "n/a (untrained)"
        print(f"| {name} | {seconds['fp32']:.2f} | {seconds['bf16']:.2f} | {seconds['fp32'] / seconds['bf16']:.1f}x | {delta} |")


if __name__ == "__main__":
    main()
