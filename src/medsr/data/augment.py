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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medsr.errors import MedsrError


@dataclass(frozen=True)
class Augment:
    """Probabilities per image, from the recipe's `augment:` mapping."""

    hflip: float = 0.0
    vflip: float = 0.0
    rot90: float = 0.0  # a quarter turn (square images only)
    cutblur: float = 0.0
    cutblur_alpha: float = 0.7  # the box side is U(0.0x, alpha) of the image side, as in the paper

    @classmethod
    def from_dict(cls, values: dict | None) -> "Augment":
        values = dict(values or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise MedsrError(f"unknown augment option(s) {unknown}; known: {', '.join(sorted(known))}")
        aug = cls(**values)
        for name in ("hflip", "vflip", "rot90", "cutblur"):
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
