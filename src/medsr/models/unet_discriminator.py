"""Real-ESRGAN's U-Net discriminator with spectral normalisation (Wang et al. 2021, "Real-ESRGAN:
Training Real-World Blind Super-Resolution with Pure Synthetic Data").

It judges every pixel rather than the whole image: an encoder of three stride-2 convs, a decoder
of three bilinear x2 upsamplings with skip connections back to the encoder, and a per-pixel
logit. Spectral norm on all but the first and last conv keeps the critic Lipschitz, which the
paper needs to train with such a strong discriminator.

What differs from the official module:
- any H, W: the input is padded to a multiple of 8 (reflect, or edge repetition where the input
  is too small for reflect) and the logits are cropped back (the original needs multiples of 8);
- it uses torch.nn.utils.parametrizations.spectral_norm, so the state-dict keys of the SN convs
  are convN.parametrizations.weight.original (the official weights say convN.weight_orig);
  the layer names conv0..conv9 are the official ones;
- no in-place activations (autograd through the skip additions stays simple);
- `input_size` is only recorded: the network is fully convolutional.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from medsr.models.layers import LEAKY_SLOPE

# three stride-2 convs: the encoder halves the size three times
MULTIPLE = 8


class UNetDiscriminatorSN(nn.Module):
    """Scores (B, C, H, W) images; returns per-pixel LOGITS (B, 1, H, W) (no sigmoid).

    conv0 (3x3, plain) -> conv1..3 (4x4 stride 2, SN; widths 2c, 4c, 8c)
    -> [bilinear x2 -> conv4..6 (3x3, SN; widths 4c, 2c, c) (+ encoder skip)] x 3
    -> conv7, conv8 (3x3, SN) -> conv9 (3x3 to 1 channel, plain). LeakyReLU(0.2) after every conv
    but the last; the SN convs have no bias, as in the original.
    """

    def __init__(self, in_channels: int = 1, input_size: int = 128, channels: int = 64, skip_connection: bool = True):
        super().__init__()
        self.input_size = input_size
        self.skip_connection = skip_connection
        self.config = dict(in_channels=in_channels, input_size=input_size, channels=channels, skip_connection=skip_connection)
        c = channels

        def sn_conv(cin, cout, kernel, stride):
            return spectral_norm(nn.Conv2d(cin, cout, kernel, stride, padding=1, bias=False))

        self.conv0 = nn.Conv2d(in_channels, c, 3, 1, padding=1)
        self.conv1 = sn_conv(c, 2 * c, 4, 2)
        self.conv2 = sn_conv(2 * c, 4 * c, 4, 2)
        self.conv3 = sn_conv(4 * c, 8 * c, 4, 2)
        self.conv4 = sn_conv(8 * c, 4 * c, 3, 1)
        self.conv5 = sn_conv(4 * c, 2 * c, 3, 1)
        self.conv6 = sn_conv(2 * c, c, 3, 1)
        self.conv7 = sn_conv(c, c, 3, 1)
        self.conv8 = sn_conv(c, c, 3, 1)
        self.conv9 = nn.Conv2d(c, 1, 3, 1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % MULTIPLE, -w % MULTIPLE
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"  # reflect cannot pad past the far edge
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)

        def act(t):
            return F.leaky_relu(t, LEAKY_SLOPE)

        def up(t):
            return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)

        x0 = act(self.conv0(x))
        x1 = act(self.conv1(x0))
        x2 = act(self.conv2(x1))
        x3 = act(self.conv3(x2))

        x4 = act(self.conv4(up(x3)))
        if self.skip_connection:
            x4 = x4 + x2
        x5 = act(self.conv5(up(x4)))
        if self.skip_connection:
            x5 = x5 + x1
        x6 = act(self.conv6(up(x5)))
        if self.skip_connection:
            x6 = x6 + x0

        out = act(self.conv7(x6))
        out = act(self.conv8(out))
        return self.conv9(out)[..., :h, :w]
