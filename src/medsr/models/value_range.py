"""The models' value convention: every generator takes and returns images in [-1, 1], as the seed
paper's tanh generator does; images everywhere else in medsr are in [0, 1]."""

from __future__ import annotations

import numpy as np
import torch

Pixels = torch.Tensor | np.ndarray


def to_signed(images01: Pixels) -> Pixels:
    """[0, 1] -> [-1, 1], the models' range."""
    return images01 * 2 - 1


def to_unit(images_signed: Pixels, clamp: bool = True) -> Pixels:
    """[-1, 1] -> [0, 1]; clamped unless `clamp` is False (losses keep the gradient outside the range)."""
    unit = (images_signed + 1) / 2
    if not clamp:
        return unit
    return unit.clamp(0, 1) if isinstance(unit, torch.Tensor) else np.clip(unit, 0.0, 1.0)
