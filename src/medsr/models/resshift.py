"""ResShift: diffusion super-resolution by residual shifting, in pixel space for grayscale images.

Paper: Yue, Wang and Loy, "ResShift: Efficient Diffusion Model for Image Super-resolution by Residual
Shifting", NeurIPS 2023 (official code: github.com/zsyOAOA/ResShift).

The Markov chain runs between the HR image x0 and y0, the LR image upsampled to the HR grid, by shifting
their residual e0 = y0 - x0 in T steps (paper time t = 1..T; code index i = t - 1):

    q(x_t | x0, y0)          = N(x0 + eta_t e0, kappa^2 eta_t I)
    q(x_{t-1} | x_t, x0, y0) = N((eta_{t-1}/eta_t) x_t + (alpha_t/eta_t) x0, kappa^2 (eta_{t-1}/eta_t) alpha_t I),
                               alpha_t = eta_t - eta_{t-1}, eta_0 = 0

with the paper's schedule sqrt(eta_t) = sqrt(eta_1) b0^beta_t, beta_t = ((t-1)/(T-1))^p (T-1),
b0 = exp(log(eta_T/eta_1) / (2(T-1))), so sqrt(eta_t) grows geometrically (warped by p) from sqrt(eta_1)
to sqrt(eta_T). A network f(x_t, y0, t) predicts x0; training minimises ||f - x0||^2 at a uniformly
random t; sampling starts at x_T = y0 + kappa sqrt(eta_T) noise and applies the posterior with f's x0
in place of x0, without noise at the last step (where eta_0 = 0 makes the result f's x0 itself).

What differs from the paper and its code:
- pixel space, not a VQGAN latent space: medsr's images are small grayscale scans, and y0 is the
  bicubic upsampling of the LR image;
- `min_noise_level` is sqrt(eta_1) itself and `eta_max` is eta_T itself (the official code passes
  0.99 as sqrt(eta_T) and uses min(min_noise_level / kappa, min_noise_level) as sqrt(eta_1));
  with T = 1 the schedule is the single value eta_max;
- the denoiser is a small convolutional U-Net (GroupNorm + SiLU residual blocks with an additive
  timestep embedding) instead of the paper's Swin-transformer U-Net, to stay CPU-friendly;
- it predicts x0 as y0 plus a learned correction, with the correction's last conv zero-initialised,
  so an untrained model already returns bicubic and training starts from there;
- the network sees x_t divided by (3 kappa sqrt(eta_t) + 1), the official code's pixel-space input
  normalisation, and the sampler clamps each x0 prediction to [-1, 1], as the official sampler does.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsr.errors import MedsrError

MAX_STEPS = 50


def resshift_schedule(steps: int, min_noise_level: float, eta_max: float, power: float) -> list[float]:
    """eta_1..eta_T of the paper's schedule, as Python floats (float64 arithmetic)."""
    if steps == 1:
        return [float(eta_max)]  # one step goes straight from y0 to x0
    eta_1 = min_noise_level**2
    b0 = math.exp(math.log(eta_max / eta_1) / (2 * (steps - 1)))
    sqrt_etas = [min_noise_level * b0 ** (((t - 1) / (steps - 1)) ** power * (steps - 1)) for t in range(1, steps + 1)]
    return [s * s for s in sqrt_etas]


def _groups(channels: int) -> int:
    """GroupNorm groups: up to 8, dividing `channels`, so tiny test widths still work."""
    return math.gcd(channels, 8)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim) of the integer step index, in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class ResBlock(nn.Module):
    """GN-SiLU-conv3, + projected time embedding, GN-SiLU-conv3, + (1x1-projected) input."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Level(nn.Module):
    """`num_res_blocks` ResBlocks at one resolution of the U-Net."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, emb_dim: int):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_res_blocks
        self.blocks = nn.ModuleList(ResBlock(a, b, emb_dim) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, emb)
        return x


class UNet(nn.Module):
    """f(concat(x_t, y0), t) -> correction to y0. Sizes must be multiples of 2^(len(channel_mult)-1)."""

    def __init__(self, in_channels: int, channels: int, channel_mult: list[int], num_res_blocks: int):
        super().__init__()
        self.emb_channels = 2 * max(channels // 2, 1)
        emb_dim = 4 * channels
        self.time_mlp = nn.Sequential(nn.Linear(self.emb_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        widths = [channels * m for m in channel_mult]
        self.head = nn.Conv2d(2 * in_channels, channels, 3, padding=1)
        self.encoder, self.down = nn.ModuleList(), nn.ModuleList()
        prev = channels
        for i, width in enumerate(widths):
            self.encoder.append(Level(prev, width, num_res_blocks, emb_dim))
            if i < len(widths) - 1:
                self.down.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
            prev = width
        self.middle = ResBlock(prev, prev, emb_dim)
        self.up, self.decoder = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(widths))):
            if i < len(widths) - 1:
                self.up.append(nn.Conv2d(prev, prev, 3, padding=1))  # after a nearest x2, so no checkerboard
            self.decoder.append(Level(prev + widths[i], widths[i], num_res_blocks, emb_dim))
            prev = widths[i]
        self.out_norm = nn.GroupNorm(_groups(prev), prev)
        self.tail = nn.Conv2d(prev, in_channels, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # start exactly at bicubic
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.emb_channels).to(x.dtype))
        h = self.head(x)
        skips = []
        for i, level in enumerate(self.encoder):
            h = level(h, emb)
            skips.append(h)
            if i < len(self.down):
                h = self.down[i](h)
        h = self.middle(h, emb)
        for j, level in enumerate(self.decoder):
            if j > 0:
                h = self.up[j - 1](F.interpolate(h, scale_factor=2, mode="nearest"))
            h = level(torch.cat([h, skips[-1 - j]], dim=1), emb)
        return self.tail(F.silu(self.out_norm(h)))


class ResShift(nn.Module):
    """ResShift in pixel space. forward(lr) runs the full T-step sampler; the trainer calls
    `training_loss(lr, hr)` instead of its pixel loss.

    The sampler's noise comes from a private generator seeded with `seed` at every call, so
    forward is a deterministic function of its input and never touches the global RNG.
    """

    SUPPORTED_SCALES = (2, 3, 4)

    def __init__(self, scale: int = 3, in_channels: int = 1, channels: int = 32, channel_mult: list[int] = (1, 2, 2),
                 num_res_blocks: int = 1, steps: int = 4, kappa: float = 2.0, power: float = 0.3,
                 min_noise_level: float = 0.04, eta_max: float = 0.99, seed: int = 0):
        super().__init__()
        channel_mult = list(channel_mult) if isinstance(channel_mult, (list, tuple)) else channel_mult
        _validate(scale, in_channels, channels, channel_mult, num_res_blocks, steps, kappa, power, min_noise_level,
                  eta_max, seed)
        self.scale = scale
        self.config = dict(scale=scale, in_channels=in_channels, channels=channels, channel_mult=channel_mult,
                           num_res_blocks=num_res_blocks, steps=steps, kappa=kappa, power=power,
                           min_noise_level=min_noise_level, eta_max=eta_max, seed=seed)
        self.steps, self.kappa, self.seed = steps, float(kappa), seed
        # plain floats, not buffers: .to(bfloat16) must not round the schedule, and it is rebuilt from config
        self.etas = resshift_schedule(steps, min_noise_level, eta_max, power)
        self.multiple = 2 ** (len(channel_mult) - 1)
        self.unet = UNet(in_channels, channels, channel_mult, num_res_blocks)

    # --- the diffusion ------------------------------------------------------------------------------

    def _eta(self, t: torch.Tensor, device) -> torch.Tensor:
        """eta at step indices t (B,), float32, shaped (B, 1, 1, 1)."""
        return torch.tensor(self.etas, dtype=torch.float32, device=device)[t.to(device)].view(-1, 1, 1, 1)

    def upsample(self, lr: torch.Tensor) -> torch.Tensor:
        """y0: the LR image bicubically upsampled to the HR grid, in float32."""
        return F.interpolate(lr.float(), scale_factor=self.scale, mode="bicubic", align_corners=False)

    def q_sample(self, x0: torch.Tensor, y0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A draw of x_t ~ q(x_t | x0, y0) = N(x0 + eta_t (y0 - x0), kappa^2 eta_t I), in float32."""
        eta = self._eta(t, x0.device)
        return x0.float() + eta * (y0.float() - x0.float()) + self.kappa * eta.sqrt() * noise.float()

    def posterior(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x0) for step indices t (B,), in float32; eta_0 = 0."""
        etas = torch.tensor([0.0] + self.etas, dtype=torch.float64)  # float64 so eta_t - eta_{t-1} keeps its digits
        eta, eta_prev = etas[t.cpu() + 1], etas[t.cpu()]
        alpha = eta - eta_prev
        coef_t = (eta_prev / eta).float().to(x_t.device).view(-1, 1, 1, 1)
        coef_0 = (alpha / eta).float().to(x_t.device).view(-1, 1, 1, 1)
        variance = (self.kappa**2 * eta_prev / eta * alpha).float().to(x_t.device).view(-1, 1, 1, 1)
        return coef_t * x_t.float() + coef_0 * x0.float(), variance

    def predict_x0(self, x_t: torch.Tensor, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's x0 for x_t at step indices t (B,): y0 + U-Net correction; any size (padded, cropped back)."""
        h, w = x_t.shape[-2:]
        scaled = x_t.float() / (3 * self.kappa * self._eta(t, x_t.device).sqrt() + 1)  # keeps x_t's range near y0's
        net_in = torch.cat([scaled, y0.float()], dim=1).to(self.unet.head.weight.dtype)
        pad_h, pad_w = -h % self.multiple, -w % self.multiple
        if pad_h or pad_w:
            net_in = F.pad(net_in, (0, pad_w, 0, pad_h), mode="replicate")  # replicate works for any size, reflect does not
        correction = self.unet(net_in, t.to(x_t.device))[..., :h, :w]
        return y0.float() + correction.float()

    # --- training and sampling ----------------------------------------------------------------------

    def training_loss(self, lr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(MSE between the x0 prediction and hr at a uniformly random step, that x0 prediction shaped like hr).

        t and the noise come from the global torch RNG, so training is seedable.
        """
        expected = (*lr.shape[:-2], lr.shape[-2] * self.scale, lr.shape[-1] * self.scale)
        if tuple(hr.shape) != expected:
            raise MedsrError(f"ResShift x{self.scale}: hr shape {tuple(hr.shape)} does not match lr shape "
                             f"{tuple(lr.shape)}; pass hr of shape {expected}")
        y0 = self.upsample(lr)
        t = torch.randint(self.steps, (lr.shape[0],), device=lr.device)
        noise = torch.randn_like(hr, dtype=torch.float32)
        x0_hat = self.predict_x0(self.q_sample(hr, y0, t, noise), y0, t)
        return F.mse_loss(x0_hat, hr.float()), x0_hat.to(hr.dtype)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """The full T-step sampler: (B, C, h, w) in [-1, 1] -> (B, C, h*scale, w*scale) in [-1, 1]."""
        generator = torch.Generator().manual_seed(self.seed)

        def noise_like(x: torch.Tensor) -> torch.Tensor:
            return torch.randn(x.shape, generator=generator).to(device=x.device, dtype=lr.dtype).float()

        y0 = self.upsample(lr)
        x = y0 + self.kappa * math.sqrt(self.etas[-1]) * noise_like(y0)
        for i in reversed(range(self.steps)):
            t = torch.full((lr.shape[0],), i, dtype=torch.long, device=lr.device)
            x0_hat = self.predict_x0(x, y0, t).clamp(-1, 1)
            mean, variance = self.posterior(x, x0_hat, t)
            x = mean + variance.sqrt() * noise_like(x) if i > 0 else mean
        return x.to(lr.dtype)


def _validate(scale, in_channels, channels, channel_mult, num_res_blocks, steps, kappa, power, min_noise_level,
              eta_max, seed) -> None:
    """MedsrError, with the fix, for options ResShift cannot build."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not is_int(scale) or scale not in ResShift.SUPPORTED_SCALES:
        raise MedsrError(f"ResShift does not support scale {scale!r}; use one of {list(ResShift.SUPPORTED_SCALES)}")
    for name, value in (("in_channels", in_channels), ("channels", channels), ("num_res_blocks", num_res_blocks)):
        if not is_int(value) or value < 1:
            raise MedsrError(f"ResShift {name} must be a positive integer, got {value!r}")
    if not isinstance(channel_mult, list) or not channel_mult or not all(is_int(m) and m >= 1 for m in channel_mult):
        raise MedsrError(f"ResShift channel_mult must be a non-empty list of positive integers (e.g. [1, 2, 2]), "
                         f"got {channel_mult!r}")
    if not is_int(steps) or not 1 <= steps <= MAX_STEPS:
        raise MedsrError(f"ResShift steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}; the paper uses 15 or 4")
    if not is_number(kappa) or kappa <= 0:
        raise MedsrError(f"ResShift kappa must be a positive number, got {kappa!r}; the paper uses 2.0")
    if not is_number(power) or power <= 0:
        raise MedsrError(f"ResShift power must be a positive number, got {power!r}; the paper uses 0.3")
    if not is_number(eta_max) or not 0 < eta_max <= 1:
        raise MedsrError(f"ResShift eta_max must be in (0, 1], got {eta_max!r}; the paper uses 0.99")
    if not is_number(min_noise_level) or min_noise_level <= 0 or (steps > 1 and min_noise_level**2 >= eta_max):
        raise MedsrError(f"ResShift min_noise_level (sqrt of eta_1) must be positive with min_noise_level**2 < "
                         f"eta_max={eta_max!r}, got {min_noise_level!r}; the paper uses 0.04")
    if not is_int(seed):
        raise MedsrError(f"ResShift seed must be an integer, got {seed!r}")
