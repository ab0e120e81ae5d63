"""A compact EDSR-style generator: medsr's own PSNR-oriented default.

Differences from the paper generator, each for quality per CPU-second:
- no batch norm (it hurts SR: it normalises away the absolute intensities the output needs);
- the network learns only the residual over bicubic upsampling (a global skip), so it starts
  at bicubic quality and trains much faster;
- no tanh: a linear output, clamped to the valid range at inference.
"""

import torch.nn as nn
import torch.nn.functional as F

from medsr.models.layers import scale_factors


class ResBlock(nn.Module):
    def __init__(self, channels: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1))
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.body(x) * self.res_scale


class EDSR(nn.Module):
    SUPPORTED_SCALES = (2, 3, 4, 8)

    def __init__(self, scale: int = 3, in_channels: int = 1, channels: int = 48, num_blocks: int = 8, res_scale: float = 1.0):
        super().__init__()
        factors = scale_factors(scale)
        self.scale = scale
        self.config = dict(scale=scale, in_channels=in_channels, channels=channels, num_blocks=num_blocks, res_scale=res_scale)
        self.head = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(channels, res_scale) for _ in range(num_blocks)], nn.Conv2d(channels, channels, 3, padding=1))
        up = []
        for f in factors:
            up += [nn.Conv2d(channels, channels * f * f, 3, padding=1), nn.PixelShuffle(f)]
        self.upsample = nn.Sequential(*up)
        self.tail = nn.Conv2d(channels, in_channels, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # start exactly at bicubic
        nn.init.zeros_(self.tail.bias)

    def forward(self, lr):
        base = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        feat = self.head(lr)
        feat = feat + self.body(feat)
        return base + self.tail(self.upsample(feat))
