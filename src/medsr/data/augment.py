"""Training-time augmentation of (lr, hr) pairs: flips, 90-degree rotations, CutBlur.

Every random draw comes from the caller's torch.Generator (the sampler's), so a resumed run
sees the same augmented batches as an uninterrupted one. lr and hr are transformed together.

CutBlur (Yoo, Ahn and Sohn, CVPR 2020) cuts a box from the LR image, upsampled to the HR size,
and pastes it into the HR image, or the other way round; the target stays the HR image. The
network learns not only how to super-resolve but where: a region that is already sharp must
stay as it is. That needs an input at the HR size, so, as the CutBlur authors did for EDSR and
RCAN, the HR-sized input is folded back onto the LR grid (`fold`, a pixel unshuffle: the s x s
HR pixels of each LR pixel become s*s channels) and the network's first layer takes s*s channels
(`EDSR(hr_input=True)`). A plain LR image, upsampled with nearest-neighbour, folds to the LR
image repeated in every channel, so such a network still upscales ordinary LR images.

Zero background (`zero_background`) cuts the HR image with a random ellipse, as skull stripping or
a template's brain mask cuts a scan: zero outside, the tissue as it was inside, and an edge that
ramps over 0.5 to 3 HR pixels (partial volume), with the LR made again from the cut HR image.
Scans with a skull end in a bright scalp line; without such pairs the network draws
that line inside every edge to a zero background.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medsr.data import degrade
from medsr.errors import MedsrError
from medsr.models.value_range import to_signed, to_unit


@dataclass(frozen=True)
class Augment:
    """Probabilities per image, from the recipe's `augment:` mapping."""

    hflip: float = 0.0
    vflip: float = 0.0
    rot90: float = 0.0  # a quarter turn (square images only)
    cutblur: float = 0.0
    cutblur_alpha: float = 0.7  # the box side is U(0.0x, alpha) of the image side, as in the paper
    zero_background: float = 0.0  # cut by a random soft-edged ellipse, zero outside (see the module's docstring)

    @classmethod
    def from_dict(cls, values: dict | None) -> "Augment":
        values = dict(values or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise MedsrError(f"unknown augment option(s) {unknown}; known: {', '.join(sorted(known))}")
        aug = cls(**values)
        for name in ("hflip", "vflip", "rot90", "cutblur", "zero_background"):
            if not 0 <= getattr(aug, name) <= 1:
                raise MedsrError(f"augment.{name} = {getattr(aug, name)} is a probability; use a value in [0, 1]")
        return aug


def geometric(lr: torch.Tensor, hr: torch.Tensor, aug: Augment, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips and quarter turns, the same for lr and hr, drawn per image. (B, C, h, w) each."""
    lr, hr = lr.clone(), hr.clone()
    draws = torch.rand(len(lr), 3, generator=generator)
    for i, (u_h, u_v, u_r) in enumerate(draws.tolist()):
        pair = [lr[i], hr[i]]
        if u_h < aug.hflip:
            pair = [x.flip(-1) for x in pair]
        if u_v < aug.vflip:
            pair = [x.flip(-2) for x in pair]
        if u_r < aug.rot90 and lr.shape[-1] == lr.shape[-2]:
            pair = [x.rot90(1, (-2, -1)) for x in pair]
        lr[i], hr[i] = pair
    return lr, hr


EDGE_RAMP = (0.5, 3.0)  # HR pixels over which a zero_background mask goes from 1 to 0


def ellipse_mask(size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """(H, W) in [0, 1]: 1 inside a random ellipse (centre anywhere in the image, semi-axes 0.3 to 1
    of its longer side, any angle), 0 outside, the edge a linear ramp over U(EDGE_RAMP) pixels of
    the (first-order) distance to it."""
    h, w = size
    cy, cx, a, b, angle, ramp = torch.rand(6, generator=generator).tolist()
    a, b = (0.3 + 0.7 * a) * max(h, w), (0.3 + 0.7 * b) * max(h, w)
    ramp = EDGE_RAMP[0] + (EDGE_RAMP[1] - EDGE_RAMP[0]) * ramp
    y, x = torch.meshgrid(torch.arange(h) + 0.5 - cy * h, torch.arange(w) + 0.5 - cx * w, indexing="ij")
    cos, sin = torch.cos(torch.tensor(angle * torch.pi)), torch.sin(torch.tensor(angle * torch.pi))
    u, v = (x * cos + y * sin) / a, (y * cos - x * sin) / b
    radius = torch.sqrt(u**2 + v**2).clamp_min(1e-6)
    gradient = torch.sqrt((u / a) ** 2 + (v / b) ** 2) / radius  # |grad radius|, so the distance is in pixels
    distance = (radius - 1) / gradient.clamp_min(1e-6)  # > 0 outside
    return (0.5 - distance / ramp).clamp(0, 1)


def zero_background(lr: torch.Tensor, hr: torch.Tensor, scale: int, prob: float,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability `prob` per image, the HR image times an `ellipse_mask` and its LR made again
    by the protocols' antialiased bicubic downscale. [-1, 1] in and out, (B, 1, h, w) each."""
    lr, hr = lr.clone(), hr.clone()
    for i, u in enumerate(torch.rand(len(hr), generator=generator).tolist()):
        if u < prob:
            cut = to_unit(hr[i : i + 1]) * ellipse_mask(hr.shape[-2:], generator)
            hr[i : i + 1] = to_signed(cut)
            lr[i : i + 1] = to_signed(degrade.downscale(cut, scale).clamp(0, 1))
    return lr, hr


def upsample_nearest(lr: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(lr, scale_factor=scale, mode="nearest")


def cutblur(lr: torch.Tensor, hr: torch.Tensor, scale: int, prob: float, alpha: float,
            generator: torch.Generator) -> torch.Tensor:
    """The HR-sized CutBlur input for each (lr, hr) image: the LR image upsampled (nearest) with an
    HR box pasted in, or the HR image with an LR box pasted in (even odds); with probability
    1 - prob the plain upsampled LR image. Box corners lie on the LR grid. The target is `hr`."""
    out = upsample_nearest(lr, scale)
    h, w = lr.shape[-2:]
    for i in range(len(lr)):
        u, direction, ratio, top_u, left_u = torch.rand(5, generator=generator).tolist()
        if u >= prob:
            continue
        bh, bw = max(1, round(h * ratio * alpha)), max(1, round(w * ratio * alpha))
        top, left = int(top_u * (h - bh + 1)), int(left_u * (w - bw + 1))
        box = (slice(None), slice(top * scale, (top + bh) * scale), slice(left * scale, (left + bw) * scale))
        if direction < 0.5:  # HR inside, LR around it
            out[i][box] = hr[i][box]
        else:  # LR inside, HR around it
            inner = out[i][box].clone()
            out[i] = hr[i]
            out[i][box] = inner
    return out


def fold(image: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C*scale^2, H/scale, W/scale): each LR pixel's s x s HR block as channels."""
    return F.pixel_unshuffle(image, scale)
