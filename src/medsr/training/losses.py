"""Losses: pixel losses, adversarial losses (the seed paper's BCE, ESRGAN's relativistic average),
perceptual losses (VGG19 features from a local weights file, or MS-SSIM + gradients, which need none)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from medsr import metrics
from medsr.errors import MedsrError
from medsr.models.value_range import to_unit
from medsr.zoo import read_weights

PIXEL_LOSSES = ("mse", "l1", "charbonnier")


def pixel_loss(name: str):
    """The generator's reconstruction loss by name: mse (the paper), l1, or charbonnier."""
    if name == "mse":
        return F.mse_loss
    if name == "l1":
        return F.l1_loss
    if name == "charbonnier":
        return lambda sr, hr: torch.sqrt((sr - hr) ** 2 + 1e-6).mean()
    raise MedsrError(f"unknown pixel loss '{name}'; use {', '.join(PIXEL_LOSSES)}")


def discriminator_bce(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """BCE of the discriminator: real -> 1, fake -> 0 (sigmoid folded in, for stability)."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return (real + fake) / 2


def generator_bce(fake_logits: torch.Tensor) -> torch.Tensor:
    """Adversarial term of the generator: make the discriminator call fakes real."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_ragan(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Relativistic average GAN loss of the discriminator (ESRGAN): real images should look more
    real than the average fake, and fakes less real than the average real image."""
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    return (F.binary_cross_entropy_with_logits(real_rel, torch.ones_like(real_rel))
            + F.binary_cross_entropy_with_logits(fake_rel, torch.zeros_like(fake_rel))) / 2


def generator_ragan(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's side of the relativistic average loss: the same, with the labels swapped."""
    return discriminator_ragan(fake_logits, real_logits)


GAN_LOSSES = ("bce", "ragan")


def discriminator_gan(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return discriminator_ragan(real_logits, fake_logits) if kind == "ragan" else discriminator_bce(real_logits, fake_logits)


def generator_gan(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return generator_ragan(real_logits, fake_logits) if kind == "ragan" else generator_bce(fake_logits)


# ---- perceptual losses -----------------------------------------------------------------------

# torchvision's vgg19().features: conv widths, "M" = max pool. Layer names follow the papers:
# conv5_4 is the 4th conv of block 5 before its ReLU (ESRGAN), relu5_4 after it (SRGAN).
VGG19_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def vgg19_modules() -> list[tuple[str, torch.nn.Module]]:
    """torchvision's vgg19().features as (name, module) pairs; the position is the state-dict index."""
    modules, block, conv, in_channels = [], 1, 0, 3
    for item in VGG19_LAYOUT:
        if item == "M":
            modules.append((f"pool{block}", torch.nn.MaxPool2d(2)))
            block, conv = block + 1, 0
        else:
            conv += 1
            modules += [(f"conv{block}_{conv}", torch.nn.Conv2d(in_channels, item, 3, padding=1)),
                        (f"relu{block}_{conv}", torch.nn.ReLU())]
            in_channels = item
    return modules


class VGG19Features(torch.nn.Module):
    """VGG19's convolutional part, up to the deepest requested layer, with weights from a local
    file in torchvision's `vgg19` state-dict layout (`features.N.weight`; .pth or .safetensors).
    Gray [-1, 1] images are repeated to RGB and normalised with the ImageNet statistics."""

    def __init__(self, weights: str | None, layers: list[str] = ("conv5_4",)):
        super().__init__()
        modules = vgg19_modules()
        names = [name for name, _ in modules]
        unknown = [name for name in layers if name not in names]
        if unknown:
            raise MedsrError(f"unknown VGG19 layer(s) {unknown}; use names like conv5_4, relu5_4, relu2_2")
        self.layers = list(layers)
        last = max(names.index(name) for name in layers)
        self.names = names[: last + 1]
        self.features = torch.nn.Sequential(*[module for _, module in modules[: last + 1]])
        if weights is not None:
            self.load_weights(weights)
        self.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def load_weights(self, path: str) -> None:
        file = Path(path)
        if not file.is_file():
            raise MedsrError(f"{file}: VGG19 weights not found; pass a local copy of torchvision's vgg19 state dict "
                             "(.pth or .safetensors) as vgg_weights, or use perceptual_loss: ssim-grad, which needs no weights")
        state = read_weights(file)
        state = state.get("state_dict", state)
        try:
            self.features.load_state_dict({k: state[f"features.{k}"] for k in self.features.state_dict()})
        except (KeyError, RuntimeError) as err:
            raise MedsrError(f"{file}: not torchvision's vgg19 layout ({str(err).splitlines()[0]}); "
                             "pass the state dict of torchvision.models.vgg19") from None

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (to_unit(images, clamp=False).expand(-1, 3, -1, -1) - self.mean) / self.std
        out = []
        for name, module in zip(self.names, self.features):
            x = module(x)
            if name in self.layers:
                out.append(x)
        return out


class PerceptualLoss(torch.nn.Module):
    """L1 distance between VGG19 features of SR and HR, averaged over the chosen layers."""

    def __init__(self, weights: str | None, layers: list[str] = ("conv5_4",)):
        super().__init__()
        self.vgg = VGG19Features(weights, layers)

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        pairs = zip(self.vgg(sr), self.vgg(hr.detach()))
        return sum(F.l1_loss(a.float(), b.float()) for a, b in pairs) / len(self.vgg.layers)


def image_gradients(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return images[..., :, 1:] - images[..., :, :-1], images[..., 1:, :] - images[..., :-1, :]


class SSIMGradientLoss(torch.nn.Module):
    """A structure-and-edges loss that needs no downloaded network: (1 - MS-SSIM) plus the L1
    distance between horizontal and vertical image gradients. MS-SSIM compares local contrast
    and structure at several scales; the gradient term rewards edges of the right strength,
    which a pixel loss alone lets blur."""

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        sr01, hr01 = to_unit(sr.float(), clamp=False), to_unit(hr.float(), clamp=False)
        structure = 1 - metrics.ms_ssim(sr01, hr01).nan_to_num(1.0).mean()
        edges = sum(F.l1_loss(a, b) for a, b in zip(image_gradients(sr01), image_gradients(hr01)))
        return structure + edges


PERCEPTUAL_LOSSES = ("vgg19", "ssim-grad")


def perceptual_loss(kind: str, vgg_weights: str | None = None, vgg_layers: list[str] = ("conv5_4",)) -> torch.nn.Module:
    """The perceptual term by name: vgg19 (weights from a local file) or ssim-grad (no weights)."""
    if kind == "vgg19":
        if vgg_weights is None:
            raise MedsrError("perceptual_loss vgg19 needs vgg_weights: a local copy of torchvision's vgg19 state dict "
                             "(medsr downloads nothing); or use perceptual_loss: ssim-grad")
        return PerceptualLoss(vgg_weights, list(vgg_layers))
    if kind == "ssim-grad":
        return SSIMGradientLoss()
    raise MedsrError(f"unknown perceptual_loss '{kind}'; use {' or '.join(PERCEPTUAL_LOSSES)}")
