"""int8 inference for EDSR's residual body, on CPUs with int8 dot-product units (VNNI, AMX-INT8).

The body (8 residual blocks and a conv: 97 % of the default model's convolution FLOPs) runs in int8 through
PyTorch's static quantization (FX graph mode, the x86 backend: oneDNN kernels). Weights are
quantized per output channel from the float weights at load time, so a model file only needs the
activations' quantization parameters: one (scale, zero point) pair per quantized tensor, found
once by `calibrate` on training images and stored in the file's metadata (`medsr_int8`). The head,
the upsampling, the bicubic base and the clamp stay in float: the input keeps its full bit depth
and only the residual over bicubic passes through int8. Activations use all 8 bits (no
reduce_range), which is exact on VNNI and AMX; older CPUs' int8 kernels may saturate a little.
"""

from __future__ import annotations

import copy
import operator
import warnings

import torch
import torch.nn as nn

QUANT_MIN, QUANT_MAX = 0, 255  # quint8 activations over the full 8 bits


def _qconfig_mapping(observer, keep_float: tuple[str, ...]):
    from torch.ao.quantization import PerChannelMinMaxObserver, QConfig, QConfigMapping
    weight = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    mapping = QConfigMapping().set_global(QConfig(activation=observer, weight=weight))
    for name in keep_float:
        mapping = mapping.set_object_type(operator.add, None) if name == "add" else mapping.set_module_name(name, None)
    return mapping


def _prepare(body: nn.Module, observer, keep_float: tuple[str, ...]):
    from torch.ao.quantization.quantize_fx import prepare_fx
    torch.backends.quantized.engine = "x86"
    mapping = _qconfig_mapping(observer, keep_float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the eager/FX quantization API warns of its future deprecation
        prepared = prepare_fx(copy.deepcopy(body).float().eval(), mapping, (torch.zeros(1, _channels(body), 8, 8),))
    return prepared


def _channels(body: nn.Module) -> int:
    return next(m for m in body.modules() if isinstance(m, nn.Conv2d)).in_channels


def _observers(prepared: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in prepared.named_children() if name.startswith("activation_post_process")]


@torch.no_grad()
def calibrate(model: nn.Module, lr_images: list[torch.Tensor], keep_float: tuple[str, ...] = ()) -> list[list[float]]:
    """The activations' (scale, zero point) pairs of `model`'s body (an EDSR), from histograms of
    its values on `lr_images` ((1, 1, H, W) tensors in [-1, 1]); each pair minimises that tensor's
    quantization error over what it saw. `keep_float` names parts of the body left in float: a
    submodule ("0" the first residual block, "8" the last conv) or "add" (the residual additions);
    the shipped calibrations keep none (benchmarks/int8_validation.py)."""
    from torch.ao.quantization import HistogramObserver
    model = model.float().eval()
    prepared = _prepare(model.body, HistogramObserver.with_args(dtype=torch.quint8, quant_min=QUANT_MIN, quant_max=QUANT_MAX),
                        keep_float)
    for lr in lr_images:
        prepared(model.head(lr.float()))
    pairs = []
    for _, observer in _observers(prepared):
        scale, zero_point = observer.calculate_qparams()
        pairs.append([float(scale), int(zero_point)])
    return pairs


def quantized(model: nn.Module, qparams: list[list[float]], keep_float: tuple[str, ...] = ()) -> nn.Module:
    """A copy of `model` (an EDSR, fused or not) whose body runs in int8 with the calibrated `qparams`
    (from `calibrate` with the same `keep_float`)."""
    from torch.ao.quantization.observer import FixedQParamsObserver
    from torch.ao.quantization.quantize_fx import convert_fx
    prepared = _prepare(model.body, FixedQParamsObserver.with_args(scale=1.0, zero_point=0, dtype=torch.quint8,
                                                                   quant_min=QUANT_MIN, quant_max=QUANT_MAX), keep_float)
    observers = _observers(prepared)
    if len(observers) != len(qparams):
        raise ValueError(f"int8 calibration has {len(qparams)} tensors, the model's body {len(observers)}: calibrate this model again")
    for (name, _), (scale, zero_point) in zip(observers, qparams):
        setattr(prepared, name, FixedQParamsObserver(scale, int(zero_point), dtype=torch.quint8, quant_min=QUANT_MIN, quant_max=QUANT_MAX))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        body = convert_fx(prepared)
    out = copy.deepcopy(model)
    out.body = Int8Body(body)
    return out.eval()


class Int8Body(nn.Module):
    """The quantized body between float tensors (it quantizes its input and dequantizes its output);
    under bf16 autocast its input arrives as bf16, which quantization does not take."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x.float())
