"""int8 inference for EDSR's residual body, on CPUs with int8 dot-product units (VNNI, AMX-INT8) and AVX2.

The body (8 residual blocks and a conv: 97 % of the default model's convolution FLOPs) runs in int8 through
PyTorch's int8 modules and oneDNN's kernels (Int8Body). Weights are quantized per output channel
from the float weights at load time, so a model file only needs its calibration, found once by
`calibrate` (PyTorch's FX graph mode static quantization) on training images and stored in the
file's metadata (`medsr_int8`):
- the activations' quantization parameters: one (scale, zero point) pair per quantized tensor;
- equalization factors: inside each residual block, conv1's output channels are scaled up and
  conv2's matching input channels down (ReLU passes positive factors through), the same function
  in float, so that every channel between them spans the same range and one per-tensor int8 scale
  suits them all;
- the backend: "onednn" runs each block's second conv and its residual addition as one int8 op,
  one rounding and one pass over memory fewer than "x86", which rounds the conv's output and the sum;
- `validation_db`, the PSNR change from bf16 on the validation split: a model whose change is
  within AUTO_BUDGET_DB runs in int8 under `--precision auto` where medsr.hardware.cpu_runs_int8_auto says.
The head, the upsampling, the bicubic base and the clamp stay in float: the input keeps its full
bit depth and only the residual over bicubic passes through int8. Activations use all 8 bits (no
reduce_range), which is exact on VNNI and AMX; AVX2's kernels without VNNI may saturate a little, yet the
shipped calibrations lost within 0.004 dB of the same there (benchmarks/int8_here.py).
How these were chosen, on the validation split: benchmarks/int8_validation.py.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

QUANT_MIN, QUANT_MAX = 0, 255  # quint8 activations over the full 8 bits
BACKENDS = ("onednn", "x86")
AUTO_BUDGET_DB = 0.05  # the most PSNR int8 may lose against bf16, on the validation split, and still run as `auto`


def within_budget(calibration: dict | None) -> bool:
    """Whether a model's int8 calibration lost at most AUTO_BUDGET_DB against bf16 on every protocol of
    the validation split (its `validation_db`, measured when it shipped: benchmarks/calibrate_int8.py)."""
    changes = calibration.get("validation_db") if isinstance(calibration, dict) else None
    return bool(changes) and all(change >= -AUTO_BUDGET_DB for change in changes.values())


def _prepare(body: nn.Module, observer, backend: str):
    from torch.ao.quantization import PerChannelMinMaxObserver, QConfig, QConfigMapping
    from torch.ao.quantization.quantize_fx import prepare_fx
    weight = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    mapping = QConfigMapping().set_global(QConfig(activation=observer, weight=weight))
    body = copy.deepcopy(body).float().eval()
    for block in _blocks(body):
        block.sum_in_place = False  # FX's quantization patterns match the residual `x + body`, not an in-place sum
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the eager/FX quantization API warns of its future deprecation
        return prepare_fx(body, mapping, (torch.zeros(1, _channels(body), 8, 8),), backend_config=_backend_config(backend))


def _backend_config(backend: str):
    if backend not in BACKENDS:
        raise ValueError(f"unknown int8 backend '{backend}'; use {' or '.join(BACKENDS)}")
    from torch.ao.quantization.backend_config import get_onednn_backend_config
    return get_onednn_backend_config() if backend == "onednn" else None  # None: torch's default (native) patterns


def _channels(body: nn.Module) -> int:
    return next(m for m in body.modules() if isinstance(m, nn.Conv2d)).in_channels


def _observers(prepared: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in prepared.named_children() if name.startswith("activation_post_process")]


def _blocks(body: nn.Sequential) -> list[nn.Module]:
    """The residual blocks of an EDSR body (each block's `body` is its conv, ReLU, conv)."""
    return [block for block in body if hasattr(block, "body")]


@torch.no_grad()
def _equalization(model: nn.Module, lr_images: list[torch.Tensor]) -> list[list[float]]:
    """Per residual block, the factor for each channel between its convs that brings the channel's
    largest value on `lr_images` up to the block's largest (1 for a channel that never fires)."""
    blocks = [block.body for block in _blocks(model.body)]
    peaks = [torch.zeros(block[0].out_channels) for block in blocks]

    def record(i):
        def hook(module, inputs, out):
            torch.maximum(peaks[i], out.float().amax(dim=(0, 2, 3)), out=peaks[i])
        return hook

    hooks = [block[1].register_forward_hook(record(i)) for i, block in enumerate(blocks)]
    try:
        for lr in lr_images:
            model.body(model.head(lr.float()))
    finally:
        for hook in hooks:
            hook.remove()
    return [torch.where(peak > 0, peak.max() / peak.clamp_min(1e-12), torch.ones_like(peak)).tolist() for peak in peaks]


@torch.no_grad()
def _equalize(model: nn.Module, factors: list[list[float]]) -> nn.Module:
    """A copy of `model` with each block's in-between channels scaled by `factors`: the same function."""
    model = copy.deepcopy(model)
    blocks = [block.body for block in _blocks(model.body)]
    if len(blocks) != len(factors):
        raise ValueError(f"int8 calibration has {len(factors)} blocks, the model {len(blocks)}: calibrate this model again")
    for block, block_factors in zip(blocks, factors):
        a = torch.tensor(block_factors, dtype=block[0].weight.dtype)
        block[0].weight.mul_(a[:, None, None, None])
        block[0].bias.mul_(a)
        block[2].weight.div_(a[None, :, None, None])
    return model


@torch.no_grad()
def calibrate(model: nn.Module, lr_images: list[torch.Tensor], equalize: bool = True, backend: str = "onednn") -> dict:
    """The int8 calibration of `model`'s body (an EDSR) from `lr_images` ((1, 1, H, W) tensors in
    [-1, 1]): equalization factors (None with `equalize=False`), then each activation's (scale,
    zero point), the pair that minimises that tensor's quantization error over its histogram."""
    from torch.ao.quantization import HistogramObserver
    model = model.float().eval()
    factors = _equalization(model, lr_images) if equalize else None
    if factors is not None:
        model = _equalize(model, factors)
    prepared = _prepare(model.body, HistogramObserver.with_args(dtype=torch.quint8, quant_min=QUANT_MIN, quant_max=QUANT_MAX),
                        backend)
    for lr in lr_images:
        prepared(model.head(lr.float()))
    pairs = [[float(scale), int(zero_point)] for scale, zero_point in (obs.calculate_qparams() for _, obs in _observers(prepared))]
    return {"backend": backend, "equalization": factors, "activations": pairs}


def quantized(model: nn.Module, calibration: dict) -> nn.Module:
    """A copy of `model` (an EDSR, fused or not) whose body runs in int8 with `calibration` (from `calibrate`)."""
    if not isinstance(calibration, dict):
        raise ValueError("int8 calibration is in an older format: calibrate this model again (benchmarks/calibrate_int8.py)")
    factors = calibration["equalization"]
    out = copy.deepcopy(model) if factors is None else _equalize(model, factors)
    out.body = Int8Body(out.body, calibration["activations"], calibration["backend"])
    return out.eval()


def _quantized_conv(cls, conv: nn.Conv2d, activation: list[float]) -> nn.Module:
    """`conv` as the int8 module `cls`: weights per output channel, symmetric (as torch's
    PerChannelMinMaxObserver makes them), bias in float, output at the calibrated (scale, zero point)."""
    weight = conv.weight.detach().float().contiguous()
    scales = (weight.abs().amax(dim=(1, 2, 3)) / 127.5).clamp_min(torch.finfo(torch.float32).eps)
    zero = torch.zeros(len(scales), dtype=torch.long)
    out = cls(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
    out.set_weight_bias(torch.quantize_per_channel(weight, scales.double(), zero, 0, torch.qint8), conv.bias.detach().float())
    out.scale, out.zero_point = float(activation[0]), int(activation[1])
    return out


class Int8Body(nn.Module):
    """EDSR's body (residual blocks of conv, ReLU, conv, then a conv) in int8, between float tensors.

    Built by hand from torch's int8 modules, with `activations` in the order of torch's FX graph
    mode quantization, which `calibrate` runs: the body's input; per block the first conv's output
    (ReLU fused) and, with "onednn", the second conv's output fused with its residual addition, or
    with "x86" the second conv's output and the sum; the last conv's output. (FX graph mode would
    build the same modules, tests/test_int8.py checks so, but it imports a second of torch's
    compiler stack at start-up.) Under bf16 autocast the input arrives as bf16, which quantization
    does not take. torch picks int8 kernels by a process-wide engine, set here to the backend's.

    It returns EDSR's whole trunk, input + body(input) (`adds_input`): the input's float copy, made
    for quantization anyway, takes the sum in place in float32, the same numbers as EDSR adding a
    bf16 input to a float32 body output, without the extra pass over memory that converts as it adds."""

    adds_input = True

    def __init__(self, body: nn.Sequential, activations: list[list[float]], backend: str):
        super().__init__()
        import torch.ao.nn.intrinsic.quantized as nniq
        import torch.ao.nn.quantized as nnq
        if backend not in BACKENDS:
            raise ValueError(f"unknown int8 backend '{backend}'; use {' or '.join(BACKENDS)}")
        blocks = _blocks(body)
        if any(getattr(block, "res_scale", 1) != 1 for block in blocks):
            raise ValueError("int8: residual blocks with res_scale other than 1 are not supported; use --precision auto")
        per_block = 2 if backend == "onednn" else 3
        if len(activations) != 2 + per_block * len(blocks):
            raise ValueError(f"int8 calibration has {len(activations)} tensors, the model's body {2 + per_block * len(blocks)}: "
                             "calibrate this model again")
        self.engine = torch.backends.quantized.engine = backend  # the engine packs the weights
        self.input_scale, self.input_zero_point = float(activations[0][0]), int(activations[0][1])
        self.convs, self.sums = nn.ModuleList(), []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensors warn (once) of their future deprecation; medsr pins torch
            for i, block in enumerate(blocks):
                first, second, *rest = activations[1 + per_block * i: 1 + per_block * (i + 1)]
                conv1, conv2 = block.body[0], block.body[2]
                self.convs.append(_quantized_conv(nniq.ConvReLU2d, conv1, first))
                self.convs.append(_quantized_conv(nniq.ConvAdd2d if backend == "onednn" else nnq.Conv2d, conv2, second))
                self.sums += rest  # x86: the residual sum's (scale, zero point)
            self.last = _quantized_conv(nnq.Conv2d, body[-1], activations[-1])

    def forward(self, x):
        if torch.backends.quantized.engine != self.engine:
            torch.backends.quantized.engine = self.engine
        features = x.float()
        x = torch.quantize_per_tensor(features, self.input_scale, self.input_zero_point, torch.quint8)
        for i in range(0, len(self.convs), 2):
            inner = self.convs[i](x)
            if self.sums:
                scale, zero_point = self.sums[i // 2]
                x = torch.ops.quantized.add(x, self.convs[i + 1](inner), float(scale), int(zero_point))
            else:
                x = self.convs[i + 1](inner, x)  # conv(inner) + x, rounded once
        return self.last(x).dequantize().add_(features)
