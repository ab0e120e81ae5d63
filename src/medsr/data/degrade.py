"""Degradations: how a low-resolution (LR) image is made from a high-resolution (HR) one.

All functions work on float tensors shaped (B, 1, H, W). Values stay in whatever range they
come in ([0, 1] or [-1, 1]); resizing is antialiased bicubic, the standard in SR benchmarks.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medsr.errors import MedsrError
from medsr.settings import PROTOCOLS

PAPER_HR_SIZE = 150
PAPER_LR_SIZE = 50
NATIVE_CAP = 1500  # the native protocol's largest HR side, which bounds evaluation time on huge radiographs
JPEG_PROTOCOL_QUALITY = 90  # native-jpeg's LR quality, a common export setting (this project's data: brain MRI 95, chest X-rays mostly 75)


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize of a (B, C, H, W) float batch to `size` = (h, w)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images.float(), size=size, mode="bicubic", antialias=True, align_corners=False)


def downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """LR = antialiased bicubic downscale of HR by an integer `scale` (HR sides must divide)."""
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not divisible by scale {scale}")
    return resize(hr, (h // scale, w // scale))


def upscale_baseline(lr: torch.Tensor, scale: int, method: str = "bicubic") -> torch.Tensor:
    """Classical interpolation baselines: nearest, bilinear, bicubic (torch), lanczos (Pillow)."""
    size = (lr.shape[-2] * scale, lr.shape[-1] * scale)
    if method == "nearest":
        return F.interpolate(lr.float(), size=size, mode="nearest")
    if method in ("bilinear", "bicubic"):
        return F.interpolate(lr.float(), size=size, mode=method, align_corners=False)
    if method == "lanczos":
        return _lanczos(lr, size)
    raise MedsrError(f"unknown interpolation '{method}'; use nearest, bilinear, bicubic or lanczos")


def _lanczos(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    out = np.empty((*images.shape[:2], *size), dtype=np.float32)
    for b in range(images.shape[0]):
        for c in range(images.shape[1]):
            plane = Image.fromarray(images[b, c].float().cpu().numpy(), mode="F")
            out[b, c] = np.asarray(plane.resize((size[1], size[0]), Image.Resampling.LANCZOS))
    return torch.from_numpy(out)


def center_square(array: np.ndarray) -> np.ndarray:
    """The paper's crop: the central M x M square, M = min(W, H)."""
    h, w = array.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return array[..., top : top + side, left : left + side]


def center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = array.shape[-2:]
    top, left = (h - height) // 2, (w - width) // 2
    return array[..., top : top + height, left : left + width]


def paper_pair(image01: np.ndarray, hr_size: int = PAPER_HR_SIZE, scale: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed paper's protocol for one 2-D [0, 1] image: (lr, hr), each (1, 1, h, w) in [0, 1].

    HR = the centre square (side min(W, H)) resized to hr_size x hr_size (150),
    LR = HR downscaled by `scale` (50x50). Training maps both to [-1, 1] as the paper does.
    """
    hr = resize(torch.from_numpy(center_square(image01).copy())[None, None], (hr_size, hr_size)).clamp(0, 1)
    return downscale(hr, scale).clamp(0, 1), hr


def native_hr(array01: np.ndarray, scale: int, cap: int | None = NATIVE_CAP) -> np.ndarray:
    """The `native` protocol's HR: the image at its own resolution, centre-cropped to at most `cap`
    pixels per side (None: no cap) and to a multiple of `scale`."""
    h, w = array01.shape[-2:]
    height = (h if cap is None else min(h, cap)) // scale * scale
    width = (w if cap is None else min(w, cap)) // scale * scale
    return center_crop(array01, height, width)


def make_pair(image01: np.ndarray, protocol: str, scale: int, *, native_cap: int | None = NATIVE_CAP) -> tuple[np.ndarray, np.ndarray]:
    """(lr, hr) float32 2-D [0, 1] arrays for one 2-D [0, 1] image under a protocol.

    paper:  the seed paper's pair: HR 150 px at x3; at other scales the nearest side the scale
            divides (x2: 150, x4: 148);
    native: HR = the image at its own resolution, centre-cropped to at most `native_cap` pixels per
            side (None: no cap) and to a multiple of the scale, LR = HR / scale;
    native-jpeg: the native pair with its LR saved as an 8-bit JPEG at quality 90 and read back,
            as a scan exported to JPEG arrives.
    """
    if protocol == "paper":
        lr, hr = paper_pair(image01, PAPER_HR_SIZE // scale * scale, scale)
    elif protocol in ("native", "native-jpeg"):
        hr = torch.from_numpy(native_hr(image01, scale, native_cap).copy())[None, None]
        lr = downscale(hr, scale).clamp(0, 1)
        if protocol == "native-jpeg":
            lr = jpeg_round_trip(lr, JPEG_PROTOCOL_QUALITY)
    else:
        raise MedsrError(f"unknown protocol '{protocol}'; use {', '.join(PROTOCOLS)}")
    return lr[0, 0].numpy(), hr[0, 0].numpy()


def jpeg_round_trip(image01: torch.Tensor, quality: int) -> torch.Tensor:
    """A (1, 1, h, w) [0, 1] image saved as an 8-bit gray JPEG at `quality` and decoded again."""
    pixels = (image01[0, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        out = np.asarray(decoded.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(out.copy())[None, None]
