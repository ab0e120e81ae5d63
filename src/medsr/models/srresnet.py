"""SRGAN (Ledig et al. 2017, "Photo-Realistic Single Image Super-Resolution Using a GAN"): SRResNet + VGG-style critic."""

import torch
import torch.nn as nn

from medsr.models.layers import LEAKY_SLOPE, scale_factors, upsampler


class ResidualBlock(nn.Module):
    """conv3-BN-PReLU-conv3-BN, then add the block input (no activation after the add, as in the paper)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    """The SRGAN generator. Maps (B, C, h, w) in [-1, 1] to (B, C, h*scale, w*scale) in [-1, 1]; fully convolutional.

    head: conv9x9 + PReLU
    body: `num_blocks` ResidualBlocks, conv3 + BN, plus a skip from the head output
    up:   conv -> PixelShuffle -> PReLU per factor of `scale` (x4 = two x2 blocks, x3 = one x3 block)
    tail: conv9x9 to `in_channels` + tanh
    """

    SUPPORTED_SCALES = (2, 3, 4, 8)

    def __init__(self, scale: int = 4, in_channels: int = 1, channels: int = 64, num_blocks: int = 16):
        super().__init__()
        scale_factors(scale)  # fail early with MedsrError on an unsupported scale
        self.scale = scale
        self.config = dict(scale=scale, in_channels=in_channels, channels=channels, num_blocks=num_blocks)
        self.head = nn.Sequential(nn.Conv2d(in_channels, channels, 9, padding=4), nn.PReLU(channels))
        self.blocks = nn.Sequential(*[ResidualBlock(channels) for _ in range(num_blocks)])
        self.body_tail = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))
        self.upsample = upsampler(channels, scale, act="prelu")
        self.tail = nn.Conv2d(channels, in_channels, 9, padding=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.head(x)
        body = self.body_tail(self.blocks(head)) + head  # long skip over the residual trunk
        return torch.tanh(self.tail(self.upsample(body)))


class VGGDiscriminator(nn.Module):
    """The SRGAN critic. Scores (B, C, H, W) images; returns LOGITS of shape (B, 1).

    The paper ends in a sigmoid; here it is folded into BCEWithLogitsLoss in the loss, which is
    numerically stable (also under bf16 autocast). Apply torch.sigmoid yourself for probabilities.

    8 conv3x3 layers, widths 64,64,128,128,256,256,512,512 (scaled by channels/64), strides
    1,2,1,2,1,2,1,2, BN on all but the first, LeakyReLU(0.2); then Linear(1024) -> LeakyReLU -> Linear(1).
    Deviation from the paper: an AdaptiveAvgPool2d(6) sits before the dense head, so any input size
    works (the paper's 96x96 input gives exactly 6x6 there); `input_size` is kept only as a record.
    """

    def __init__(self, in_channels: int = 1, input_size: int = 96, channels: int = 64):
        super().__init__()
        self.input_size = input_size
        self.config = dict(in_channels=in_channels, input_size=input_size, channels=channels)
        widths = [channels * m for m in (1, 1, 2, 2, 4, 4, 8, 8)]
        layers, prev = [], in_channels
        for i, width in enumerate(widths):
            layers.append(nn.Conv2d(prev, width, 3, stride=1 + i % 2, padding=1))
            if i > 0:
                layers.append(nn.BatchNorm2d(width))  # the paper has no BN on the first conv
            layers.append(nn.LeakyReLU(LEAKY_SLOPE, inplace=False))
            prev = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(6)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(prev * 6 * 6, 1024), nn.LeakyReLU(LEAKY_SLOPE),
                                  nn.Linear(1024, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))
