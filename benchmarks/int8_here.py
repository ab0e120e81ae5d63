"""The shipped int8 calibrations on THIS CPU's int8 kernels: PSNR change from the float path medsr
would otherwise run here (bf16 where native, else fp32) on the VALIDATION split, and speed.

Each model file records the change its calibration gave when it shipped (calibrate_int8.py, on a
CPU with VNNI); oneDNN's int8 kernels differ by instruction set (VNNI / AMX-INT8, or AVX2's
multiply-add without VNNI), so this measures them again on the CPU at hand. It is what
medsr.hardware.cpu_runs_int8_auto rests on for CPUs without int8 dot-product units.

    python benchmarks/int8_here.py [default default-jpeg default-x2 default-x4 default-gan] [--limit 48]
"""

import argparse

import numpy as np
import torch
from bench_infer import smooth_image
from calibrate_int8 import validation_changes
from common import FLOAT, best_of_interleaved, machine

from medsr import zoo
from medsr.inference.upscaler import Upscaler
from medsr.models import int8

CPU = torch.device("cpu")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="*", default=["default", "default-jpeg", "default-x2", "default-x4", "default-gan"])
    parser.add_argument("--limit", type=int, default=48, help="validation images per protocol (spread over both data sets)")
    args = parser.parse_args()
    print(f"{machine()}\n")
    print(f"| model | int8 - {FLOAT} PSNR, paper (dB) | native (dB) | as recorded when shipped, paper / native (dB) | "
          f"512x512, {FLOAT} (s) | int8 (s) | int8 speed-up |\n|---|---:|---:|---:|---:|---:|---:|")
    image = smooth_image(512)
    for name in args.names:
        model, _ = zoo.load(name)
        quantized = Upscaler(model, model.scale, CPU, "int8", tile=0)
        change = validation_changes(model, {"int8": quantized}, args.limit)["int8"]
        recorded = model.int8_calibration["validation_db"]
        side = 512 * 3 // model.scale  # the same 1536x1536 output at every scale
        lr = image[:side, :side] if side <= 512 else np.pad(image, (0, side - 512), mode="reflect")
        runs = {FLOAT: Upscaler(model, model.scale, CPU, FLOAT, tile=0), "int8": quantized}
        seconds = best_of_interleaved({p: lambda u=u: u.upscale(lr) for p, u in runs.items()}, 3)
        within = int8.within_budget({"validation_db": change})  # the rule `auto` applies to the recorded figures
        print(f"| {name} | {change['paper']:+.3f} | {change['native']:+.3f} | {recorded['paper']:+.3f} / {recorded['native']:+.3f} | "
              f"{seconds[FLOAT]:.2f} | {seconds['int8']:.2f} | {seconds[FLOAT] / seconds['int8']:.2f}x"
              f"{'' if within else ' (outside the budget)'} |", flush=True)
    print(f"\n(Budget for `auto`: int8 loses at most {int8.AUTO_BUDGET_DB} dB on each protocol.)")


if __name__ == "__main__":
    main()
