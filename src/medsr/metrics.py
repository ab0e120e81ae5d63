"""Image-quality metrics (torchmetrics does the maths; this file fixes the conventions).

Conventions, the same everywhere in medsr:
- images are float tensors (B, 1, H, W) in [0, 1], where 1.0 is the top of the image's true bit
  depth (255 for 8-bit, 4095 for 12-bit DICOM, ...), so data_range=1 is that bit depth's range;
- a border of `scale` pixels is cropped before measuring (the usual SR convention: borders
  depend on padding, not on the method);
- MS-SSIM uses the standard five scale weights, truncated to the scales the image size allows
  (torchmetrics accepts n scales when side // (n-1)**2 > 10), so the paper protocol's 150 px
  images (144 px after the border crop) use 4 scales, and images of 176 px or more use all 5.

PSNR and SSIM reward the average of all plausible details, which is a blur: they cannot tell
whether a method restores texture. `hf_energy_ratio` measures that (see docs/RESULTS.md).
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure as _ms_ssim,
)
from torchmetrics.functional.image import (
    peak_signal_noise_ratio as _psnr,
)
from torchmetrics.functional.image import (
    structural_similarity_index_measure as _ssim,
)

from medsr.models.layers import source_range

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def crop_border(images: torch.Tensor, border: int) -> torch.Tensor:
    return images[..., border:-border, border:-border] if border > 0 else images


def _prepare(sr: torch.Tensor, hr: torch.Tensor, border: int) -> tuple[torch.Tensor, torch.Tensor]:
    if sr.shape != hr.shape:
        raise ValueError(f"SR {tuple(sr.shape)} and HR {tuple(hr.shape)} differ in shape")
    sr, hr = sr.float().clamp(0, 1), hr.float().clamp(0, 1)
    return crop_border(sr, border), crop_border(hr, border)


def psnr(sr: torch.Tensor, hr: torch.Tensor, border: int = 0) -> torch.Tensor:
    """Per-image PSNR in dB, shape (B,)."""
    sr, hr = _prepare(sr, hr, border)
    return _psnr(sr, hr, data_range=1.0, reduction="none", dim=(1, 2, 3))


SSIM_WINDOW = 11  # torchmetrics' default Gaussian window (px): the smallest side ssim scores


def ssim(sr: torch.Tensor, hr: torch.Tensor, border: int = 0) -> torch.Tensor:
    """Per-image SSIM (SSIM_WINDOW-px Gaussian window, sigma 1.5), shape (B,)."""
    sr, hr = _prepare(sr, hr, border)
    return _ssim(sr, hr, data_range=1.0, reduction="none")


def ms_ssim(sr: torch.Tensor, hr: torch.Tensor, border: int = 0) -> torch.Tensor:
    """Per-image MS-SSIM, shape (B,); NaN when the image is too small for two scales."""
    sr, hr = _prepare(sr, hr, border)
    side = min(sr.shape[-2:])
    # the most scales torchmetrics accepts for this size (its rule: side // (n - 1)**2 > 10)
    scales = max((n for n in range(1, len(MS_SSIM_WEIGHTS) + 1) if side // max(1, n - 1) ** 2 > 10 and side >= 2**n), default=0)
    if scales < 2:
        return torch.full((sr.shape[0],), float("nan"))
    weights = MS_SSIM_WEIGHTS[:scales]
    weights = tuple(w / sum(weights) for w in weights)
    return _ms_ssim(sr, hr, data_range=1.0, betas=weights, reduction="none", normalize="relu")


def hf_energy_ratio(sr: torch.Tensor, hr: torch.Tensor, scale: int, border: int = 0) -> torch.Tensor:
    """Per-image share of the HR image's fine detail that the SR image has, shape (B,).

    The power of each image above the LR image's Nyquist frequency (radial frequency above
    0.5 / scale cycles per HR pixel: detail the LR image cannot hold, so the method had to
    restore it), over the HR image's power in that band. A Hann window stops the image edges
    from leaking into the band. 1.0: as much fine detail as the original; below 1: blurrier
    (bicubic is far below); above 1: more than the original (noise or invented texture).
    It measures amount, not correctness: read it next to PSNR/SSIM.
    """
    sr, hr = _prepare(sr, hr, border)
    h, w = sr.shape[-2:]
    window = torch.outer(torch.hann_window(h, periodic=False), torch.hann_window(w, periodic=False))
    radius = torch.sqrt(torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.fftfreq(w)[None, :] ** 2)
    band = radius > 0.5 / scale

    def band_power(x: torch.Tensor) -> torch.Tensor:
        x = (x - x.mean(dim=(-2, -1), keepdim=True)) * window
        return (torch.fft.fft2(x).abs() ** 2 * band).sum(dim=(-3, -2, -1))

    return band_power(sr) / band_power(hr).clamp_min(1e-12)


def edge_overshoot(sr: torch.Tensor, lr: torch.Tensor, scale: int, tolerance: float = 0.05) -> torch.Tensor:
    """Per-image share of output pixels that leave the range of their source neighbourhood, shape (B,).

    An output pixel's source neighbourhood is the 3x3 block of LR pixels around the one it lies in;
    it overshoots when it is above that block's maximum or below its minimum by more than
    `tolerance` of the LR image's own range. Ringing at hard edges (a bright-and-dark double line
    along a skull-stripped brain's border) overshoots; a faithful upscale of a smooth or flat
    region does not. Interpolation with negative lobes (bicubic, Lanczos) overshoots a little at
    steep edges too, so compare methods, not against zero.
    """
    sr, lr = sr.float(), lr.float()
    low, high = source_range(lr, scale)
    span = (lr.amax(dim=(-3, -2, -1)) - lr.amin(dim=(-3, -2, -1))).clamp_min(1e-12)[:, None, None, None]
    out = (sr > high + tolerance * span) | (sr < low - tolerance * span)
    return out.float().mean(dim=(-3, -2, -1))


def block_grid_ratio(images: torch.Tensor, block: int = 8) -> torch.Tensor:
    """Per-image jump ratio at a block grid, shape (B,): the mean absolute step between neighbouring
    pixels across the grid lines (between pixels block*k - 1 and block*k, rows and columns), over the
    mean step everywhere else. JPEG's 8x8 blocks give a ratio above 1; an image upscaled s times
    carries them on a grid of 8*s. About 1 means no visible grid."""
    images = images.float()
    steps = [images.diff(dim=-1).abs(), images.diff(dim=-2).abs().transpose(-2, -1)]  # steps along columns, then rows
    on_grid = [s[..., block - 1::block] for s in steps]
    off_mask = [torch.ones(s.shape[-1], dtype=torch.bool) for s in steps]
    for mask in off_mask:
        mask[block - 1::block] = False
    on = torch.cat([s.flatten(1) for s in on_grid], 1).mean(1)
    off = torch.cat([s[..., m].flatten(1) for s, m in zip(steps, off_mask)], 1).mean(1)
    return on / off.clamp_min(1e-12)


def zero_edge_distance(hr: np.ndarray, background: float = 0.01) -> np.ndarray:
    """Each pixel's distance (Euclidean, rounded; 0 in it) to the zero background of a 2-D image: the
    pixels within `background` of its range above its minimum (a skull-stripped volume's or a template's zero)."""
    from scipy import ndimage

    low, span = float(hr.min()), max(float(hr.max() - hr.min()), 1e-12)
    return ndimage.distance_transform_edt(hr > low + background * span).round()


def zero_edge_profile(sr: torch.Tensor, hr: torch.Tensor, depth: int = 6, background: float = 0.01) -> torch.Tensor:
    """Mean error (sr - hr) at each distance 1..depth pixels inside the edge of a zero background,
    as a share of hr's range, shape (depth,); nan where no pixel lies at that distance.

    Background: the pixels of `hr` within `background` of its range above its minimum (a
    skull-stripped volume's or a template's zero); the distance of every other pixel to it is
    taken in hr (Euclidean, rounded). A network that learnt the bright scalp line of unstripped
    scans draws it inside such edges: a positive error a few pixels in, where the truth has none.
    sr and hr are one 2-D image each (any leading singleton dimensions).
    """
    sr, hr = sr.float().squeeze().cpu().numpy(), hr.float().squeeze().cpu().numpy()
    span = max(float(hr.max() - hr.min()), 1e-12)
    distance = zero_edge_distance(hr, background)
    error = (sr - hr) / span
    return torch.tensor([float(error[distance == d].mean()) if (distance == d).any() else float("nan")
                         for d in range(1, depth + 1)])
