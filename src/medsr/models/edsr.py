"""A compact EDSR-style generator: medsr's own PSNR-oriented default.

Differences from the paper generator, each for quality per CPU-second:
- no batch norm (it hurts SR: it normalises away the absolute intensities the output needs);
- the network learns only the residual over bicubic upsampling (a global skip), so it starts
  at bicubic quality and trains much faster;
- no tanh: a linear output, clamped to the valid range at inference;
- `clamp_margin` (optional): every output pixel is kept within the range of its source pixel's
  3x3 LR neighbourhood, widened by `clamp_margin` of the full range. Bright or dark lines beyond
  what the input holds nearby (ringing at hard edges, such as a skull-stripped brain's border)
  cannot appear, and a flat neighbourhood (a zero background) keeps its value exactly. The clamp
  is part of the function trained, so the network learns under it.

`hr_input=True` makes the first conv take the HR-sized CutBlur input folded onto the LR grid
(s*s channels per image channel, see medsr.data.augment); a plain LR input still works: it is
repeated into those channels, which is exactly the fold of its nearest-neighbour upsampling.

There is no activation between the upsampling convs and the tail conv, so together they are one
linear map, which `fused_for_inference` folds into a single small conv on the LR grid followed by
a pixel shuffle (x3 on a 512x512 input: 50 GMAC -> 3 GMAC, a third of the whole model's work).
`upsampler="fused"` trains that small conv directly (k = 2n + 1 for n upsampling convs plus the
tail; 5x5 at x2 and x3, 7x7 at x4): the same linear maps away from the image border, with a third
less work per training step. `with_fused_upsampler` converts a trained "convs" model to it.

`deepened(num_blocks)` grows a trained model deeper without changing what it computes: the new
residual blocks come after the trained ones with their last conv at zero, so each starts as the
identity. A larger model trained from it starts at the smaller one's quality (medsr's `large`).
"""

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsr.models.layers import scale_factors, source_range

UPSAMPLERS = ("convs", "fused")


class ResBlock(nn.Module):
    def __init__(self, channels: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, padding=1))
        self.res_scale = res_scale
        # body(x) is a new tensor (a conv's output), so the sum can go into it: one feature-map buffer fewer
        # per block (50 MB in float32 for a 512x512 scan), the same numbers. medsr.models.int8 turns this off
        # to trace the body with FX, whose quantization patterns match the residual `x + body`.
        self.sum_in_place = True

    def forward(self, x):
        body = self.body(x)
        if self.res_scale != 1:  # no multiply by 1 (2 % of inference)
            body = body * self.res_scale
        return body.add_(x) if self.sum_in_place else x + body


class EDSR(nn.Module):
    SUPPORTED_SCALES = (2, 3, 4, 8)

    def __init__(self, scale: int = 3, in_channels: int = 1, channels: int = 48, num_blocks: int = 8, res_scale: float = 1.0,
                 hr_input: bool = False, clamp_margin: float | None = None, upsampler: str = "convs"):
        super().__init__()
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"unknown upsampler '{upsampler}'; use {' or '.join(UPSAMPLERS)}")
        factors = scale_factors(scale)
        self.scale = scale
        self.in_channels, self.hr_input, self.clamp_margin = in_channels, hr_input, clamp_margin
        self.config = dict(scale=scale, in_channels=in_channels, channels=channels, num_blocks=num_blocks, res_scale=res_scale,
                           hr_input=hr_input)
        # only when set, so older checkpoints' configs stay as they were
        self.config.update({k: v for k, v in (("clamp_margin", clamp_margin), ("upsampler", upsampler)) if v not in (None, "convs")})
        self.head = nn.Conv2d(in_channels * (scale * scale if hr_input else 1), channels, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(channels, res_scale) for _ in range(num_blocks)], nn.Conv2d(channels, channels, 3, padding=1))
        if upsampler == "fused":
            reach = len(factors) + 1  # LR pixels reached by the upsampling convs and the tail, one each
            last = nn.Conv2d(channels, in_channels * scale * scale, 2 * reach + 1, padding=reach)
            self.upsample, self.tail = nn.Sequential(last, nn.PixelShuffle(scale)), nn.Identity()
        else:
            up = []
            for f in factors:
                up += [nn.Conv2d(channels, channels * f * f, 3, padding=1), nn.PixelShuffle(f)]
            self.upsample = nn.Sequential(*up)
            self.tail = last = nn.Conv2d(channels, in_channels, 3, padding=1)
        nn.init.zeros_(last.weight)  # start exactly at bicubic
        nn.init.zeros_(last.bias)

    def forward(self, lr):
        x = lr
        if self.hr_input:
            b, c, h, w = lr.shape
            if c == self.in_channels:  # a plain LR image
                x = lr.repeat_interleave(self.scale**2, dim=1)
            else:  # a folded HR-sized input: its LR view is the mean of each s x s block
                lr = lr.view(b, self.in_channels, self.scale**2, h, w).mean(2)
        base = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        feat = self.head(x)
        body = self.body(feat)  # a new tensor (its closing conv's output), so the skip is summed into it
        feat = body if getattr(self.body, "adds_input", False) else body.add_(feat)  # medsr.models.int8's body adds it itself
        out = base + self.tail(self.upsample(feat))
        return out if self.clamp_margin is None else neighbourhood_clamp(out, lr, self.scale, self.clamp_margin)

    def fused_for_inference(self) -> "EDSR":
        """A copy computing the same function faster: upsample + tail become one conv on the LR
        grid (kernel 2n+1 for n convs) + PixelShuffle(scale). Equal up to float rounding."""
        if self.config.get("upsampler") == "fused":
            return copy.deepcopy(self).eval()
        fused = copy.deepcopy(self)
        fused.upsample = FusedUpsample(self._fused_conv(), copy.deepcopy(nn.Sequential(self.upsample, self.tail)), self.scale,
                                       self._reach())
        fused.tail = nn.Identity()
        return fused.eval()

    def with_fused_upsampler(self) -> "EDSR":
        """This model as upsampler="fused" (to train on): the same function away from the image border,
        where the fused conv pads the LR grid with zeros and the original convs the finer grids."""
        if self.config.get("upsampler") == "fused":
            return copy.deepcopy(self)
        out = EDSR(**{**self.config, "upsampler": "fused"}).to(next(self.parameters()).device)
        out.clamp_margin = self.clamp_margin
        out.load_state_dict({k: v for k, v in self.state_dict().items() if k.startswith(("head.", "body."))}, strict=False)
        conv = self._fused_conv()
        out.upsample[0].load_state_dict(conv.state_dict())
        return out

    def deepened(self, num_blocks: int) -> "EDSR":
        """This model with `num_blocks` residual blocks: the same function, the extra blocks identities
        (their last conv zero) placed after the trained ones, before the body's closing conv."""
        old = self.config["num_blocks"]
        if num_blocks < old:
            raise ValueError(f"deepened: {num_blocks} blocks is fewer than this model's {old}")
        out = EDSR(**{**self.config, "num_blocks": num_blocks}).to(next(self.parameters()).device)
        out.clamp_margin = self.clamp_margin
        closing = f"body.{old}."  # the body's closing conv moves to the end
        out.load_state_dict({k.replace(closing, f"body.{num_blocks}.", 1) if k.startswith(closing) else k: v
                             for k, v in self.state_dict().items()}, strict=False)
        with torch.no_grad():
            for block in out.body[old:num_blocks]:
                nn.init.zeros_(block.body[-1].weight)
                nn.init.zeros_(block.body[-1].bias)
        return out

    def _reach(self) -> int:
        return sum(isinstance(m, nn.Conv2d) for m in nn.Sequential(self.upsample, self.tail).modules())

    def _fused_conv(self) -> nn.Conv2d:
        """upsample + tail (the "convs" upsampler) as one conv on the LR grid, before PixelShuffle(scale)."""
        path = nn.Sequential(self.upsample, self.tail)
        channels, s = self.config["channels"], self.scale
        reach = self._reach()  # LR pixels the path can reach, at most 1 per conv
        k, side, centre = 2 * reach + 1, 4 * reach + 1, 2 * reach
        param = next(self.parameters())
        # The map is linear and shifts with the LR grid, so one unit impulse per channel at the centre
        # (plus an all-zero input for the bias) gives every weight: the fused kernel's tap at offset d
        # is the impulse's response in the s x s output block of the LR pixel d - reach away.
        probes = torch.zeros(channels + 1, channels, side, side, dtype=param.dtype, device=param.device)
        probes[torch.arange(channels), torch.arange(channels), centre, centre] = 1.0
        with torch.no_grad():
            out = path(probes)[:, 0]  # (channels + 1, side * s, side * s)
            blocks = (out[:-1] - out[-1]).reshape(channels, side, s, side, s).permute(0, 2, 4, 1, 3)  # (c, i, j, y, x)
            taps = centre + reach - torch.arange(k, device=param.device)  # the LR block that tap d reads
            weight = blocks[:, :, :, taps][:, :, :, :, taps]  # (c, i, j, dy, dx)
            conv = nn.Conv2d(channels, s * s, k, padding=reach).to(param.device, param.dtype)
            conv.weight.copy_(weight.permute(1, 2, 0, 3, 4).reshape(s * s, channels, k, k))  # phases in PixelShuffle's order
            conv.bias.copy_(out[-1, centre * s:(centre + 1) * s, centre * s:(centre + 1) * s].reshape(s * s))
        return conv


def neighbourhood_clamp(sr: torch.Tensor, lr: torch.Tensor, scale: int, margin: float) -> torch.Tensor:
    """`sr` kept within [min - m, max + m] of each pixel's 3x3 source neighbourhood in `lr`; values
    are in [-1, 1], so `margin` (a share of the full range) is m = 2 * margin. Where the neighbourhood
    is flat (a zero background, a saturated area) the output is its value exactly, in `lr`'s dtype, so
    a skull-stripped volume's background stays 0 whatever the precision."""
    low, high = source_range(lr, scale)
    kept = torch.minimum(torch.maximum(sr, (low - 2 * margin).to(sr.dtype)), (high + 2 * margin).to(sr.dtype))
    return torch.where(high > low, kept, low)


class FusedUpsample(nn.Module):
    """upsample + tail as one LR-grid conv + pixel shuffle. The original layers pad with zeros on
    the finer grids, which an LR-grid conv cannot mimic, so the outermost LR pixel's outputs on
    each side are recomputed with them from a thin strip (about 2 % of the work at 512 px)."""

    def __init__(self, conv: nn.Conv2d, original: nn.Module, scale: int, reach: int):
        super().__init__()
        self.conv, self.original, self.scale, self.reach = conv, original, scale, reach

    def forward(self, feat):
        h, w = feat.shape[-2:]
        strip, s = 2 * self.reach + 1, self.scale  # a strip's far edge disturbs only outputs `reach` pixels in
        if min(h, w) <= 2 * strip:
            return self.original(feat)
        out = F.pixel_shuffle(self.conv(feat), s)
        out[..., :s, :] = self.original(feat[..., :strip, :])[..., :s, :]
        out[..., -s:, :] = self.original(feat[..., -strip:, :])[..., -s:, :]
        out[..., :, :s] = self.original(feat[..., :, :strip])[..., :, :s]
        out[..., :, -s:] = self.original(feat[..., :, -strip:])[..., :, -s:]
        return out
