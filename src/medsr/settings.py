"""Choices and defaults shared by every entry point (CLI, Python API, web page) for running a model.

Kept free of heavy imports, so that `medsr --help` can offer them without loading torch.
"""

PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 where the hardware does it natively, else fp32
DEVICES = ("auto", "cpu", "cuda")  # cuda:N is accepted too
RUNTIMES = ("torch", "onnx")  # onnx: onnxruntime, fp32 only
# 256-pixel LR tiles with 16 pixels of context, wider than the default model's receptive field, so
# tiled and untiled outputs agree and memory stays bounded on any image size.
TILE, TILE_OVERLAP = 256, 16
