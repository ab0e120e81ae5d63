"""RRDBNet (ESRGAN / Real-ESRGAN): shapes, gradients, bf16, config round trip, and official-checkpoint conversion."""

import io
import re

import pytest
import torch

from medsr.errors import MedsrError
from medsr.models.rrdb import LUMA, RRDBNet, convert_official

torch.set_num_threads(2)

TINY = dict(channels=8, num_blocks=1, growth=4)


def tiny(**kw) -> RRDBNet:
    torch.manual_seed(0)
    return RRDBNet(**{**TINY, **kw})


@pytest.mark.parametrize("scale,r", [(2, 1), (3, 1), (4, 1), (2, 2), (1, 4)])
def test_forward_backward_odd_sizes(scale, r):
    g = tiny(scale=scale, pixel_unshuffle=r)
    x = torch.rand(2, 1, 7, 9) * 2 - 1
    y = g(x)
    assert y.shape == (2, 1, 7 * scale, 9 * scale)
    y.square().mean().backward()
    for name, p in g.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert g(torch.zeros(1, 1, 1, 1)).shape == (1, 1, scale, scale)


def test_parameter_names_follow_basicsr():
    names = set(tiny(scale=4, num_blocks=2).state_dict())
    assert {"conv_first.weight", "conv_body.weight", "conv_up1.weight", "conv_up2.weight", "conv_hr.weight",
            "conv_last.weight", "body.1.rdb3.conv5.bias"} <= names
    assert "conv_up2.weight" not in tiny(scale=2).state_dict()
    assert "conv_up2.weight" in tiny(scale=2, pixel_unshuffle=2).state_dict()
    assert tiny(scale=2, pixel_unshuffle=2).conv_first.in_channels == 4


def test_bf16_autocast_and_channels_last():
    g = tiny(scale=4, pixel_unshuffle=1)
    x = (torch.rand(1, 1, 8, 10) * 2 - 1).contiguous(memory_format=torch.channels_last)
    ref = g(x.contiguous())
    assert torch.allclose(g(x), ref, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = g(x)
    assert y.shape == (1, 1, 32, 40) and torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() < 0.1


def test_config_round_trip_and_unit_range():
    g = tiny(scale=2, pixel_unshuffle=2, input_range="unit")
    h = RRDBNet(**g.config)
    h.load_state_dict(g.state_dict())
    x = torch.rand(1, 1, 5, 6) * 2 - 1
    assert torch.equal(g(x), h(x))
    assert g.config == dict(scale=2, in_channels=1, channels=8, num_blocks=1, growth=4, pixel_unshuffle=2, input_range="unit")


@pytest.mark.parametrize("kw", [dict(scale=8), dict(scale=1), dict(scale=4, pixel_unshuffle=2), dict(pixel_unshuffle=3),
                                dict(input_range="0-1"), dict(channels=0)])
def test_bad_options_raise(kw):
    with pytest.raises(MedsrError):
        RRDBNet(**{**TINY, **kw})


# ---- official checkpoints -------------------------------------------------------------------------------


def to_original_esrgan(sd: dict, num_blocks: int) -> dict:
    """BasicSR keys -> the original ESRGAN repository's nn.Sequential keys (x4)."""
    top = {"conv_first": "model.0", "conv_body": f"model.1.sub.{num_blocks}", "conv_up1": "model.3",
           "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}
    out = {}
    for key, value in sd.items():
        if m := re.fullmatch(r"body\.(\d+)\.rdb(\d)\.(conv\d)\.(weight|bias)", key):
            out[f"model.1.sub.{m[1]}.RDB{m[2]}.{m[3]}.0.{m[4]}"] = value
        else:
            name, param = key.rsplit(".", 1)
            out[f"{top[name]}.{param}"] = value
    return out


def save_load(obj) -> dict:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def rgb_model(scale: int, r: int) -> RRDBNet:
    torch.manual_seed(1)
    m = RRDBNet(scale=scale, in_channels=3, pixel_unshuffle=r, input_range="unit", num_blocks=2, channels=8, growth=4)
    with torch.no_grad():  # larger than the 0.1-scaled init, so every layer visibly matters
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def assert_gray_matches_luma(rgb: RRDBNet, converted, scale: int, r: int):
    config, sd = converted
    assert config["in_channels"] == 1 and config["input_range"] == "unit"
    assert (config["scale"], config["pixel_unshuffle"], config["num_blocks"], config["channels"], config["growth"]) == (scale, r, 2, 8, 4)
    gray = RRDBNet(**config)
    gray.load_state_dict(sd)  # strict
    x = torch.rand(1, 1, 7, 6) * 2 - 1
    with torch.no_grad():
        out_rgb = (rgb(x.repeat(1, 3, 1, 1)) + 1) / 2  # unit range
        out_gray = (gray(x) + 1) / 2
    luma = sum(w * out_rgb[:, c] for c, w in enumerate(LUMA)).unsqueeze(1)
    assert out_gray.shape == (1, 1, 7 * scale, 6 * scale)
    assert torch.allclose(out_gray, luma, atol=1e-5), (out_gray - luma).abs().max()


@pytest.mark.parametrize("wrapper", ["params_ema", "params", None])
@pytest.mark.parametrize("scale,r", [(4, 1), (2, 2), (1, 4)])
def test_convert_basicsr_layout(scale, r, wrapper):
    rgb = rgb_model(scale, r)
    sd = rgb.state_dict()
    ckpt = {wrapper: sd} if wrapper else sd
    if wrapper == "params_ema":
        ckpt["params"] = {k: torch.zeros_like(v) for k, v in sd.items()}  # params_ema must win
    assert_gray_matches_luma(rgb, convert_official(save_load(ckpt)), scale, r)


def test_convert_original_esrgan_layout():
    rgb = rgb_model(4, 1)
    old = to_original_esrgan(rgb.state_dict(), num_blocks=2)
    assert "model.1.sub.0.RDB1.conv1.0.weight" in old and "model.1.sub.2.weight" in old and "model.10.bias" in old
    assert_gray_matches_luma(rgb, convert_official(save_load(old)), 4, 1)


def test_gray_checkpoint_passes_unchanged_and_scale_hint():
    g = tiny(scale=3, input_range="unit")
    config, sd = convert_official(g.state_dict(), scale=3)
    assert config == g.config
    assert all(torch.equal(sd[k], v) for k, v in g.state_dict().items())
    assert convert_official(g.state_dict())[0]["scale"] == 2  # one step: x2 unless told
    with pytest.raises(MedsrError):
        convert_official(tiny(scale=4).state_dict(), scale=2)


@pytest.mark.parametrize("garbage", [{}, {"a": torch.zeros(1)}, {"params": {"conv_first.weight": torch.zeros(8, 3, 3, 3)}},
                                     {1: 2}, torch.zeros(3), {"params_ema": "x"}])
def test_garbage_gives_none(garbage):
    assert convert_official(garbage) is None


def test_inconsistent_rrdb_raises():
    sd = rgb_model(4, 1).state_dict()
    for broken in (
        {k: v for k, v in sd.items() if not k.startswith("conv_body")},
        {**sd, "body.1.rdb2.conv3.weight": torch.zeros(4, 9, 3, 3)},
        {**sd, "conv_first.weight": torch.zeros(8, 5, 3, 3)},
        {**sd, "body.5.rdb1.conv2.weight": torch.zeros(4, 12, 3, 3)},
    ):
        with pytest.raises(MedsrError):
            convert_official(broken)
    old = to_original_esrgan(sd, num_blocks=2)
    old["model.7.weight"] = old.pop("model.8.weight")
    with pytest.raises(MedsrError, match="model"):
        convert_official(old)
    with pytest.raises(MedsrError):
        convert_official({k: v for k, v in to_original_esrgan(sd, 2).items() if not k.startswith("model.1.sub.2.")})
