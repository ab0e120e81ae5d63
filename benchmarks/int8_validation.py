"""How int8 is set up (`--precision int8`), chosen on the VALIDATION split: the shipped calibration
(benchmarks/calibrate_int8.py: 16 train-split files) against more calibration images and against
keeping parts of the default model's body in float, each as PSNR change from bf16 (`auto`). The
test-split change and the speed of the shipped choice are in bench_infer.py.

    python benchmarks/int8_validation.py [--limit 48]
"""

import argparse

import torch
from calibrate_int8 import calibration_images
from common import DATA, machine

from medsr import zoo
from medsr.evaluation import quality
from medsr.inference.upscaler import Upscaler
from medsr.models import int8

CPU = torch.device("cpu")
VARIANTS = {  # name: (calibration files, parts of the body kept in float)
    "shipped: 16 files, all of the body in int8": (16, ()),
    "64 calibration files": (64, ()),
    "first residual block in float": (16, ("0",)),
    "last body conv in float": (16, ("8",)),
    "residual additions in float": (16, ("add",)),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=48, help="validation images (spread over both data sets)")
    args = parser.parse_args()
    print(f"{machine()}\n")
    model, _ = zoo.load("default")
    upscalers = {"bf16 (auto)": Upscaler(model, 3, CPU, "auto", tile=0)}
    for name, (files, keep_float) in VARIANTS.items():
        up = Upscaler(model, 3, CPU, "auto", tile=0)  # the float layers as `auto` runs them, as --precision int8 does
        up.model = int8.quantized(up.model, int8.calibrate(model, calibration_images(3, files), keep_float), keep_float)
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
        changes = [psnr[name, p] - psnr["bf16 (auto)", p] for p in ("paper", "native")]
        print(f"| {name} | {changes[0]:+.3f} | {changes[1]:+.3f} |", flush=True)


if __name__ == "__main__":
    main()
