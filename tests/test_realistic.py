"""Real-ESRGAN's second-order degradation (medsr.data.realistic) and its U-Net SN discriminator."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from medsr.data.degrade import downscale
from medsr.data.realistic import (
    RealESRGANOptions,
    _random_blur_kernel,
    _stage,
    bessel_j1,
    degrade,
    filter2d,
    gaussian_kernel,
    generalized_gaussian_kernel,
    plateau_kernel,
    sinc_kernel,
)
from medsr.errors import MedsrError
from medsr.models.unet_discriminator import UNetDiscriminatorSN

NO_NOISE = dict(noise_range=(0, 0), poisson_scale_range=(0, 0), noise_range2=(0, 0), poisson_scale_range2=(0, 0),
                jpeg_range=(95, 95), jpeg_range2=(95, 95))


def _hr(batch: int = 4, h: int = 24, w: int = 36, seed: int = 1) -> torch.Tensor:
    """Smooth shapes plus fine texture, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = 0.4 + 0.3 * torch.sin(7 * xx) * torch.cos(5 * yy)
    return (base + 0.15 * torch.rand(batch, 1, h, w, generator=g)).clamp(0, 1)


def _high_frequency_energy(x: torch.Tensor) -> torch.Tensor:
    laplacian = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])[None, None]
    return F.conv2d(x, laplacian).pow(2).mean(dim=(1, 2, 3))


# --------------------------------------------------------------------------- degradation


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_size_dtype_range_and_levels(scale):
    hr = _hr()
    lr = degrade(hr, scale, torch.Generator().manual_seed(0))
    assert lr.shape == (4, 1, 24 // scale, 36 // scale)
    assert lr.dtype == torch.float32
    assert lr.min() >= 0 and lr.max() <= 1
    levels = lr * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)


def test_tiny_images_work():
    lr = degrade(torch.rand(3, 1, 8, 8), 4, torch.Generator().manual_seed(5))
    assert lr.shape == (3, 1, 2, 2)


def test_same_seed_same_output_and_resume_from_state():
    hr = _hr()
    a = degrade(hr, 3, torch.Generator().manual_seed(7))
    b = degrade(hr, 3, torch.Generator().manual_seed(7))
    c = degrade(hr, 3, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)

    g = torch.Generator().manual_seed(3)
    degrade(hr, 2, g)
    state = g.get_state()
    first = degrade(hr, 2, g)
    g.set_state(state)
    assert torch.equal(degrade(hr, 2, g), first)


def test_choices_are_per_image():
    hr = _hr(batch=2)
    whole = degrade(hr, 2, torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(11)
    one_by_one = torch.cat([degrade(hr[:1], 2, g), degrade(hr[1:], 2, g)])
    assert torch.equal(whole, one_by_one)
    same_image_twice = degrade(hr[:1].repeat(2, 1, 1, 1), 2, torch.Generator().manual_seed(11))
    assert not torch.equal(same_image_twice[0], same_image_twice[1])


def test_differs_from_plain_bicubic_downscale():
    hr = _hr(batch=8)
    lr = degrade(hr, 2, torch.Generator().manual_seed(0))
    bicubic = downscale(hr, 2).clamp(0, 1)
    assert (lr - bicubic).abs().mean() > 2 / 255


def test_noise_is_present_in_some_images():
    # a flat image stays flat under blur, resize, sinc and JPEG: any spread comes from the noise
    flat = torch.full((8, 1, 32, 32), 0.5)
    lr = degrade(flat, 2, torch.Generator().manual_seed(0))
    assert (lr.std(dim=(1, 2, 3)) > 1 / 255).any()


def test_blur_lowers_high_frequency_energy():
    hr = _hr(batch=8)
    blurred = filter2d(hr, gaussian_kernel(9, 1.5))
    assert (_high_frequency_energy(blurred) < _high_frequency_energy(hr)).all()
    # without noise, the whole pipeline is a low-pass compared with plain bicubic
    lr = degrade(hr, 2, torch.Generator().manual_seed(0), RealESRGANOptions(**NO_NOISE))
    bicubic = downscale(hr, 2).clamp(0, 1)
    assert _high_frequency_energy(lr).mean() < _high_frequency_energy(bicubic).mean()


def test_filter2d_keeps_size_and_constants():
    x = torch.full((2, 1, 5, 7), 0.25)
    out = filter2d(x, sinc_kernel(21, 1.0))  # kernel wider than the image: edge padding
    assert out.shape == x.shape
    assert torch.allclose(out, x, atol=1e-6)


def test_bad_inputs_raise_medsr_error():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(MedsrError, match="divisible"):
        degrade(torch.rand(1, 1, 25, 24), 2, g)
    with pytest.raises(MedsrError, match="one channel"):
        degrade(torch.rand(1, 3, 24, 24), 2, g)
    with pytest.raises(MedsrError, match="kernel_list"):
        RealESRGANOptions(kernel_list=("iso", "box"), kernel_prob=(0.5, 0.5))
    with pytest.raises(MedsrError, match="resize_prob"):
        RealESRGANOptions(resize_prob=(0.5, 0.5))


def test_options_defaults_and_lists():
    o = RealESRGANOptions()
    assert o.kernel_sizes == tuple(range(7, 22, 2))
    assert o.kernel_prob == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03) and o.sinc_prob == 0.1
    assert o.blur_sigma == (0.2, 3.0) and o.blur_sigma2 == (0.2, 1.5)
    assert o.resize_prob == (0.2, 0.7, 0.1) and o.resize_range == (0.15, 1.5)
    assert o.resize_prob2 == (0.3, 0.4, 0.3) and o.resize_range2 == (0.3, 1.2)
    assert o.noise_range == (1.0, 30.0) and o.noise_range2 == (1.0, 25.0)
    assert o.poisson_scale_range == (0.05, 3.0) and o.poisson_scale_range2 == (0.05, 2.5)
    assert o.second_blur_prob == 0.8 and o.final_sinc_prob == 0.8
    assert RealESRGANOptions(blur_sigma=[0.5, 1.0]).blur_sigma == (0.5, 1.0)  # from JSON


def test_fast_enough_on_cpu():
    hr = torch.rand(16, 1, 150, 150)
    g = torch.Generator().manual_seed(0)
    degrade(hr[:2], 3, g)  # warm-up
    start = time.perf_counter()
    degrade(hr, 3, g)
    assert time.perf_counter() - start < 2.0  # ~0.1 s alone; generous for a shared CPU


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("size", [7, 21])
def test_kernels_sum_to_one_and_are_symmetric(size):
    isotropic = [
        gaussian_kernel(size, 1.3),
        generalized_gaussian_kernel(size, 1.3, beta=0.7),
        plateau_kernel(size, 1.3, beta=1.5),
        sinc_kernel(size, math.pi / 4),
    ]
    for k in isotropic:
        assert k.shape == (size, size)
        assert abs(k.sum().item() - 1) < 1e-5
        assert torch.allclose(k, k.flip(0), atol=1e-7) and torch.allclose(k, k.flip(1), atol=1e-7)
        assert torch.allclose(k, k.T, atol=1e-7)
    anisotropic = [
        gaussian_kernel(size, 2.5, 0.6, theta=0.7),
        generalized_gaussian_kernel(size, 2.5, 0.6, theta=-1.1, beta=2.0),
        plateau_kernel(size, 2.5, 0.6, theta=2.0, beta=1.2),
    ]
    for k in anisotropic:
        assert abs(k.sum().item() - 1) < 1e-5
        assert torch.allclose(k, k.flip(0, 1), atol=1e-7)  # point-symmetric about the centre
        assert not torch.allclose(k, k.T, atol=1e-4)  # but truly anisotropic


def test_gaussian_peak_is_central_and_rotation_turns_it():
    k = gaussian_kernel(11, 3.0, 0.5, theta=0.0)  # long along x (columns)
    assert k.argmax() == 5 * 11 + 5
    assert k[5, 8] > k[8, 5]
    turned = gaussian_kernel(11, 3.0, 0.5, theta=math.pi / 2)
    assert torch.allclose(turned, k.T, atol=1e-6)


def test_generalized_gaussian_with_beta_one_is_gaussian():
    assert torch.allclose(generalized_gaussian_kernel(9, 1.2, 0.8, 0.3, beta=1.0), gaussian_kernel(9, 1.2, 0.8, 0.3))


def test_random_kernels_sum_to_one():
    options = RealESRGANOptions(sinc_prob=0.3)
    g = torch.Generator().manual_seed(0)
    for suffix in ("", "2"):
        for _ in range(40):
            k = _random_blur_kernel(g, _stage(options, suffix), options.kernel_sizes)
            assert k.shape[0] == k.shape[1] and k.shape[0] in options.kernel_sizes
            assert abs(k.sum().item() - 1) < 1e-5
            assert torch.allclose(k, k.flip(0, 1), atol=1e-6)


def test_bessel_j1():
    x = torch.tensor([0.0, 1.0, 3.8317059702075125, 10.0, 44.0], dtype=torch.float64)
    expected = torch.tensor([0.0, 0.44005058574493355, 0.0, 0.04347274616886141, -0.08280335937602906], dtype=torch.float64)
    assert torch.allclose(bessel_j1(x), expected, atol=1e-12)
    special = pytest.importorskip("scipy.special")
    grid = torch.linspace(0, 45, 301, dtype=torch.float64)
    assert torch.allclose(bessel_j1(grid), torch.from_numpy(special.j1(grid.numpy())), atol=1e-12)


# --------------------------------------------------------------------------- discriminator


def _disc(**kw) -> UNetDiscriminatorSN:
    torch.manual_seed(0)
    return UNetDiscriminatorSN(channels=4, **kw)


@pytest.mark.parametrize("size", [(37, 50), (8, 8), (1, 3), (24, 17)])
def test_discriminator_returns_per_pixel_logits(size):
    d = _disc()
    out = d(torch.randn(2, 1, *size))
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()
    assert out.shape == torch.ones_like(out).shape  # BCE-with-logits against ones_like works


def test_discriminator_config_rebuilds():
    d = _disc(in_channels=2, input_size=64, skip_connection=False)
    assert d.input_size == 64
    assert d.config == dict(in_channels=2, input_size=64, channels=4, skip_connection=False)
    again = UNetDiscriminatorSN(**d.config)
    again.load_state_dict(d.state_dict())
    x = torch.randn(1, 2, 16, 16)
    d.eval()
    again.eval()
    assert torch.allclose(d(x), again(x))


def test_discriminator_gradients_flow():
    d = _disc()
    x = torch.randn(2, 1, 37, 50, requires_grad=True)
    loss = F.binary_cross_entropy_with_logits(d(x), torch.ones(2, 1, 37, 50))
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name in ("conv0", "conv1", "conv5", "conv9"):
        weight = getattr(d, name).parametrizations.weight.original if parametrize.is_parametrized(getattr(d, name)) \
            else getattr(d, name).weight
        assert weight.grad is not None and weight.grad.abs().sum() > 0, name


def test_discriminator_bf16_autocast_and_channels_last():
    d = _disc()
    x = torch.randn(2, 1, 37, 50)
    reference = d.eval()(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = d(x.to(memory_format=torch.channels_last))
    assert out.shape == (2, 1, 37, 50)
    assert torch.isfinite(out.float()).all()
    assert (out.float() - reference).abs().max() < 0.1 * reference.abs().max() + 1e-3


def test_spectral_norm_on_all_but_first_and_last_conv():
    d = _disc()
    assert not parametrize.is_parametrized(d.conv0) and not parametrize.is_parametrized(d.conv9)
    wrapped = [f"conv{i}" for i in range(1, 9)]
    assert all(parametrize.is_parametrized(getattr(d, n), "weight") for n in wrapped)
    d.train()
    with torch.no_grad():
        for _ in range(20):  # each training forward runs one power iteration
            d(torch.randn(1, 1, 16, 16))
    d.eval()
    for name in wrapped:
        weight = getattr(d, name).weight.detach()
        sigma = torch.linalg.matrix_norm(weight.flatten(1), ord=2).item()
        assert abs(sigma - 1) < 0.05, (name, sigma)
