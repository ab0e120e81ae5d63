"""Small pieces shared by the model files: activations, sub-pixel upsampling, size arithmetic, the
source neighbourhood range (also medsr.metrics' edge overshoot)."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsr.errors import MedsrError

# LeakyReLU slope used everywhere unless a paper says otherwise.
LEAKY_SLOPE = 0.2

# How each supported scale is built from pixel-shuffle steps (x4 and x8 are repeated x2, as in SRGAN).
SCALE_FACTORS = {2: [2], 3: [3], 4: [2, 2], 8: [2, 2, 2]}


def scale_factors(scale: int) -> list[int]:
    """The pixel-shuffle factors whose product is `scale`; MedsrError for a scale we cannot build."""
    if isinstance(scale, bool) or scale not in SCALE_FACTORS:
        raise MedsrError(f"unsupported scale {scale!r}; supported scales: {sorted(SCALE_FACTORS)}")
    return list(SCALE_FACTORS[scale])


def activation(name: str, channels: int) -> nn.Module:
    """A fresh activation module by name; never in-place, since residual adds often follow."""
    if name == "leaky_relu":
        return nn.LeakyReLU(LEAKY_SLOPE, inplace=False)
    if name == "prelu":
        return nn.PReLU(channels)  # one learned slope per channel, as in SRGAN
    if name == "relu":
        return nn.ReLU(inplace=False)
    raise MedsrError(f"unknown activation {name!r}; known: leaky_relu, prelu, relu")


def upsampler(channels: int, scale: int, act: str = "leaky_relu") -> nn.Sequential:
    """conv3x3 -> PixelShuffle(f) -> act for each factor f of `scale` (2 -> [x2], 3 -> [x3], 4 -> [x2, x2], 8 -> [x2, x2, x2]).

    The channel count is unchanged, so this drops into any generator between body and tail.
    """
    layers = []
    for f in scale_factors(scale):
        # the conv makes f*f sub-pixel maps per channel that PixelShuffle lays out on the finer grid
        layers += [nn.Conv2d(channels, channels * f * f, 3, padding=1), nn.PixelShuffle(f), activation(act, channels)]
    return nn.Sequential(*layers)


def conv_out_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a Conv2d (the formula from the PyTorch docs, dilation 1)."""
    return (size + 2 * padding - kernel) // stride + 1


def check_input_size(name: str, x, input_size: int) -> None:
    """Raise MedsrError unless x is (B, C, input_size, input_size); discriminators with a dense head need it."""
    h, w = x.shape[-2:]
    if (h, w) != (input_size, input_size):
        raise MedsrError(
            f"{name} expects {input_size}x{input_size} inputs (input_size={input_size}), got {h}x{w}; "
            f"crop the images to {input_size}x{input_size} or build the discriminator with a matching input_size"
        )


class Dropout(nn.Dropout):
    """nn.Dropout with a cheaper mask on the CPU: random bytes compared with a threshold.

    torch's float bernoulli_ was a third of the paper GAN's training step on the CPU. Here the
    bytes come from 64-bit random words (8 bytes per draw of the global RNG, so resuming stays
    exact), laid out like `x` (channels_last stays channels_last), and the 1/(1-p) factor goes
    into the mask, so forward and backward are one multiply each. p is rounded to a multiple of
    1/256 (0.5 is exact). Other devices use torch's own fused dropout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()
        n, drop = x.numel(), round(self.p * 256)
        words = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-(2**63), None)  # the full 64-bit range
        random_bytes = words.view(torch.uint8)[:n].as_strided(x.shape, x.stride())
        mask = (random_bytes >= drop).to(x.dtype).mul_(256 / (256 - drop))
        return x * mask


def source_range(lr: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) on the upscaled grid: for each output pixel, the min and max of the 3x3 block of LR
    pixels around the one it lies in."""
    high = F.max_pool2d(lr, 3, stride=1, padding=1)
    low = -F.max_pool2d(-lr, 3, stride=1, padding=1)
    return F.interpolate(low, scale_factor=scale, mode="nearest"), F.interpolate(high, scale_factor=scale, mode="nearest")
