"""Losses: pixel losses for the generator, the adversarial BCE of the seed paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsr.errors import MedsrError


def pixel_loss(name: str):
    """The generator's reconstruction loss by name: mse (the paper), l1, or charbonnier."""
    if name == "mse":
        return F.mse_loss
    if name == "l1":
        return F.l1_loss
    if name == "charbonnier":
        return lambda sr, hr: torch.sqrt((sr - hr) ** 2 + 1e-6).mean()
    raise MedsrError(f"unknown pixel loss '{name}'; use mse, l1 or charbonnier")


def discriminator_bce(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """BCE of the discriminator: real -> 1, fake -> 0 (sigmoid folded in, for stability)."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return (real + fake) / 2


def generator_bce(fake_logits: torch.Tensor) -> torch.Tensor:
    """Adversarial term of the generator: make the discriminator call fakes real."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
