"""A small DCGAN-style pair (Radford et al. 2016) for the seed paper's MNIST baseline (28x28 images)."""

import torch
import torch.nn as nn

from medsr.errors import MedsrError
from medsr.models.layers import LEAKY_SLOPE, check_input_size, conv_out_size


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(LEAKY_SLOPE, inplace=False)


class DCGANGenerator(nn.Module):
    """Maps (B, C, h, w) in [-1, 1] to (B, C, h*scale, w*scale) in [-1, 1]; fully convolutional.

    For MNIST the input is 28/scale pixels wide (14x14 for scale 2, 7x7 for scale 4).
    head: conv3 + LeakyReLU, then two conv3-BN-LeakyReLU
    up:   per factor 2, ConvTranspose2d(k4, s2, p1) + BN + ReLU (exactly doubles any size);
          scale 3 uses nearest x3 upsampling + conv3 + BN + ReLU (a k4/s2 transposed conv cannot do x3)
    tail: conv3 to `in_channels` + tanh
    """

    SUPPORTED_SCALES = (2, 3, 4)

    def __init__(self, scale: int = 2, in_channels: int = 1, channels: int = 64):
        super().__init__()
        if isinstance(scale, bool) or scale not in self.SUPPORTED_SCALES:
            raise MedsrError(f"unsupported scale {scale!r} for DCGANGenerator; supported: {list(self.SUPPORTED_SCALES)}")
        self.scale = scale
        self.config = dict(scale=scale, in_channels=in_channels, channels=channels)
        ch = channels
        self.head = nn.Sequential(
            nn.Conv2d(in_channels, ch, 3, padding=1), _lrelu(),
            nn.Conv2d(ch, ch, 3, padding=1), nn.BatchNorm2d(ch), _lrelu(),
            nn.Conv2d(ch, ch, 3, padding=1), nn.BatchNorm2d(ch), _lrelu(),
        )
        up = []
        if scale == 3:
            up += [nn.Upsample(scale_factor=3, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)]
            up += [nn.BatchNorm2d(ch), nn.ReLU()]
        else:
            for _ in range(scale // 2):  # 2 -> one step, 4 -> two steps
                up += [nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1), nn.BatchNorm2d(ch), nn.ReLU()]
        self.upsample = nn.Sequential(*up)
        self.tail = nn.Conv2d(ch, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.tail(self.upsample(self.head(x))))


class DCGANDiscriminator(nn.Module):
    """Scores (B, C, input_size, input_size) images; returns LOGITS of shape (B, 1).

    DCGAN ends in a sigmoid; here it is folded into BCEWithLogitsLoss in the loss, which is
    numerically stable (also under bf16 autocast). Apply torch.sigmoid yourself for probabilities.

    conv4 s2 (ch) + LeakyReLU -> conv4 s2 (2ch) + BN + LeakyReLU -> flatten -> Linear(1).
    The dense head fixes the input size: a forward at any other size raises MedsrError.
    """

    def __init__(self, in_channels: int = 1, input_size: int = 28, channels: int = 64):
        super().__init__()
        self.input_size = input_size
        self.config = dict(in_channels=in_channels, input_size=input_size, channels=channels)
        size = conv_out_size(conv_out_size(input_size, 4, 2, 1), 4, 2, 1)  # 28 -> 14 -> 7
        if size < 1:
            raise MedsrError(f"DCGANDiscriminator needs input_size >= 4, got {input_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), _lrelu(),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1), nn.BatchNorm2d(2 * channels), _lrelu(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * channels * size * size, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(type(self).__name__, x, self.input_size)
        return self.head(self.features(x))
