"""RRDBNet, the ESRGAN generator (Wang et al. 2018, "ESRGAN: Enhanced Super-Resolution Generative
Adversarial Networks"), as released again by Real-ESRGAN (Wang et al. 2021), plus a loader that turns
the official RGB checkpoints into 1-channel medsr models.

The network is the paper's: conv_first, `num_blocks` residual-in-residual dense blocks (three dense
blocks of five convs each, no batch norm, residual scaling 0.2), conv_body plus a long skip, then
nearest-neighbour upsampling steps each followed by conv + LeakyReLU(0.2), conv_hr and conv_last.
Parameter names follow BasicSR / Real-ESRGAN exactly, so an official state dict loads after only
the RGB -> gray change that `convert_official` makes.

What differs from the official code:
- grayscale by default (in_channels=1), and forward takes and returns [-1, 1] like every medsr model;
  input_range="unit" maps to and from the [0, 1] range the official weights were trained on;
- x2 and x3 without pixel_unshuffle are one nearest x2 / x3 step (BasicSR's RRDBNet always runs an x4
  body); x1 and x2 with pixel_unshuffle 4 / 2 fold the input and run the x4 body, as Real-ESRGAN does;
- with pixel_unshuffle the input is padded (edge replication) to a multiple of the factor and the
  output cropped back, where the official code asserts divisibility;
- the output is linear (no clamp inside): callers clamp.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsr.errors import MedsrError
from medsr.models.layers import LEAKY_SLOPE, scale_factors
from medsr.models.value_range import to_signed

# Residual scaling from the paper: keeps the very deep trunk stable without batch norm.
RES_SCALE = 0.2
# ITU-R BT.601 luma weights: how the RGB output of an official model becomes one gray channel.
LUMA = (0.299, 0.587, 0.114)
PIXEL_UNSHUFFLE_FACTORS = (1, 2, 4)
INPUT_RANGES = ("signed", "unit")


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each seeing the block input and all earlier outputs; the last one maps back
    to `channels` and is added to the input, scaled by 0.2."""

    def __init__(self, channels: int, growth: int):
        super().__init__()
        for i in range(1, 6):
            out = channels if i == 5 else growth
            setattr(self, f"conv{i}", nn.Conv2d(channels + (i - 1) * growth, out, 3, padding=1))
        self.lrelu = nn.LeakyReLU(LEAKY_SLOPE, inplace=False)
        for i in range(1, 6):
            conv = getattr(self, f"conv{i}")
            # ESRGAN's init: kaiming scaled by 0.1, so each block starts close to the identity
            nn.init.kaiming_normal_(conv.weight)
            with torch.no_grad():
                conv.weight.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for i in range(1, 5):
            feats.append(self.lrelu(getattr(self, f"conv{i}")(torch.cat(feats, 1))))
        return x + self.conv5(torch.cat(feats, 1)) * RES_SCALE


class RRDB(nn.Module):
    """Residual in residual: three dense blocks in a row, their sum scaled by 0.2 and added to the input."""

    def __init__(self, channels: int, growth: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(channels, growth)
        self.rdb2 = ResidualDenseBlock(channels, growth)
        self.rdb3 = ResidualDenseBlock(channels, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.rdb3(self.rdb2(self.rdb1(x))) * RES_SCALE


def _body_factor(scale: int, pixel_unshuffle: int) -> int:
    """How much the upsampling steps enlarge the (possibly folded) input; MedsrError if unbuildable."""
    if isinstance(pixel_unshuffle, bool) or pixel_unshuffle not in PIXEL_UNSHUFFLE_FACTORS:
        raise MedsrError(f"pixel_unshuffle must be one of {list(PIXEL_UNSHUFFLE_FACTORS)}, got {pixel_unshuffle!r}; "
                         f"use 1 (plain), 2 (RealESRGAN_x2plus) or 4 (x1 models)")
    if isinstance(scale, bool) or scale not in RRDBNet.SUPPORTED_SCALES:
        raise MedsrError(f"RRDBNet does not support scale {scale!r}; supported: {list(RRDBNet.SUPPORTED_SCALES)}")
    factor = scale * pixel_unshuffle
    if factor not in (2, 3, 4):
        raise MedsrError(f"RRDBNet cannot combine scale={scale} with pixel_unshuffle={pixel_unshuffle} "
                         f"(scale x pixel_unshuffle must be 2, 3 or 4); use pixel_unshuffle=2 or 4 for scale 1, "
                         f"1 or 2 for scale 2, and 1 for scales 3 and 4")
    return factor


class RRDBNet(nn.Module):
    """The ESRGAN / Real-ESRGAN generator. Maps (B, C, h, w) in [-1, 1] to (B, C, h*scale, w*scale),
    approximately in [-1, 1] (linear output); fully convolutional, any h, w >= 1.

    pixel_unshuffle=r folds the input r x r before conv_first (which then has in_channels*r*r inputs)
    and the body upsamples by scale*r: scale=2 with r=2 is RealESRGAN_x2plus, scale=1 with r=4 an x1 model.
    input_range="unit" means the weights expect [0, 1] images (official releases), "signed" [-1, 1].
    """

    SUPPORTED_SCALES = (1, 2, 3, 4)

    def __init__(self, scale: int = 4, in_channels: int = 1, channels: int = 64, num_blocks: int = 23,
                 growth: int = 32, pixel_unshuffle: int = 1, input_range: str = "signed"):
        super().__init__()
        body_factor = _body_factor(scale, pixel_unshuffle)
        if input_range not in INPUT_RANGES:
            raise MedsrError(f"input_range must be 'signed' ([-1, 1] weights, medsr-trained) or 'unit' "
                             f"([0, 1] weights, official releases), got {input_range!r}")
        for name, value, least in (("in_channels", in_channels, 1), ("channels", channels, 1),
                                   ("num_blocks", num_blocks, 0), ("growth", growth, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise MedsrError(f"RRDBNet {name} must be an integer >= {least}, got {value!r}")
        self.scale = scale
        self.pixel_unshuffle = pixel_unshuffle
        self.input_range = input_range
        self.config = dict(scale=scale, in_channels=in_channels, channels=channels, num_blocks=num_blocks,
                           growth=growth, pixel_unshuffle=pixel_unshuffle, input_range=input_range)
        # Outer convs keep PyTorch's default (kaiming-uniform) init, as in ESRGAN; only the dense blocks are rescaled.
        self.conv_first = nn.Conv2d(in_channels * pixel_unshuffle ** 2, channels, 3, padding=1)
        self.body = nn.Sequential(*[RRDB(channels, growth) for _ in range(num_blocks)])
        self.conv_body = nn.Conv2d(channels, channels, 3, padding=1)
        self.up_factors = scale_factors(body_factor)  # x4 -> [2, 2] (conv_up1, conv_up2), x3 -> [3], x2 -> [2]
        for i in range(len(self.up_factors)):
            setattr(self, f"conv_up{i + 1}", nn.Conv2d(channels, channels, 3, padding=1))
        self.conv_hr = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_last = nn.Conv2d(channels, in_channels, 3, padding=1)
        self.lrelu = nn.LeakyReLU(LEAKY_SLOPE, inplace=False)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        h, w = lr.shape[-2:]
        x = (lr + 1) * 0.5 if self.input_range == "unit" else lr
        r = self.pixel_unshuffle
        if r > 1:
            # replicate, not zeros: a dark seam would leak into the real pixels next to it
            x = F.pad(x, (0, -w % r, 0, -h % r), mode="replicate")
            x = F.pixel_unshuffle(x, r)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i, f in enumerate(self.up_factors):
            feat = F.interpolate(feat, scale_factor=f, mode="nearest")
            feat = self.lrelu(getattr(self, f"conv_up{i + 1}")(feat))
        out = self.conv_last(self.lrelu(self.conv_hr(feat)))
        if r > 1:
            out = out[..., : h * self.scale, : w * self.scale]
        return to_signed(out) if self.input_range == "unit" else out


# ---------------------------------------------------------------------------------------------
# Official checkpoints
# ---------------------------------------------------------------------------------------------

_OLD_BLOCK = re.compile(r"model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)")
_OLD_SUB = re.compile(r"model\.1\.sub\.(\d+)\.(weight|bias)")
_OLD_TOP = re.compile(r"model\.(\d+)\.(weight|bias)")


def _from_original_esrgan(state: Mapping) -> dict:
    """Rename the original ESRGAN repository's keys (one nn.Sequential `model`) to BasicSR's.

    x4: model.0 conv_first, model.1.sub.{i}.RDB{k}.conv{j}.0 blocks, model.1.sub.{N} conv_body,
    model.3 / model.6 conv_up1 / conv_up2, model.8 conv_hr, model.10 conv_last (the indices in
    between are Upsample and LeakyReLU, which have no parameters). n upsampling steps put the
    up-convs at 3, 6, .., 3n, conv_hr at 3n+2 and conv_last at 3n+4.
    """
    out, subs, tops = {}, {}, {}
    for key, value in state.items():
        if m := _OLD_BLOCK.fullmatch(key):
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
        elif m := _OLD_SUB.fullmatch(key):
            subs.setdefault(int(m[1]), {})[m[2]] = value
        elif (m := _OLD_TOP.fullmatch(key)) and m[1] != "1":
            tops.setdefault(int(m[1]), {})[m[2]] = value
        else:
            out[key] = value  # unknown: reported as unexpected by the layout check
    blocks = {int(k.split(".")[1]) for k in out if k.startswith("body.")}
    if len(subs) != 1:
        raise MedsrError(f"original-ESRGAN checkpoint: expected exactly one trunk conv model.1.sub.N "
                         f"after the blocks, found {len(subs)} ({sorted(subs)}); the file is not a complete RRDBNet")
    (trunk, params), = subs.items()
    if trunk != len(blocks) or blocks != set(range(len(blocks))):
        raise MedsrError(f"original-ESRGAN checkpoint: the trunk conv is model.1.sub.{trunk} but the blocks are "
                         f"numbered {sorted(blocks)[:3]}..{sorted(blocks)[-1:]}; expected blocks 0..{trunk - 1}")
    out.update({f"conv_body.{p}": v for p, v in params.items()})
    if 0 not in tops:
        raise MedsrError("original-ESRGAN checkpoint has no model.0 (conv_first); the file is not a complete RRDBNet")
    tail = sorted(i for i in tops if i > 0)
    steps = len(tail) - 2
    expected = [3 * (i + 1) for i in range(steps)] + [3 * steps + 2, 3 * steps + 4]
    if steps < 1 or tail != expected:
        raise MedsrError(f"original-ESRGAN checkpoint: convs after the trunk are model.{tail}; expected "
                         f"up-convs at 3, 6, .. then conv_hr and conv_last (x4: model.3, 6, 8, 10)")
    names = ["conv_first"] + [f"conv_up{i + 1}" for i in range(steps)] + ["conv_hr", "conv_last"]
    for name, index in zip(names, [0] + tail):
        out.update({f"{name}.{p}": v for p, v in tops[index].items()})
    return out


def _unwrap(state) -> Mapping | None:
    """The plain state dict inside a checkpoint (params_ema preferred, as Real-ESRGAN's inference does)."""
    if not isinstance(state, Mapping):
        return None
    for wrapper in ("params_ema", "params", "state_dict"):
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not state or not all(isinstance(k, str) for k in state):
        return None
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _infer_config(sd: dict, scale: int | None) -> tuple[dict, int]:
    """Constructor kwargs (for in_channels=colours) and the colour count, from BasicSR-named keys."""
    for key in ("conv_first.weight", "conv_last.weight", "body.0.rdb1.conv1.weight"):
        if not (torch.is_tensor(sd.get(key)) and sd[key].dim() == 4):
            raise MedsrError(f"RRDBNet checkpoint: {key} is missing or not a 4-D conv weight; the file is incomplete or damaged")
    colours = sd["conv_last.weight"].shape[0]
    channels, folded = sd["conv_first.weight"].shape[:2]
    growth = sd["body.0.rdb1.conv1.weight"].shape[0]
    num_blocks = 0
    while f"body.{num_blocks}.rdb1.conv1.weight" in sd:
        num_blocks += 1
    steps = 0
    while f"conv_up{steps + 1}.weight" in sd:
        steps += 1
    if colours not in (1, 3):
        raise MedsrError(f"RRDBNet checkpoint: conv_last has {colours} output channels; only gray (1) or RGB (3) can be converted")
    r = next((r for r in PIXEL_UNSHUFFLE_FACTORS if colours * r * r == folded), None)
    if r is None:
        raise MedsrError(f"RRDBNet checkpoint: conv_first has {folded} input channels, which is not {colours} colours "
                         f"x 1, 4 or 16 (pixel_unshuffle 1, 2, 4); the input and output layers do not match")
    if steps == 2:
        body_factor = 4
    elif steps == 1:
        # a single nearest step could be x2 or x3: the weights do not say which; x2 is the common one
        body_factor = scale * r if scale is not None else 2
    else:
        raise MedsrError(f"RRDBNet checkpoint has {steps} upsampling convs (conv_up1..); expected 1 or 2")
    if body_factor % r:
        raise MedsrError(f"RRDBNet checkpoint: scale {scale} does not fit pixel_unshuffle {r} with {steps} upsampling step(s)")
    found = body_factor // r
    if scale is not None and scale != found:
        raise MedsrError(f"RRDBNet checkpoint is a x{found} model (pixel_unshuffle {r}, {steps} upsampling step(s)), "
                         f"not x{scale}; use scale {found}")
    config = dict(scale=found, in_channels=colours, channels=channels, num_blocks=num_blocks, growth=growth,
                  pixel_unshuffle=r, input_range="unit")
    return config, colours


def _check_layout(sd: dict, config: dict) -> None:
    """MedsrError naming what is wrong unless `sd` has exactly the keys and shapes RRDBNet(**config) has."""
    with torch.device("meta"):  # shapes only: no memory, no init cost for a 16M-parameter model
        reference = RRDBNet(**config).state_dict()
    missing = [k for k in reference if k not in sd]
    unexpected = [k for k in sd if k not in reference]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})" for k, v in reference.items()
             if k in sd and (not torch.is_tensor(sd[k]) or sd[k].shape != v.shape)]
    problems = [f"{label}: {', '.join(items[:3])}{' ..' if len(items) > 3 else ''}"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items]
    if problems:
        raise MedsrError(f"RRDBNet checkpoint is inconsistent ({config['num_blocks']} blocks, {config['channels']} channels, "
                         f"growth {config['growth']}): {'; '.join(problems)}; the file is damaged or not a plain RRDBNet")


def convert_official(state: dict, *, scale: int | None = None) -> tuple[dict, dict] | None:
    """(config, state_dict) for a 1-channel RRDBNet with input_range="unit" from an official checkpoint,
    or None if `state` is not an RRDBNet layout at all.

    Understands BasicSR / Real-ESRGAN keys (RealESRGAN_x4plus, RealESRGAN_x2plus, ESRGAN_SRx4; wrapped in
    params_ema / params or not) and the original ESRGAN repository's (RRDB_ESRGAN_x4, RRDB_PSNR_x4).
    RGB weights become gray: the first conv's weights are summed over the colours (a gray image copied
    to R, G and B gives the same features) and the last conv is combined as 0.299 R + 0.587 G + 0.114 B.
    `scale` is needed only for a single-step model, where x2 and x3 look the same (default x2).
    Raises MedsrError for a file that looks like RRDBNet but does not add up.
    """
    state = _unwrap(state)
    if state is None:
        return None
    if "model.1.sub.0.RDB1.conv1.0.weight" in state:
        sd = _from_original_esrgan(state)
    elif "body.0.rdb1.conv1.weight" in state:
        sd = dict(state)
    else:
        return None
    config, colours = _infer_config(sd, scale)
    _check_layout(sd, config)
    sd = {k: v.detach().float().clone() for k, v in sd.items()}
    if colours == 3:
        r2 = config["pixel_unshuffle"] ** 2
        first = sd["conv_first.weight"]
        # pixel_unshuffle puts colour c's r*r phases at channels c*r*r .. c*r*r + r*r - 1
        sd["conv_first.weight"] = first.reshape(first.shape[0], 3, r2, *first.shape[2:]).sum(1)
        luma = torch.tensor(LUMA)
        sd["conv_last.weight"] = torch.einsum("c,cikl->ikl", luma, sd["conv_last.weight"]).unsqueeze(0)
        sd["conv_last.bias"] = (luma @ sd["conv_last.bias"]).reshape(1)
    config["in_channels"] = 1
    return config, sd
