"""The seed paper's GAN: a reduced SRGAN for 3x SR (50x50 -> 150x150) of grayscale chest X-rays and brain MRI."""

import torch
import torch.nn as nn

from medsr.models.layers import (
    LEAKY_SLOPE,
    Dropout,
    check_input_size,
    conv_out_size,
    scale_factors,
    upsampler,
)


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(LEAKY_SLOPE, inplace=False)


class PaperResidualBlock(nn.Module):
    """conv3-BN-LeakyReLU-conv3-BN-LeakyReLU, then add the block input (the paper keeps the second activation)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), _lrelu(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), _lrelu(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class PaperGenerator(nn.Module):
    """Maps (B, C, h, w) in [-1, 1] to (B, C, h*scale, w*scale) in [-1, 1]; fully convolutional.

    head: conv(head_kernel) + LeakyReLU
    body: `num_blocks` PaperResidualBlocks, conv3 + LeakyReLU, plus a skip from the head output
    up:   conv + PixelShuffle + LeakyReLU blocks, one per factor of `scale`
    tail: conv(tail_kernel) to `in_channels` + tanh

    The paper's text says "three conv-pixelShuffle x2 blocks", which is 8x and contradicts its own
    50 -> 150 (3x) setup. So the upsampler is the factorisation of `scale`: the default scale=3 is
    one x3 block, and scale=8 gives the literal three x2 blocks.
    """

    SUPPORTED_SCALES = (2, 3, 4, 8)

    def __init__(self, scale: int = 3, in_channels: int = 1, channels: int = 64, num_blocks: int = 7,
                 head_kernel: int = 9, tail_kernel: int = 9):
        super().__init__()
        scale_factors(scale)  # fail early with MedsrError on an unsupported scale
        self.scale = scale
        self.config = dict(scale=scale, in_channels=in_channels, channels=channels, num_blocks=num_blocks,
                           head_kernel=head_kernel, tail_kernel=tail_kernel)
        # odd kernels with padding k//2 keep h, w unchanged, so only the upsampler changes the size
        self.head = nn.Sequential(nn.Conv2d(in_channels, channels, head_kernel, padding=head_kernel // 2), _lrelu())
        self.blocks = nn.Sequential(*[PaperResidualBlock(channels) for _ in range(num_blocks)])
        self.body_tail = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), _lrelu())
        self.upsample = upsampler(channels, scale, act="leaky_relu")
        self.tail = nn.Conv2d(channels, in_channels, tail_kernel, padding=tail_kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.head(x)
        body = self.body_tail(self.blocks(head)) + head  # long skip from the first layer
        return torch.tanh(self.tail(self.upsample(body)))


class PaperDiscriminator(nn.Module):
    """Scores (B, C, input_size, input_size) images; returns LOGITS of shape (B, 1).

    The paper ends in a sigmoid; here it is folded into BCEWithLogitsLoss in the loss, which is
    numerically stable (also under bf16 autocast). Apply torch.sigmoid yourself for probabilities.

    Layers, as the paper describes them (ch = `channels`, every conv 3x3 with padding 1):
      conv(ch, s1) -> Dropout -> LeakyReLU
      3x conv(s2) -> BN -> Dropout, widths ch, 2ch, 2ch (no activation)
      3x conv(s2) -> [BN, first only] -> Dropout -> LeakyReLU, widths 4ch, 4ch, 8ch
      flatten -> Linear(dense) -> LeakyReLU -> Linear(1)
    The dense head fixes the input size: a forward at any other size raises MedsrError.
    """

    def __init__(self, in_channels: int = 1, input_size: int = 150, channels: int = 64, dropout: float = 0.5,
                 dense: int = 1024):
        super().__init__()
        self.input_size = input_size
        self.config = dict(in_channels=in_channels, input_size=input_size, channels=channels, dropout=dropout,
                           dense=dense)
        ch = channels
        layers = [nn.Conv2d(in_channels, ch, 3, padding=1), Dropout(dropout), _lrelu()]
        size = input_size
        prev = ch
        # the paper literally has no activation in these three blocks; kept as described
        for width in (ch, 2 * ch, 2 * ch):
            layers += [nn.Conv2d(prev, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), Dropout(dropout)]
            size, prev = conv_out_size(size, 3, 2, 1), width
        for i, width in enumerate((4 * ch, 4 * ch, 8 * ch)):
            layers += [nn.Conv2d(prev, width, 3, stride=2, padding=1)]
            layers += [nn.BatchNorm2d(width)] if i == 0 else []  # only the first of these has BN
            layers += [Dropout(dropout), _lrelu()]
            size, prev = conv_out_size(size, 3, 2, 1), width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(prev * size * size, dense), _lrelu(), nn.Linear(dense, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(type(self).__name__, x, self.input_size)
        return self.head(self.features(x))
