"""Choices and defaults shared by every entry point (CLI, Python API, web page) for running a model.

Kept free of heavy imports, so that `medsr --help` can offer them without loading torch.
"""

# auto: int8 for models whose int8 calibration is within 0.05 dB of bf16 on CPUs with int8 units,
# else bf16 where the hardware does it natively, else fp32; int8: see medsr.models.int8
PRECISIONS = ("auto", "fp32", "bf16", "int8")
DEVICES = ("auto", "cpu", "cuda")  # cuda:N is accepted too
RUNTIMES = ("torch", "onnx")  # onnx: onnxruntime, fp32 only
# 512-pixel LR tiles with 16 pixels of context, so tiled and untiled outputs agree to float rounding
# and memory stays bounded on any image size. In the tile sweep of benchmarks/bench_infer.py
# (docs/PERFORMANCE.md) 256, 384, 512 and one untiled call were equally fast on the 2-core
# development CPU, within its run-to-run noise, and 128 was slower (its overlap is recomputed);
# 512 makes a 512x512 scan one call.
TILE, TILE_OVERLAP = 512, 16
PROTOCOLS = ("paper", "native", "native-jpeg")  # evaluation protocols (medsr.data.degrade.make_pair)
