"""Choices and defaults shared by every entry point (CLI, Python API, web page) for running a model.

Kept free of heavy imports, so that `medsr --help` can offer them without loading torch.
"""

# auto: int8 for models whose int8 calibration is within 0.05 dB of bf16 on CPUs with int8 units or
# AVX2 without bf16 (medsr.hardware.cpu_runs_int8_auto), else bf16 where the hardware does it
# natively, else fp32; int8: see medsr.models.int8
PRECISIONS = ("auto", "fp32", "bf16", "int8")
DEVICES = ("auto", "cpu", "cuda")  # cuda:N is accepted too
RUNTIMES = ("torch", "onnx")  # onnx: onnxruntime, fp32 only
# LR tiles with 20 pixels of context: the shipped default's reach (a change to one LR pixel moves
# output pixels up to 20 LR pixels away), so its tiled and untiled outputs agree to float rounding,
# and memory stays bounded on any image size. In the tile sweep of benchmarks/bench_infer.py
# (docs/PERFORMANCE.md) 256, 384, 512 and one untiled call were equally fast on the 2-core AMD
# EPYC, within its run-to-run noise, and 512 makes a 512x512 scan one call; on a Xeon with AMX,
# bf16 ran 1.3-1.6x faster in 128- and 256-px tiles than in 512-px ones or one call
# (docs/results/performance-amx.md; 1.3-2x on 1024x1024 in an earlier run there).
# hardware.default_tile picks between the two.
TILE, TILE_AMX, TILE_OVERLAP = 512, 256, 20
PROTOCOLS = ("paper", "native", "native-jpeg")  # evaluation protocols (medsr.data.degrade.make_pair)
