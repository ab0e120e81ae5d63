"""Export a generator to ONNX: fp32, input "lr" shaped (1, 1, H, W) in [-1, 1] with any H and W,
output "sr" shaped (1, 1, H*scale, W*scale) in [-1, 1] (clipped in the graph), and the medsr metadata in the file's metadata_props
(medsr_arch, medsr_scale, medsr_config, medsr_source_model, ...) so an .onnx file carries its scale.

The TorchScript exporter (`dynamo=False`) is used: it gives correct dynamic sizes for the EDSR,
SRResNet, paper and RRDB generators, exports in under a second and needs no onnxscript. The
dynamo exporter gives the same graphs here but takes ~15x longer and also fails on SwinIR.
A trace freezes Python-level size logic, so every export is run at two other sizes and compared
with PyTorch before it is written.
"""

from __future__ import annotations

import importlib
import io
import json
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from medsr import zoo
from medsr.errors import MedsrError
from medsr.files import atomic_write

INPUT_NAME, OUTPUT_NAME = "lr", "sr"
DEFAULT_OPSET = 17
MIN_OPSET = 11  # every exportable medsr architecture exports from 11 on (EDSR's bicubic skip needs it)
# the newest opset this torch's TorchScript exporter writes (20 where torch does not say)
MAX_OPSET = getattr(getattr(torch.onnx, "_constants", None), "ONNX_MAX_OPSET", 20)
TRACE_SIZE = (32, 32)  # large enough for EDSR's fused upsampling path at every scale (x8 needs > 18)
CHECK_SIZES = ((27, 41), (12, 7))  # odd sizes, and one below the fused path's threshold
CHECK_TOLERANCE = 1e-3  # in [-1, 1] units; a frozen size shows up as a wrong shape or errors far above this
# Architectures whose inference cannot be one ONNX graph for every image size, and why.
NOT_EXPORTABLE = {
    "swinir": "its mirror padding to the window size and its shifted-window masks depend on the image size, which the "
              "TorchScript exporter freezes at the traced size and the dynamo exporter cannot decompose",
    "resshift": "its diffusion sampler draws seeded torch random noise at every step, which ONNX cannot reproduce",
}


def require(module: str) -> ModuleType:
    """Import an optional ONNX package, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MedsrError(f"ONNX support needs the '{module}' package, which is not installed: pip install -e \".[onnx]\"") from None


# What a caller does around the graph to get medsr's result (medsr.inference.upscaler.TiledUpscaler):
# the models were trained on images spanning the full range, so each image is stretched to its own.
CONTRACT = (f"{INPUT_NAME} (1, 1, H, W) float32 = 2 * (image - min) / (max - min) - 1, each image stretched from its own "
            f"darkest (min) to brightest (max) value as medsr does; {OUTPUT_NAME} (1, 1, H*scale, W*scale) in [-1, 1]; "
            f"the upscaled image = min + ({OUTPUT_NAME} + 1) / 2 * (max - min)")


class _Clipped(torch.nn.Module):
    """The generator with its output clipped to [-1, 1], as medsr clips it: raw outputs reach a little
    beyond, which wraps around when cast to integers."""

    def __init__(self, generator: torch.nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.generator(lr).clamp(-1.0, 1.0)


def onnx_bytes(generator: torch.nn.Module, meta: dict[str, str], source: str, opset: int = DEFAULT_OPSET) -> bytes:
    """The serialized ONNX model of a loaded generator, checked at two sizes against PyTorch."""
    if not MIN_OPSET <= opset <= MAX_OPSET:  # checked first: the exporter prints its whole graph when it refuses one
        raise MedsrError(f"--opset {opset}: medsr exports ONNX opsets {MIN_OPSET} to {MAX_OPSET}; pick one of those "
                         f"(default {DEFAULT_OPSET})")
    onnx = require("onnx")
    arch = meta.get("medsr_arch", "?")
    if arch in NOT_EXPORTABLE:
        raise MedsrError(f"{meta.get('path', source)}: {arch} models cannot be exported to ONNX with dynamic sizes: "
                         f"{NOT_EXPORTABLE[arch]}; upscale with it through PyTorch (--runtime torch)")
    generator = generator.float().cpu().eval()
    if hasattr(generator, "fused_for_inference"):
        generator = generator.fused_for_inference()
    generator = _Clipped(generator).eval()  # export() puts the wrapper back as it found it: train mode would reach BatchNorm
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer notes; the size check below is the real test
        try:
            torch.onnx.export(generator, (torch.zeros(1, 1, *TRACE_SIZE),), buffer, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset, dynamo=False,
                              dynamic_axes={INPUT_NAME: {2: "height", 3: "width"}, OUTPUT_NAME: {2: "sr_height", 3: "sr_width"}})
        except Exception as err:  # noqa: BLE001 - exporter errors are long; the first line says which operator failed
            raise MedsrError(f"{source}: ONNX export (opset {opset}) failed: {str(err).splitlines()[0][:200]}; "
                             "try another --opset or --runtime torch") from None
    model = onnx.load_from_string(buffer.getvalue())
    model.doc_string = f"medsr {arch} x{meta.get('medsr_scale')}: {CONTRACT}"
    props = {k: v for k, v in meta.items() if k.startswith("medsr_")}
    props["medsr_source_model"] = source
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
    data = model.SerializeToString()
    _check_sizes(data, generator, source)
    return data


def _check_sizes(data: bytes, generator: torch.nn.Module, source: str) -> None:
    """MedsrError unless the exported graph matches PyTorch at sizes other than the traced one."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failing size is reported below as one line, not as onnxruntime's log
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for h, w in CHECK_SIZES:
        lr = rng.uniform(-1, 1, (1, 1, h, w)).astype(np.float32)
        with torch.inference_mode():
            expected = generator(torch.from_numpy(lr)).numpy()
        try:
            got = session.run([OUTPUT_NAME], {INPUT_NAME: lr})[0]
            error = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        except Exception:  # noqa: BLE001 - a graph frozen at the traced size fails here
            error = float("inf")
        if not error <= CHECK_TOLERANCE:
            raise MedsrError(f"{source}: the exported ONNX graph does not reproduce the model at {h}x{w} "
                             f"(max difference {error:.3g}); this architecture cannot be exported with dynamic sizes, use --runtime torch")


def export_onnx(model: str | Path, out: Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export a shipped model name, model file or run folder to an ONNX file, written atomically."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise MedsrError(f"{out}: the output of an ONNX export should end in .onnx; choose another -o")
    from medsr.inference.upscaler import check_upscales  # not at the top: upscaler imports this module

    generator, meta = zoo.load(model)
    check_upscales(model, meta)
    data = onnx_bytes(generator, meta, str(model), opset)
    return atomic_write(out, lambda tmp: tmp.write_bytes(data))
