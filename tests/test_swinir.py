"""SwinIR: shapes and gradients at any size, bf16 + channels_last, config round trip, the official key
layout and RGB -> gray conversion, and that shifted-window masking keeps regions apart."""

import json
import math

import pytest
import torch

from medsr.errors import MedsrError
from medsr.models.swinir import (
    LUMA,
    OFFICIAL_RGB_MEAN,
    SwinIR,
    SwinLayer,
    convert_official,
    mirror_index,
    shift_mask,
)

torch.set_num_threads(2)

TINY = dict(embed_dim=12, depths=[2], num_heads=[2], window_size=4)


def official_state(model: SwinIR, img_size: int = 16) -> dict:
    """The model's state dict plus the buffers an official file carries (for a training patch of img_size)."""
    state = dict(model.state_dict())
    w = model.window_size
    n_windows = (img_size // w) ** 2
    for i, layer in enumerate(model.layers):
        for j, block in enumerate(layer.residual_group.blocks):
            prefix = f"layers.{i}.residual_group.blocks.{j}.attn"
            state[prefix + ".relative_position_index"] = torch.randint(0, (2 * w - 1) ** 2, (w * w, w * w))
            if block.shift:
                state[f"layers.{i}.residual_group.blocks.{j}.attn_mask"] = torch.zeros(n_windows, w * w, w * w)
    return state


@pytest.mark.parametrize("scale,upsampler", [(2, "pixelshuffledirect"), (3, "pixelshuffledirect"),
                                             (4, "pixelshuffledirect"), (4, "pixelshuffle"), (8, "pixelshuffle")])
def test_forward_backward_any_size(scale, upsampler):
    torch.manual_seed(0)
    model = SwinIR(scale=scale, upsampler=upsampler, num_feat=8, **TINY)
    x = torch.rand(2, 1, 7, 10) * 2 - 1
    y = model(x)
    assert y.shape == (2, 1, 7 * scale, 10 * scale)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("h,w", [(1, 1), (1, 9), (5, 2), (8, 8)])
def test_tiny_and_exact_sizes(h, w):
    model = SwinIR(scale=2, **TINY)
    assert model(torch.zeros(1, 1, h, w)).shape == (1, 1, 2 * h, 2 * w)


def test_mirror_padding_matches_official_flip_concat():
    x = torch.arange(5.0)
    official = torch.cat([x, x.flip(0)])[:8]  # main_test_swinir.py pads this way
    assert torch.equal(x[mirror_index(5, 8)], official)
    assert mirror_index(2, 7).tolist() == [0, 1, 1, 0, 0, 1, 1]  # pads longer than the input keep mirroring


def test_bf16_autocast_and_channels_last():
    torch.manual_seed(0)
    model = SwinIR(scale=3, **TINY)
    x = torch.rand(2, 1, 9, 6) * 2 - 1
    ref = model(x)
    out = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x.contiguous(memory_format=torch.channels_last))
    assert low.shape == ref.shape and torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1
    low.float().square().mean().backward()
    assert torch.isfinite(model.conv_first.weight.grad).all()


def test_config_round_trip_and_layout():
    torch.manual_seed(0)
    model = SwinIR(scale=4, upsampler="pixelshuffle", num_feat=8, img_mean=0.3, **TINY)
    config = json.loads(json.dumps(model.config))
    assert config == model.config
    copy = SwinIR(**config)
    copy.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(1, 1, 5, 6) * 2 - 1
    assert torch.equal(copy(x), model(x))
    keys = set(model.state_dict())
    for key in ("conv_first.weight", "patch_embed.norm.weight", "norm.bias", "conv_after_body.weight",
                "layers.0.conv.weight", "layers.0.residual_group.blocks.1.attn.relative_position_bias_table",
                "layers.0.residual_group.blocks.1.attn.qkv.weight", "layers.0.residual_group.blocks.1.attn.proj.bias",
                "layers.0.residual_group.blocks.1.norm1.weight", "layers.0.residual_group.blocks.1.norm2.weight",
                "layers.0.residual_group.blocks.1.mlp.fc1.weight", "layers.0.residual_group.blocks.1.mlp.fc2.bias",
                "conv_before_upsample.0.weight", "upsample.0.weight", "upsample.2.weight", "conv_last.weight"):
        assert key in keys, key
    assert not any(k.endswith(("relative_position_index", "attn_mask", "mean")) for k in keys)


def test_defaults_are_swinir_s():
    model = SwinIR()
    assert model.config["embed_dim"] == 60 and model.config["depths"] == [6, 6, 6, 6] and model.scale == 3
    assert model.upsample[0].out_channels == 9 and model.window_size == 8
    # 24 Swin layers of 30,810 parameters each dominate the ~0.9M of SwinIR-S
    assert sum(p.numel() for p in model.parameters()) == 907_449


def test_input_ranges_agree():
    """The same function in [0, 1] units ("unit") and [-1, 1] units ("signed", mean and weights rescaled)."""
    torch.manual_seed(0)
    unit = SwinIR(scale=2, input_range="unit", img_mean=0.4, **TINY)
    signed = SwinIR(**{**unit.config, "input_range": "signed"})
    state = unit.state_dict()
    for key in ("upsample.0.weight", "upsample.0.bias"):
        state[key] = state[key] * 2  # output in [-1, 1] units is twice the [0, 1] one
    state["conv_first.weight"] = state["conv_first.weight"] / 2  # input differences are twice as large
    signed.load_state_dict(state)
    x = torch.rand(1, 1, 6, 5) * 2 - 1
    assert torch.allclose(signed(x), unit(x), atol=1e-5)


def test_bad_options_raise():
    for bad in (dict(upsampler="nearest+conv"), dict(input_range="0-255"), dict(depths=[2, 2], num_heads=[2]),
                dict(embed_dim=10, num_heads=[3]), dict(window_size=0), dict(scale=5), dict(img_mean=[0.1, 0.2])):
        with pytest.raises(MedsrError):
            SwinIR(**{**TINY, **bad})


def rgb_model(scale: int, upsampler: str) -> SwinIR:
    torch.manual_seed(1)
    model = SwinIR(scale=scale, in_channels=3, embed_dim=12, depths=[2, 1], num_heads=[2, 3], window_size=4,
                   upsampler=upsampler, num_feat=8, input_range="unit", img_mean=list(OFFICIAL_RGB_MEAN))
    with torch.no_grad():  # non-trivial norms and biases, so every converted tensor matters
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def gray_of(rgb: SwinIR, x: torch.Tensor) -> torch.Tensor:
    """Luma of the RGB model's output on x replicated to three channels."""
    return torch.einsum("c,bchw->bhw", torch.tensor(LUMA), rgb(x.expand(-1, 3, -1, -1)))[:, None]


@pytest.mark.parametrize("scale,upsampler,wrapper", [(3, "pixelshuffledirect", "params"),
                                                     (2, "pixelshuffledirect", None),
                                                     (4, "pixelshuffle", "params_ema")])
def test_official_round_trip(scale, upsampler, wrapper):
    rgb = rgb_model(scale, upsampler)
    with torch.no_grad():  # a 1x1 first conv never sees its zero padding, so the conversion is exact everywhere
        centre = rgb.conv_first.weight[:, :, 1, 1].clone()
        rgb.conv_first.weight.zero_()
        rgb.conv_first.weight[:, :, 1, 1] = centre
    state = official_state(rgb)
    config, gray_state = convert_official({wrapper: state} if wrapper else state)
    assert config == dict(scale=scale, in_channels=1, embed_dim=12, depths=[2, 1], num_heads=[2, 3], window_size=4,
                          mlp_ratio=2.0, upsampler=upsampler, img_mean=pytest.approx(sum(
                              l * m for l, m in zip(LUMA, OFFICIAL_RGB_MEAN))), input_range="unit",
                          num_feat=8 if upsampler == "pixelshuffle" else 64)  # num_feat is only used by pixelshuffle
    gray = SwinIR(**config)
    gray.load_state_dict(gray_state, strict=True)
    x = torch.rand(2, 1, 7, 9) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(gray(x), gray_of(rgb, x), atol=1e-5)


def test_official_conversion_with_a_full_first_kernel():
    """With 3x3 first-conv taps the RGB model pads each (x - mean_c) with zeros, which one gray channel cannot
    mimic: the conversion is exact in the first conv's interior and close elsewhere."""
    rgb = rgb_model(3, "pixelshuffledirect")
    config, gray_state = convert_official(official_state(rgb))
    gray = SwinIR(**config)
    gray.load_state_dict(gray_state)
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        rgb_feat = rgb.conv_first(((x + 1) / 2).expand(-1, 3, -1, -1) - rgb.mean)
        gray_feat = gray.conv_first((x + 1) / 2 - gray.mean)
        assert torch.allclose(gray_feat[..., 1:-1, 1:-1], rgb_feat[..., 1:-1, 1:-1], atol=1e-5)
        assert (gray(x) - gray_of(rgb, x)).abs().max() < 0.05


def test_convert_rejects_other_dicts():
    assert convert_official({"head.weight": torch.zeros(1)}) is None
    assert convert_official(None) is None
    state = official_state(rgb_model(2, "pixelshuffledirect"))
    for change in ({"layers.0.conv.0.weight": torch.zeros(1)},  # 3conv (SwinIR-L)
                   {"conv_up1.weight": torch.zeros(1)},  # nearest+conv (real-world SR)
                   {"layers.0.residual_group.blocks.0.attn.relative_position_bias_table": torch.zeros(50, 2)}):
        with pytest.raises(MedsrError):
            convert_official({**state, **change})
    for drop in ("upsample.0.weight", "norm.weight", "layers.1.conv.bias"):
        with pytest.raises(MedsrError):
            convert_official({k: v for k, v in state.items() if k != drop})


def naive_shifted_layer(layer: SwinLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer on one (H, W, C) image, token by token: each query attends only to the keys in its shifted
    window and in its own region of that window (the official mask), with the relative position bias."""
    w, s, heads = layer.window, layer.shift, layer.attn.num_heads
    size, _, c = x.shape
    q, k, v = layer.attn.qkv(layer.norm1(x)).split(c, dim=-1)
    table = layer.attn.relative_position_bias_table

    def place(i, j):  # rolled coordinates, window and region of original pixel (i, j)
        r = ((i - s) % size, (j - s) % size)
        band = [0 if t < size - w else 1 if t < size - s else 2 for t in r]
        return r, (r[0] // w, r[1] // w, band[0], band[1])

    pixels = [(i, j) for i in range(size) for j in range(size)]
    out = torch.zeros(size, size, c)
    for i, j in pixels:
        rq, group = place(i, j)
        keys = [(a, b) for a, b in pixels if place(a, b)[1] == group]
        for h in range(heads):
            part = slice(h * c // heads, (h + 1) * c // heads)
            logits = []
            for a, b in keys:
                rk = place(a, b)[0]
                bias = table[(rq[0] - rk[0] + w - 1) * (2 * w - 1) + rq[1] - rk[1] + w - 1, h]
                logits.append(q[i, j, part] @ k[a, b, part] / math.sqrt(c // heads) + bias)
            weights = torch.stack(logits).softmax(0)
            out[i, j, part] = sum(wt * v[a, b, part] for wt, (a, b) in zip(weights, keys))
    x = x + layer.attn.proj(out)
    return x + layer.mlp(layer.norm2(x))


def test_shifted_window_attention_matches_a_naive_implementation():
    torch.manual_seed(0)
    layer = SwinLayer(dim=6, num_heads=2, window=4, shift=2, mlp_ratio=2.0)
    with torch.no_grad():
        layer.attn.relative_position_bias_table.normal_(0, 1)  # make the bias layout matter
        x = torch.randn(8, 8, 6)
        ref = naive_shifted_layer(layer, x)
        assert torch.allclose(layer(x[None])[0], ref, atol=1e-5)
        unmasked = layer(x[None], torch.zeros(4, 16, 16))[0]  # the same layer without the shift mask
        assert not torch.allclose(unmasked, ref, atol=1e-3)


def test_pixels_in_other_regions_do_not_interact():
    """One layer, window 4 on 8x8: changing pixel (0, 0) changes exactly the tokens it may attend with."""
    torch.manual_seed(0)
    x = torch.randn(1, 8, 8, 6)
    moved = x.clone()
    moved[0, 0, 0, 0] += 1.0  # one channel: a shift of all channels is invisible to LayerNorm
    for shift, reach in ((0, (slice(0, 4), slice(0, 4))),  # its own window
                         (2, (slice(0, 2), slice(0, 2)))):  # shifted: its window wraps around, the mask cuts it to 2x2
        layer = SwinLayer(dim=6, num_heads=2, window=4, shift=shift, mlp_ratio=2.0)
        with torch.no_grad():
            changed = (layer(moved) - layer(x)).abs().amax(-1)[0] > 1e-6
        expected = torch.zeros(8, 8, dtype=torch.bool)
        expected[reach] = True
        assert torch.equal(changed, expected), f"shift {shift}"
    with torch.no_grad():  # without the mask the wrapped window (rows and columns 6, 7, 0, 1) would mix
        changed = (layer(moved, torch.zeros(4, 16, 16)) - layer(x, torch.zeros(4, 16, 16))).abs().amax(-1)[0] > 1e-6
    assert changed[6:, 6:].all()


def test_shift_mask_regions():
    mask = shift_mask(8, 8, window=4, shift=2)
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # windows away from the wrap-around need no mask
    assert (mask[3] != 0).sum() == 16 * 16 - 4 * 4 * 4  # the corner window: four 2x2 regions
