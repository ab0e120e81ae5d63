"""What this machine can do, measured in this run: the ceiling that inference figures are shares of.

- matrix multiply peak: the fastest of square torch.mm products of side 1024, 2048 and 4096, in fp32
  and bf16 (GFLOP/s; bf16 only where the CPU has it natively: emulated it is many times slower);
- convolution throughput at the default model's layer shapes on a 512x512 input, channels_last,
  fp32 and bf16 autocast, as medsr runs them (GFLOP/s), and at 32 and 64 channels: do other
  channel counts suit the matrix units better?
- the body convolution in int8 as medsr.models.int8 runs it, at 48, 32 and 64 channels (GOP/s);
- memory bandwidth: copying a 512 MB tensor (GB/s, bytes read + written).

    python benchmarks/bench_ceiling.py
"""

import argparse
import warnings

import torch
from common import FLOATS, best_of, machine

SIDE = 512  # the LR side of the inference benchmark's image
# (name, in channels, out channels, kernel) of the fused default model (medsr.models.edsr)
LAYERS = (("head conv 1->48 3x3", 1, 48, 3), ("body conv 48->48 3x3 (x17)", 48, 48, 3), ("fused upsample conv 48->9 5x5", 48, 9, 5),
          ("for comparison: body conv 32->32 3x3", 32, 32, 3), ("for comparison: body conv 64->64 3x3", 64, 64, 3))
INT8_CHANNELS = (48, 32, 64)  # the default's body width first


def autocast(dtype):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")


def matmul_gflops(dtype: str, sides: tuple[int, ...] = (1024, 2048, 4096)) -> float:
    """The best rate over a few sizes: no single size is the fastest on every CPU."""
    rates = []
    for n in sides:
        a = torch.randn(n, n, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
        b = torch.randn_like(a)
        rates.append(2 * n**3 / best_of(lambda: torch.mm(a, b), 5) / 1e9)
    return max(rates)


@torch.inference_mode()
def conv_gflops(dtype: str, cin: int, cout: int, k: int, side: int = SIDE) -> float:
    conv = torch.nn.Conv2d(cin, cout, k, padding=k // 2).eval().to(memory_format=torch.channels_last)
    # in bf16 the input arrives in bf16, as from the layer before it in the model; a float32 input
    # would add its conversion to every timed call
    x = torch.randn(1, cin, side, side, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    x = x.contiguous(memory_format=torch.channels_last)

    def run():
        with autocast(dtype):
            conv(x)

    return 2 * cin * cout * k * k * side * side / best_of(run, 5) / 1e9


@torch.inference_mode()
def int8_conv_gops(channels: int, side: int = SIDE) -> float:
    """A residual-body conv in int8 as medsr.models.int8 builds and runs it (quint8 activations,
    per-channel qint8 weights, oneDNN's kernels): GOP/s, one multiply-add counted as two."""
    from medsr.models import int8
    torch.backends.quantized.engine = "onednn"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors warn of their future deprecation
        conv = int8._quantized_conv(torch.ao.nn.quantized.Conv2d, torch.nn.Conv2d(channels, channels, 3, padding=1), [0.05, 128])
        x = torch.rand(1, channels, side, side).contiguous(memory_format=torch.channels_last)
        x = torch.quantize_per_tensor(x, 1 / 255, 0, torch.quint8)
    return 2 * channels * channels * 9 * side * side / best_of(lambda: conv(x), 5) / 1e9


def bandwidth_gbs(megabytes: int = 512) -> float:
    src = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / best_of(lambda: dst.copy_(src), 5) / 1e9


def measure() -> dict:
    result = {"matmul": {d: matmul_gflops(d) for d in FLOATS}, "bandwidth": bandwidth_gbs(), "conv": {}}
    for name, cin, cout, k in LAYERS:
        result["conv"][name] = {d: conv_gflops(d, cin, cout, k) for d in FLOATS}
    result["int8"] = {channels: int8_conv_gops(channels) for channels in INT8_CHANNELS}
    return result


def markdown(result: dict) -> str:
    def row(what: str, by_dtype: dict) -> str:
        return f"| {what} | {by_dtype['fp32']:.0f} | " + (f"{by_dtype['bf16']:.0f}" if "bf16" in by_dtype else "n/a (no native bf16)") + " |"

    lines = ["| what | fp32 (GFLOP/s) | bf16 (GFLOP/s) |", "|---|---:|---:|",
             row("matrix multiply, best of 1024^3 to 4096^3 (peak)", result["matmul"])]
    lines += [row(f"{name}, {SIDE}x{SIDE}", by_dtype) for name, by_dtype in result["conv"].items()]
    lines += ["", "int8 body conv 3x3 on 512x512, as medsr.models.int8 runs it: "
              + ", ".join(f"{c}->{c} {gops:.0f} GOP/s" for c, gops in result["int8"].items()) + ".",
              "", f"Memory bandwidth (copying 512 MB): {result['bandwidth']:.1f} GB/s."]
    return "\n".join(lines)


def main():
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()  # --help, then nothing
    print(f"{machine()}\n")
    print(markdown(measure()))


if __name__ == "__main__":
    main()
