"""Shapes, ranges, gradients, registry errors, exact layer layouts, config round-trips, bf16 + channels_last."""

import pytest
import torch
import torch.nn as nn

from medsr.errors import MedsrError
from medsr.models import (
    DISCRIMINATORS,
    GENERATORS,
    create_discriminator,
    create_generator,
)

torch.set_num_threads(2)

# tiny widths keep the whole file fast on 2 CPU cores
TINY_G = {"paper": dict(channels=8, num_blocks=2), "srgan": dict(channels=8, num_blocks=2), "dcgan": dict(channels=8),
          "edsr": dict(channels=8, num_blocks=2), "esrgan": dict(channels=8, num_blocks=1, growth=4),
          "real-esrgan": dict(channels=8, num_blocks=1, growth=4),
          "swinir": dict(embed_dim=8, depths=[1], num_heads=[2], window_size=4),
          "resshift": dict(channels=8, channel_mult=[1, 2], steps=2), "through-plane": dict(channels=8, num_blocks=1)}
GEN_SCALES = [(n, s) for n in ("paper", "srgan", "edsr") for s in (2, 3, 4, 8)] + \
    [(n, s) for n in ("dcgan", "esrgan", "real-esrgan", "swinir", "resshift") for s in (2, 3, 4)]
TANH_OUTPUT = ("paper", "srgan", "dcgan")  # the others are linear (clamped at inference)
DISC_SIZES = {"paper": 150, "srgan": 96, "dcgan": 28, "esrgan": 96, "real-esrgan": 128}
PER_PIXEL_DISCRIMINATORS = ("real-esrgan",)  # a U-Net: one logit per pixel


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def count(m: nn.Module, kind: type) -> int:
    return sum(isinstance(x, kind) for x in m.modules())


@pytest.mark.parametrize("name,scale", GEN_SCALES)
def test_generator_shape_range_grads(name, scale):
    torch.manual_seed(0)
    g = create_generator(name, scale=scale, **TINY_G[name])
    assert g.scale == scale
    x = torch.rand(2, 1, 7, 9) * 2 - 1
    y = g(x)
    assert y.shape == (2, 1, 7 * scale, 9 * scale)
    if name in TANH_OUTPUT:
        assert y.min() >= -1 and y.max() <= 1
    if hasattr(g, "training_loss"):  # diffusion: trained through its own objective, not through the sampler
        y = g.training_loss(x, torch.rand(2, 1, 7 * scale, 9 * scale) * 2 - 1)[1]
    y.square().mean().backward()
    for pname, p in g.named_parameters():
        assert p.grad is not None, f"no grad for {pname}"
        assert torch.isfinite(p.grad).all(), f"non-finite grad for {pname}"


def test_edsr_starts_at_bicubic_and_learns_a_residual():
    import torch.nn.functional as F

    g = create_generator("edsr", scale=3, **TINY_G["edsr"])
    x = torch.rand(1, 1, 6, 8)
    assert torch.allclose(g(x), F.interpolate(x, scale_factor=3, mode="bicubic", align_corners=False), atol=1e-6)
    with torch.no_grad():
        g.tail.bias.fill_(0.1)
    assert not torch.allclose(g(x), F.interpolate(x, scale_factor=3, mode="bicubic", align_corners=False), atol=1e-3)


def test_registry_errors():
    with pytest.raises(MedsrError, match="paper"):  # the message lists the known names
        create_generator("nope")
    with pytest.raises(MedsrError, match="srgan"):
        create_discriminator("nope")
    with pytest.raises(MedsrError, match="scale"):
        create_generator("paper", scale=5)
    with pytest.raises(MedsrError, match="scale"):
        create_generator("dcgan", scale=8)
    with pytest.raises(MedsrError, match="chanels"):
        create_generator("srgan", chanels=8)


@pytest.mark.parametrize("name", sorted(DISCRIMINATORS))
def test_discriminator_logits(name):
    size = DISC_SIZES[name]
    d = create_discriminator(name, channels=8)
    assert d.input_size == size
    y = d(torch.rand(3, 1, size, size) * 2 - 1)
    assert y.shape == ((3, 1, size, size) if name in PER_PIXEL_DISCRIMINATORS else (3, 1))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["paper", "dcgan"])
def test_discriminator_wrong_size_raises(name):
    d = create_discriminator(name, channels=8)
    with pytest.raises(MedsrError, match=str(DISC_SIZES[name])):
        d(torch.zeros(1, 1, 32, 32))


def test_paper_discriminator_other_input_size():
    d = create_discriminator("paper", input_size=96, channels=8)
    assert d(torch.zeros(2, 1, 96, 96)).shape == (2, 1)


def test_vgg_discriminator_any_size():
    d = create_discriminator("srgan", channels=8)
    assert d(torch.zeros(2, 1, 40, 56)).shape == (2, 1)


def test_paper_discriminator_layout():
    d = create_discriminator("paper")
    assert count(d, nn.Dropout) == 7
    assert count(d, nn.BatchNorm2d) == 4
    assert count(d, nn.LeakyReLU) == 5  # first conv, the last three conv blocks, the dense layer
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512]
    assert [c.stride[0] for c in convs] == [1, 2, 2, 2, 2, 2, 2]
    linears = [m for m in d.modules() if isinstance(m, nn.Linear)]
    assert [l.out_features for l in linears] == [1024, 1]
    assert linears[0].in_features == 512 * 3 * 3  # 150 -> 75 -> 38 -> 19 -> 10 -> 5 -> 3
    # the blocks between the first conv and the 4ch block have no activation, as in the paper
    kinds = [type(m).__name__ for m in d.features]
    assert kinds[:12] == ["Conv2d", "Dropout", "LeakyReLU"] + ["Conv2d", "BatchNorm2d", "Dropout"] * 3


def test_paper_generator_defaults():
    g = create_generator("paper")
    n = n_params(g)
    shuffles = [m for m in g.modules() if isinstance(m, nn.PixelShuffle)]
    assert g.scale == 3, f"params={n}"
    assert len(g.blocks) == 7, f"params={n}"
    assert [s.upscale_factor for s in shuffles] == [3], f"params={n}"
    assert g.head[0].kernel_size == (9, 9) and g.tail.kernel_size == (9, 9), f"params={n}"
    pre = {}
    g.tail.register_forward_hook(lambda mod, inp, out: pre.update(out=out))
    y = g(torch.randn(1, 1, 6, 5) * 5)
    assert y.shape == (1, 1, 18, 15), f"params={n}"
    assert torch.equal(y, torch.tanh(pre["out"])), f"output is not tanh of the tail conv; params={n}"
    # head 5,248 + 7 blocks x 74,112 + body conv 36,928 + x3 upsampler 332,352 + tail 5,185
    assert n == 898_497, f"params={n}"
    g8 = create_generator("paper", scale=8, **TINY_G["paper"])
    assert [s.upscale_factor for s in g8.modules() if isinstance(s, nn.PixelShuffle)] == [2, 2, 2]


def all_models():
    for name, cls in GENERATORS.items():
        yield cls(**TINY_G[name])
    for name, cls in DISCRIMINATORS.items():
        yield cls(channels=8)


@pytest.mark.parametrize("model", list(all_models()), ids=lambda m: type(m).__name__)
def test_config_rebuilds(model):
    import json

    config = json.loads(json.dumps(model.config))  # saved as JSON next to the weights
    rebuilt = type(model)(**config)
    a = {k: v.shape for k, v in model.state_dict().items()}
    b = {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert a == b


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_bf16_channels_last(name):
    torch.manual_seed(0)
    scale = 1 if name == "through-plane" else 2  # the through-plane network refines a grid already made finer
    g = create_generator(name, scale=scale, **TINY_G[name]).eval()
    x = torch.rand(2, 1, 8, 10) * 2 - 1
    with torch.no_grad():
        ref = g(x)
        g = g.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = g(x.to(memory_format=torch.channels_last))
    assert y.shape == ref.shape
    assert (y.float() - ref).abs().mean() < 0.05


@pytest.mark.parametrize("name", sorted(DISCRIMINATORS))
def test_discriminator_bf16_channels_last(name):
    torch.manual_seed(0)
    size = DISC_SIZES[name]
    d = create_discriminator(name, channels=8).eval().to(memory_format=torch.channels_last)
    x = (torch.rand(2, 1, size, size) * 2 - 1).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = d(x)
    assert y.shape[:2] == (2, 1) and torch.isfinite(y.float()).all()


def test_fast_dropout_keeps_half_and_rescales():
    from medsr.models.layers import Dropout

    torch.manual_seed(0)
    d = Dropout(0.5)
    x = torch.ones(200_000)
    y = d(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.5) < 0.01 and set(y.unique().tolist()) == {0.0, 2.0}
    assert abs(y.mean().item() - 1.0) < 0.02  # expectation preserved
    assert torch.equal(d.eval()(x), x)
    assert isinstance(d, nn.Dropout)


def test_fast_dropout_layouts_rates_gradients_and_seeds():
    from medsr.models.layers import Dropout

    x = torch.ones(3, 5, 7, 11, requires_grad=True)  # 1155 elements: not a multiple of 8
    last = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    d = Dropout(0.25)
    torch.manual_seed(1)
    y = d(last)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert y.unique().tolist() == pytest.approx([0.0, 4 / 3]) and abs((y == 0).float().mean().item() - 0.25) < 0.05
    y.sum().backward()
    assert torch.equal(last.grad, y.detach())  # d(x * mask)/dx = mask
    torch.manual_seed(1)
    assert torch.equal(d(last), y)  # same seed, same mask (resuming a run depends on it)
    assert d(x).is_contiguous()
    big = d(torch.ones(64, 64, 64))
    # neighbours along every axis are independent (a layout bug would repeat or correlate them)
    for dim in range(3):
        a, b = big.narrow(dim, 0, 63) != 0, big.narrow(dim, 1, 63) != 0
        assert abs((a & b).float().mean().item() - 0.75 ** 2) < 0.01


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(9, 40), (21, 26)])
def test_edsr_fused_for_inference_is_the_same_function(scale, size):
    torch.manual_seed(0)
    model = create_generator("edsr", scale=scale, channels=8, num_blocks=1).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)  # the tail starts at zero; make every layer matter
    fused = model.fused_for_inference()
    assert not isinstance(fused.tail, torch.nn.Conv2d)  # it really is a different computation
    x = torch.rand(2, 1, *size) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=2e-5, rtol=0)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_fused_upsampler_is_the_trained_convs_away_from_the_border(scale):
    torch.manual_seed(0)
    model = create_generator("edsr", scale=scale, channels=8, num_blocks=1).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    fused = model.with_fused_upsampler()
    assert fused.config["upsampler"] == "fused" and isinstance(fused.tail, nn.Identity)
    rebuilt = create_generator("edsr", **fused.config)  # the config names the upsampler
    rebuilt.load_state_dict(fused.state_dict())
    x = torch.rand(2, 1, 20, 23) * 2 - 1
    border = (model._reach() + 1) * scale  # LR pixels the original convs reach, and one more
    with torch.no_grad():
        a, b, c = model(x), fused(x), rebuilt(x)
        torch.testing.assert_close(b[..., border:-border, border:-border], a[..., border:-border, border:-border], atol=2e-5, rtol=0)
        assert (a - b).abs().max() > 1e-3  # the borders differ (zero padding on the LR grid), so the check above can fail
        torch.testing.assert_close(c, b)
        torch.testing.assert_close(fused.fused_for_inference()(x), b)  # nothing left to fuse
    assert create_generator("edsr", scale=scale, channels=8, num_blocks=1, upsampler="fused")(x).shape == a.shape
    with pytest.raises(ValueError, match="unknown upsampler"):
        create_generator("edsr", upsampler="subpixel")


@pytest.mark.parametrize("res_scale", [1.0, 0.5])
def test_edsr_residual_block_sums_into_its_conv_output_with_the_same_values_and_gradients(res_scale):
    """ResBlock adds its input into the new tensor its last conv made (one buffer fewer at inference);
    the values and every gradient are those of x + res_scale * body(x), in fp32 and under bf16 autocast."""
    from medsr.models.edsr import ResBlock
    torch.manual_seed(0)
    block = ResBlock(8, res_scale)
    x = torch.randn(2, 8, 12, 12).contiguous(memory_format=torch.channels_last)
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            inputs = [(x.bfloat16() if autocast else x).clone().requires_grad_() for _ in range(2)]
            ours, plain = block(inputs[0]), inputs[1] + block.body(inputs[1]) * res_scale
        assert ours.dtype == plain.dtype and torch.equal(ours, plain)
        grads = [torch.autograd.grad(y.float().square().sum(), [i, *block.parameters()]) for y, i in ((ours, inputs[0]), (plain, inputs[1]))]
        assert all(torch.equal(a, b) for a, b in zip(*grads))
