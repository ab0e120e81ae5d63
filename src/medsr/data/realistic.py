"""Real-ESRGAN's second-order degradation model: blur, resize, noise and JPEG, applied twice.

Wang, Xie, Dong and Shan 2021, "Real-ESRGAN: Training Real-World Blind Super-Resolution with
Pure Synthetic Data". The defaults of `RealESRGANOptions` are those of the official training
options (options/train_realesrgan_x4plus.yml) and of its dataset class (kernel sizes 7..21,
sinc cut-offs); the order of the steps follows its model's `feed_data`:

    blur -> random resize -> Gaussian or Poisson noise -> JPEG                   (first order)
    blur (p=0.8) -> random resize -> noise                                       (second order)
    [resize to the LR size + sinc filter, JPEG] or [JPEG, resize + sinc filter]  (half and half)
    clamp and round to 8-bit levels

What differs from the official pipeline:
- gray only: one channel, so the noise is always gray, and the JPEG is an 8-bit gray JPEG made
  by Pillow at an integer quality (the original uses a differentiable JPEG at a float quality);
- every random choice is drawn per image from one torch.Generator, so a run resumes exactly;
  the original draws the resize and noise choices once per batch and mixes batches in a
  training-pair pool to make up for it (not needed here);
- no unsharp masking of the HR image: sharpening the target is the trainer's business;
- the work runs on the CPU, one image at a time (sizes differ between images mid-way), and the
  result goes back to the input's device;
- reflect padding needs an image larger than half the kernel; smaller images (only seen in
  tests) are padded by repeating the edge pixels instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from medsr.data.degrade import jpeg_round_trip
from medsr.errors import MedsrError

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass
class RealESRGANOptions:
    """The random ranges of the degradation; names follow the official options file (a suffix 2 = second order).

    Noise sigmas are in 8-bit units (x/255); probabilities of resize are (up, down, keep).
    Lists (e.g. from JSON) are accepted and stored as tuples.
    """

    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    resize_modes: tuple[str, ...] = RESIZE_MODES
    # the first degradation
    kernel_list: tuple[str, ...] = KERNEL_TYPES
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    jpeg_range: tuple[float, float] = (30.0, 95.0)
    # the second degradation
    second_blur_prob: float = 0.8
    kernel_list2: tuple[str, ...] = KERNEL_TYPES
    kernel_prob2: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob2: float = 0.1
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    betag_range2: tuple[float, float] = (0.5, 4.0)
    betap_range2: tuple[float, float] = (1.0, 2.0)
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    jpeg_range2: tuple[float, float] = (30.0, 95.0)
    # the last step
    final_sinc_prob: float = 0.8

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))
        if not self.kernel_sizes or any(not isinstance(k, int) or k < 1 or k % 2 == 0 for k in self.kernel_sizes):
            raise MedsrError(f"kernel_sizes must be positive odd integers, got {self.kernel_sizes}; use e.g. (7, 9, ..., 21)")
        _check_choices("resize_modes", self.resize_modes, RESIZE_MODES)
        for suffix in ("", "2"):
            kinds, probs = getattr(self, "kernel_list" + suffix), getattr(self, "kernel_prob" + suffix)
            _check_choices("kernel_list" + suffix, kinds, KERNEL_TYPES)
            _check_weights("kernel_prob" + suffix, probs, len(kinds))
            _check_weights("resize_prob" + suffix, getattr(self, "resize_prob" + suffix), 3)
            for name in ("blur_sigma", "betag_range", "betap_range", "resize_range", "noise_range", "poisson_scale_range", "jpeg_range"):
                _check_range(name + suffix, getattr(self, name + suffix))
            low, high = getattr(self, "jpeg_range" + suffix)
            if low < 1 or high > 100:
                raise MedsrError(f"jpeg_range{suffix} must lie within [1, 100], got {(low, high)}; use e.g. (30, 95)")
            if getattr(self, "blur_sigma" + suffix)[0] <= 0:
                raise MedsrError(f"blur_sigma{suffix} must be > 0, got {getattr(self, 'blur_sigma' + suffix)}; use e.g. (0.2, 3)")


def _check_choices(name, values, known):
    unknown = [v for v in values if v not in known]
    if not values or unknown:
        raise MedsrError(f"{name} has unknown or no entries {unknown}; choose from {list(known)}")


def _check_weights(name, weights, count):
    if len(weights) != count or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise MedsrError(f"{name} must be {count} non-negative weights with a positive sum, got {weights}")


def _check_range(name, pair):
    if len(pair) != 2 or pair[0] > pair[1] or pair[0] < 0:
        raise MedsrError(f"{name} must be (low, high) with 0 <= low <= high, got {pair}")


@dataclass(frozen=True)
class _Stage:
    """One order's settings, so that the first and second order share their code."""

    kernel_list: tuple
    kernel_prob: tuple
    sinc_prob: float
    blur_sigma: tuple
    betag_range: tuple
    betap_range: tuple
    resize_prob: tuple
    resize_range: tuple
    gaussian_noise_prob: float
    noise_range: tuple
    poisson_scale_range: tuple
    jpeg_range: tuple


def _stage(options: RealESRGANOptions, suffix: str) -> _Stage:
    return _Stage(**{f.name: getattr(options, f.name + suffix) for f in fields(_Stage)})


# ----------------------------------------------------------------------------------------------
# Kernels: (k, k) float32 tensors that sum to 1, centred on the middle pixel.
# ----------------------------------------------------------------------------------------------


def _offsets(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) offsets from the centre of a size x size kernel, float64."""
    ax = torch.arange(size, dtype=torch.float64) - size // 2
    return torch.meshgrid(ax, ax, indexing="ij")


def _mahalanobis(size: int, sigma_x: float, sigma_y: float | None, theta: float) -> torch.Tensor:
    """x^T Sigma^-1 x at each kernel offset; Sigma has std devs sigma_x, sigma_y along axes turned by theta."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    yy, xx = _offsets(size)
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy  # the offset in the kernel's own (rotated) axes
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalised(kernel: torch.Tensor) -> torch.Tensor:
    return (kernel / kernel.sum()).float()


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> torch.Tensor:
    """Bivariate Gaussian; isotropic when sigma_y is None (or equal to sigma_x)."""
    return _normalised(torch.exp(-0.5 * _mahalanobis(size, sigma_x, sigma_y, theta)))


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0,
                                beta: float = 1.0) -> torch.Tensor:
    """exp(-(x^T Sigma^-1 x)^beta / 2): beta < 1 gives heavier tails, beta > 1 a flatter top; 1 is Gaussian."""
    return _normalised(torch.exp(-0.5 * _mahalanobis(size, sigma_x, sigma_y, theta).pow(beta)))


def plateau_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0,
                   beta: float = 1.0) -> torch.Tensor:
    """1 / (1 + (x^T Sigma^-1 x)^beta): a flat top with a slow fall-off."""
    return _normalised(1.0 / (_mahalanobis(size, sigma_x, sigma_y, theta).pow(beta) + 1.0))


def bessel_j1(x: torch.Tensor) -> torch.Tensor:
    """The Bessel function J1, float64, from Bessel's integral J1(x) = mean over a period of cos(t - x sin t).

    The integrand is smooth and periodic, so the trapezoid rule converges exponentially once
    the nodes outnumber |x|; so the kernel is made in torch, without a round trip through scipy.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    nodes = 64 + 2 * math.ceil(float(x.abs().max())) if x.numel() else 1
    t = torch.arange(nodes, dtype=torch.float64) * (2 * math.pi / nodes)
    return torch.cos(t - x.unsqueeze(-1) * torch.sin(t)).mean(-1)


def sinc_kernel(size: int, cutoff: float) -> torch.Tensor:
    """Circular low-pass ("2-D sinc") filter with cut-off `cutoff` in radians per pixel (pi = Nyquist).

    The ideal disc filter's impulse response cutoff * J1(cutoff * r) / (2 pi r), cut to size x size;
    its ringing mimics the overshoot of real sharpening and resampling.
    """
    yy, xx = _offsets(size)
    r = torch.sqrt(xx**2 + yy**2)
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    kernel = cutoff * bessel_j1(cutoff * safe_r) / (2 * math.pi * safe_r)
    kernel = torch.where(r > 0, kernel, torch.full_like(r, cutoff**2 / (4 * math.pi)))  # the limit at r = 0
    return _normalised(kernel)


def filter2d(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Filter every channel of (B, C, H, W) with one odd (k, k) kernel; same size out, reflect padding."""
    k = kernel.shape[-1]
    pad = k // 2
    channels = images.shape[1]
    mode = "reflect" if pad < min(images.shape[-2:]) else "replicate"  # reflect cannot pad past the far edge
    padded = F.pad(images, (pad, pad, pad, pad), mode=mode)
    weight = kernel.to(images.dtype).expand(channels, 1, k, k)
    return F.conv2d(padded, weight, groups=channels)


# ----------------------------------------------------------------------------------------------
# Random draws, all from the caller's generator.
# ----------------------------------------------------------------------------------------------


def _rand(g: torch.Generator) -> float:
    return torch.rand((), generator=g, dtype=torch.float64).item()


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * _rand(g)


def _pick(g: torch.Generator, items, weights=None):
    """One of `items`, with probability proportional to `weights` (equal when None)."""
    weights = [1.0] * len(items) if weights is None else list(weights)
    target = _rand(g) * sum(weights)
    chosen = None
    for item, weight in zip(items, weights):
        if weight > 0:
            chosen = item
            if target < weight:
                break
        target -= weight
    return chosen


def _beta(g: torch.Generator, beta_range) -> float:
    # the official sampler: half the draws in [low, 1], half in [1, high] (so betap [1, 2] gives 1 half the time)
    low, high = beta_range
    return _uniform(g, low, 1.0) if _rand(g) < 0.5 else _uniform(g, 1.0, high)


def _random_blur_kernel(g: torch.Generator, stage: _Stage, sizes) -> torch.Tensor:
    size = _pick(g, sizes)
    if _rand(g) < stage.sinc_prob:
        low = math.pi / 3 if size < 13 else math.pi / 5  # a low cut-off's wide main lobe needs a large kernel
        return sinc_kernel(size, _uniform(g, low, math.pi))
    kind = _pick(g, stage.kernel_list, stage.kernel_prob)
    sigma_x = _uniform(g, *stage.blur_sigma)
    sigma_y, theta = sigma_x, 0.0
    if kind.endswith("aniso"):
        sigma_y, theta = _uniform(g, *stage.blur_sigma), _uniform(g, -math.pi, math.pi)
    if kind.startswith("generalized"):
        return generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, _beta(g, stage.betag_range))
    if kind.startswith("plateau"):
        return plateau_kernel(size, sigma_x, sigma_y, theta, _beta(g, stage.betap_range))
    return gaussian_kernel(size, sigma_x, sigma_y, theta)


def _final_sinc_kernel(g: torch.Generator, options: RealESRGANOptions) -> torch.Tensor | None:
    if _rand(g) >= options.final_sinc_prob:
        return None
    size = _pick(g, options.kernel_sizes)
    return sinc_kernel(size, _uniform(g, math.pi / 3, math.pi))


# ----------------------------------------------------------------------------------------------
# The steps, on one (1, 1, h, w) float32 image.
# ----------------------------------------------------------------------------------------------


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)  # no antialiasing: aliasing is a degradation


def _random_resize(x, g, stage: _Stage, base_h: float, base_w: float, modes) -> torch.Tensor:
    direction = _pick(g, ("up", "down", "keep"), stage.resize_prob)
    factor = 1.0
    if direction == "up":
        factor = _uniform(g, 1.0, stage.resize_range[1])
    elif direction == "down":
        factor = _uniform(g, stage.resize_range[0], 1.0)
    mode = _pick(g, modes)
    return _resize(x, (max(1, int(base_h * factor)), max(1, int(base_w * factor))), mode)


def _add_noise(x: torch.Tensor, g: torch.Generator, stage: _Stage) -> torch.Tensor:
    if _rand(g) < stage.gaussian_noise_prob:
        sigma = _uniform(g, *stage.noise_range) / 255.0
        return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)
    scale = _uniform(g, *stage.poisson_scale_range)
    levels = (x * 255).round().clamp(0, 255) / 255
    # photons per unit intensity = the image's distinct 8-bit levels, rounded up to a power of two (as the original)
    photons = 2.0 ** math.ceil(math.log2(len(torch.unique(levels))))
    shot = torch.poisson(levels * photons, generator=g) / photons - levels
    return (x + scale * shot).clamp(0, 1)


def jpeg(x: torch.Tensor, g: torch.Generator, quality_range) -> torch.Tensor:
    """A (1, 1, h, w) [0, 1] image through an 8-bit gray JPEG at a random integer quality in `quality_range`."""
    return jpeg_round_trip(x, round(_uniform(g, *quality_range)))


def _resize_and_sinc(x, g, size, modes, sinc: torch.Tensor | None) -> torch.Tensor:
    x = _resize(x, size, _pick(g, modes))
    return x if sinc is None else filter2d(x, sinc)


def _degrade_one(hr: torch.Tensor, scale: int, g: torch.Generator, options: RealESRGANOptions) -> torch.Tensor:
    first, second = _stage(options, ""), _stage(options, "2")
    h, w = hr.shape[-2:]
    lr_size = (h // scale, w // scale)
    kernel1 = _random_blur_kernel(g, first, options.kernel_sizes)
    kernel2 = _random_blur_kernel(g, second, options.kernel_sizes)
    sinc = _final_sinc_kernel(g, options)

    x = filter2d(hr, kernel1)
    x = _random_resize(x, g, first, h, w, options.resize_modes)
    x = _add_noise(x, g, first)
    x = jpeg(x, g, first.jpeg_range)

    if _rand(g) < options.second_blur_prob:
        x = filter2d(x, kernel2)
    x = _random_resize(x, g, second, h / scale, w / scale, options.resize_modes)
    x = _add_noise(x, g, second)

    # the original found that other orders of these last steps draw twisted lines
    if _rand(g) < 0.5:
        x = _resize_and_sinc(x, g, lr_size, options.resize_modes, sinc)
        x = jpeg(x, g, second.jpeg_range)
    else:
        x = jpeg(x, g, second.jpeg_range)
        x = _resize_and_sinc(x, g, lr_size, options.resize_modes, sinc)
    return (x * 255).round().clamp(0, 255) / 255


def degrade(hr: torch.Tensor, scale: int, generator: torch.Generator,
            options: RealESRGANOptions | None = None) -> torch.Tensor:
    """LR images made from HR ones by Real-ESRGAN's random second-order degradation.

    hr: (B, 1, H, W) float in [0, 1], H and W divisible by `scale`. Returns (B, 1, H/scale,
    W/scale) float32 in [0, 1], on 8-bit levels, on hr's device. Every random choice is drawn,
    image after image, from `generator` (a CPU generator): saving and restoring its state
    (get_state / set_state) reproduces the output exactly.
    """
    options = RealESRGANOptions() if options is None else options
    if hr.ndim != 4 or hr.shape[1] != 1:
        raise MedsrError(f"realistic degradation expects gray images shaped (B, 1, H, W), got {tuple(hr.shape)}; "
                         "convert to one channel first")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise MedsrError(f"scale must be a positive integer, got {scale!r}")
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise MedsrError(f"HR size {h}x{w} is not divisible by scale {scale}; crop the HR images to a multiple of {scale}")
    if generator.device.type != "cpu":
        raise MedsrError(f"the degradation draws on the CPU; pass a CPU torch.Generator, not one on {generator.device}")
    images = hr.detach().to("cpu", torch.float32)
    scale = int(scale)
    lr = images.new_empty(images.shape[0], 1, h // scale, w // scale)
    with torch.no_grad(), torch.autocast("cpu", enabled=False):  # the 8-bit levels need float32
        for i in range(images.shape[0]):
            lr[i] = _degrade_one(images[i : i + 1], scale, generator, options)[0]
    return lr.to(hr.device)
