"""How int8 is set up (`--precision int8`), chosen on the VALIDATION split: the shipped calibration
(benchmarks/calibrate_int8.py: 16 train-split files, equalized blocks, the onednn backend's fused
conv + residual addition) against each of its ideas left out and against more calibration images,
each as PSNR change from bf16 (fp32 on CPUs without it). The
test-split change and the speed of the shipped choice are in bench_infer.py.

    python benchmarks/int8_validation.py [--limit 48]
"""

import argparse

import torch
from calibrate_int8 import calibration_images
from common import DATA, FLOAT, machine

from medsr import zoo
from medsr.evaluation import quality
from medsr.inference.upscaler import Upscaler
from medsr.models import int8

CPU = torch.device("cpu")
VARIANTS = {  # name: (calibration files, equalize, backend)
    "shipped: 16 files, equalized, onednn (conv + add fused)": (16, True, "onednn"),
    "not equalized": (16, False, "onednn"),
    "x86 backend (conv and add rounded apart)": (16, True, "x86"),
    "neither (medsr's int8 until 2026-11-29)": (16, False, "x86"),
    "64 calibration files": (64, True, "onednn"),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=48, help="validation images (spread over both data sets)")
    args = parser.parse_args()
    print(f"{machine()}\n")
    model, _ = zoo.load("default")
    upscalers = {FLOAT: Upscaler(model, 3, CPU, FLOAT, tile=0)}
    for name, (files, equalize, backend) in VARIANTS.items():
        up = Upscaler(model, 3, CPU, FLOAT, tile=0)  # the float layers as --precision int8 runs them
        up.model = int8.quantized(up.model, int8.calibrate(model, calibration_images(3, files), equalize, backend))
        upscalers[name] = up
    methods = [quality.Method(name, up) for name, up in upscalers.items()]
    data = [str(DATA / "brain-mri"), str(DATA / "chest-xray")]
    psnr = {}
    for protocol in ("paper", "native"):
        for s in quality.summarize(quality.evaluate(data, methods, 3, protocol, "val", args.limit)):
            psnr[s["method"], protocol] = s["psnr"]
    print(f"default model, validation split ({args.limit} images per protocol, both data sets), x3\n")
    print("| int8 set-up | PSNR change vs bf16, paper (dB) | native (dB) |\n|---|---:|---:|")
    for name, up in upscalers.items():
        changes = [psnr[name, p] - psnr[FLOAT, p] for p in ("paper", "native")]
        print(f"| {name} | {changes[0]:+.3f} | {changes[1]:+.3f} |", flush=True)


if __name__ == "__main__":
    main()
