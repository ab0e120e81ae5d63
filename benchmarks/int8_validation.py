"""How int8 is set up (`--precision int8`), chosen on the VALIDATION split: the shipped calibration
(benchmarks/calibrate_int8.py: 16 train-split files, equalized blocks, the onednn backend's fused
conv + residual addition) against each of its ideas left out and against more calibration images,
each as PSNR change from bf16 (fp32 on CPUs without it). The
test-split change and the speed of the shipped choice are in bench_infer.py.

    python benchmarks/int8_validation.py [--limit 48]
"""

import argparse

from calibrate_int8 import calibration_images, int8_upscaler, validation_changes
from common import FLOAT, machine

from medsr import zoo
from medsr.models import int8

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
    upscalers = {name: int8_upscaler(model, int8.calibrate(model, calibration_images(3, files), equalize, backend))
                 for name, (files, equalize, backend) in VARIANTS.items()}
    changes = validation_changes(model, upscalers, args.limit)
    print(f"default model, validation split ({args.limit} images per protocol, both data sets), x3\n")
    print(f"| int8 set-up | PSNR change vs {FLOAT}, paper (dB) | native (dB) |\n|---|---:|---:|")
    print(f"| {FLOAT} | +0.000 | +0.000 |")
    for name, change in changes.items():
        print(f"| {name} | {change['paper']:+.3f} | {change['native']:+.3f} |", flush=True)

if __name__ == "__main__":
    main()
