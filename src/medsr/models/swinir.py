"""SwinIR (Liang et al. 2021, "SwinIR: Image Restoration Using Swin Transformer"), for gray images,
plus `convert_official`, which adapts the released RGB checkpoints to one channel.

The network is the paper's: a 3x3 conv (shallow features); residual Swin transformer blocks (RSTB:
Swin layers with window self-attention, relative position bias and shifted windows on every second
layer, then a 3x3 conv, plus the RSTB's own skip); LayerNorm and a conv after the body; a long skip
from the shallow features; and an upsampler. The defaults are the lightweight SwinIR-S (60 channels,
4 RSTBs of 6 layers, window 8, MLP ratio 2, one-step pixel-shuffle upsampling). Parameter names
follow the official network_swinir.py, so official state dicts load after the RGB -> gray change.

What differs from the official code:
- one input channel by default, with a scalar `img_mean` (the official RGB mean is per channel);
- forward takes and returns [-1, 1]; `input_range` says whether the weights work on [-1, 1]
  ("signed", trained by medsr) or on [0, 1] ("unit", the official models, img_range = 1);
- inputs of any size: the model pads to a multiple of the window by mirroring (flip and
  concatenate, as the official test script does) and crops the output, instead of leaving the
  padding to the caller;
- the shift mask and relative position index are computed, not stored: the official files carry
  them as buffers (attn_mask depends on the training patch size), here they are not in the state dict;
- attention runs through torch's scaled_dot_product_attention with bias + mask as attn_mask;
- no stochastic depth, dropout, absolute position embedding or checkpointing (unused for SR at
  test time, and absent from the released SR models), no "nearest+conv" or "3conv" variants.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsr.errors import MedsrError
from medsr.models.layers import scale_factors
from medsr.models.value_range import to_signed, to_unit

UPSAMPLERS = ("pixelshuffledirect", "pixelshuffle")
INPUT_RANGES = ("signed", "unit")
# ITU-R BT.601 luma weights: how RGB checkpoints are folded into one gray output channel.
LUMA = (0.299, 0.587, 0.114)
# The dataset mean the official RGB models subtract, in [0, 1] units (DIV2K).
OFFICIAL_RGB_MEAN = (0.4488, 0.4371, 0.4040)
# The official models mask cross-region attention with -100, not -inf; kept so outputs match.
MASK_VALUE = -100.0
# Keys of official files that are recomputed here (buffers), never loaded.
OFFICIAL_BUFFERS = ("relative_position_index", "attn_mask")


def relative_position_index(window: int) -> torch.Tensor:
    """(N, N) index into the (2w-1)^2 bias table for query i and key j of a window (N = w*w),
    laid out as in the official code: (dy + w - 1) * (2w - 1) + (dx + w - 1) with d = pos_i - pos_j."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, num_windows, window*window, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, (h // window) * (w // window), window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of window_partition: (B, num_windows, window*window, C) -> (B, H, W, C)."""
    b, c = windows.shape[0], windows.shape[-1]
    x = windows.reshape(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def shift_mask(h: int, w: int, window: int, shift: int, device=None) -> torch.Tensor:
    """(num_windows, N, N) additive mask for shifted windows on an h x w grid (multiples of `window`).

    After the cyclic roll, windows on the last row/column hold pixels from opposite image edges;
    tokens of different regions must not attend to each other, exactly as in the official code."""
    def bands(size: int) -> torch.Tensor:
        ids = torch.zeros(size, dtype=torch.long, device=device)
        ids[size - window:] = 1
        ids[size - shift:] = 2
        return ids

    regions = (bands(h)[:, None] * 3 + bands(w)[None, :])[None, :, :, None]
    regions = window_partition(regions, window)[0, :, :, 0]  # (num_windows, N)
    different = regions[:, :, None] != regions[:, None, :]
    return torch.zeros(different.shape, device=device).masked_fill_(different, MASK_VALUE)


def mirror_index(size: int, target: int, device=None) -> torch.Tensor:
    """Indices that extend `size` rows to `target` by repeated mirroring (0 1 2 | 2 1 0 | 0 1 ...):
    the official flip-and-concatenate padding, also defined when the pad exceeds the input."""
    i = torch.arange(target, device=device) % (2 * size)
    return torch.where(i < size, i, 2 * size - 1 - i)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Mirror-pad (B, C, h, w) at the bottom and right so both sides are multiples of `multiple`."""
    h, w = x.shape[-2:]
    if h % multiple:
        x = x.index_select(-2, mirror_index(h, h + (-h) % multiple, x.device))
    if w % multiple:
        x = x.index_select(-1, mirror_index(w, w + (-w) % multiple, x.device))
    return x


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias."""

    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.window, self.num_heads = window, num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """windows: (B, num_windows, N, C); mask: (num_windows, N, N) additive, or None."""
        b, nw, n, c = windows.shape
        heads = self.num_heads
        qkv = self.qkv(windows).reshape(b, nw, n, 3, heads, c // heads).permute(3, 0, 1, 4, 2, 5)
        bias = self.relative_position_bias_table[self.relative_position_index]  # (N, N, heads)
        bias = bias.permute(2, 0, 1).to(qkv.dtype)
        if mask is None:
            q, k, v = qkv.reshape(3, b * nw, heads, n, c // heads)
            attn_mask = bias[None]  # the same for every window
        else:
            # windows and heads share one axis so the per-window mask broadcasts over the batch only
            q, k, v = qkv.reshape(3, b, nw * heads, n, c // heads)
            attn_mask = (bias[None] + mask[:, None].to(qkv.dtype)).reshape(1, nw * heads, n, n)
        # a 4-D mask keeps torch on its fused CPU kernel (3-D falls back to 2x slower math);
        # the default scale head_dim^-0.5 is the official one
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.reshape(b, nw, heads, n, c // heads).transpose(2, 3).reshape(b, nw, n, c)
        return self.proj(out)


class SwinLayer(nn.Module):
    """One Swin transformer layer (the official SwinTransformerBlock): (S)W-MSA then MLP, pre-norm."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, H, W, C) with H, W multiples of the window; mask: shift_mask(H, W, ...) or None to compute it."""
        _, h, w, _ = x.shape
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
            if mask is None:
                mask = shift_mask(h, w, self.window, self.shift, x.device)
        y = self.attn(window_partition(y, self.window), mask if self.shift else None)
        y = window_reverse(y, self.window, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class SwinLayers(nn.Module):
    """A stack of Swin layers, every second one shifted by half a window (the official BasicLayer)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinLayer(dim, num_heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio) for i in range(depth))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin layers, a 3x3 conv, plus the block input."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float):
        super().__init__()
        self.residual_group = SwinLayers(dim, depth, num_heads, window, mlp_ratio)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        y = self.residual_group(x, mask)
        return x + self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """The LayerNorm on the token embeddings (patch size 1, so the embedding itself is a reshape)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class SwinIR(nn.Module):
    """SwinIR generator. Maps (B, C, h, w) in [-1, 1] to (B, C, h*scale, w*scale), a linear output
    approximately in [-1, 1] (callers clamp). Any h, w >= 1 (padded internally to the window).

    upsampler "pixelshuffledirect" (lightweight SwinIR-S): one conv to in_channels*scale^2 + PixelShuffle;
    "pixelshuffle" (classical SwinIR): conv to `num_feat` + LeakyReLU, conv + PixelShuffle per factor, conv.
    img_mean: subtracted before the body and added back, in [0, 1] units (a float, or one per channel).
    """

    SUPPORTED_SCALES = (2, 3, 4, 8)

    def __init__(self, scale: int = 3, in_channels: int = 1, embed_dim: int = 60, depths: list[int] | tuple = (6, 6, 6, 6),
                 num_heads: list[int] | tuple = (6, 6, 6, 6), window_size: int = 8, mlp_ratio: float = 2.0,
                 upsampler: str = "pixelshuffledirect", img_mean: float = 0.5, input_range: str = "signed",
                 num_feat: int = 64):
        super().__init__()
        factors = scale_factors(scale)
        depths, num_heads = list(depths), list(num_heads)
        mean = [float(m) for m in img_mean] if isinstance(img_mean, (list, tuple)) else float(img_mean)
        _check_options(in_channels, embed_dim, depths, num_heads, window_size, mlp_ratio, upsampler, mean,
                       input_range, num_feat)
        self.scale = scale
        self.window_size = window_size
        self.input_range = input_range
        self.config = dict(scale=scale, in_channels=in_channels, embed_dim=embed_dim, depths=depths,
                           num_heads=num_heads, window_size=window_size, mlp_ratio=mlp_ratio, upsampler=upsampler,
                           img_mean=mean, input_range=input_range, num_feat=num_feat)
        mean = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1).expand(1, in_channels, 1, 1).clone()
        # the mean in the units the weights work in: [0, 1] for "unit", [-1, 1] for "signed"
        self.register_buffer("mean", mean if input_range == "unit" else to_signed(mean), persistent=False)

        self.conv_first = nn.Conv2d(in_channels, embed_dim, 3, padding=1)
        self.patch_embed = PatchEmbed(embed_dim)
        self.layers = nn.ModuleList(
            RSTB(embed_dim, depth, heads, window_size, mlp_ratio) for depth, heads in zip(depths, num_heads))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, padding=1), nn.LeakyReLU())
            up = []
            for f in factors:
                up += [nn.Conv2d(num_feat, num_feat * f * f, 3, padding=1), nn.PixelShuffle(f)]
            self.upsample = nn.Sequential(*up)
            self.conv_last = nn.Conv2d(num_feat, in_channels, 3, padding=1)
        else:
            self.upsample = nn.Sequential(nn.Conv2d(embed_dim, in_channels * scale * scale, 3, padding=1),
                                          nn.PixelShuffle(scale))
        self.apply(_init_weights)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        h, w = lr.shape[-2:]
        x = to_unit(lr, clamp=False) if self.input_range == "unit" else lr
        x = pad_to_multiple(x - self.mean.to(x.dtype), self.window_size)
        feat = self.conv_first(x)
        tokens = self.patch_embed(feat.permute(0, 2, 3, 1))  # (B, H, W, C): tokens stay channels-last in the body
        mask = None
        if any(len(layer.residual_group.blocks) > 1 for layer in self.layers) and self.window_size > 1:
            mask = shift_mask(*tokens.shape[1:3], self.window_size, self.window_size // 2, tokens.device)
        for layer in self.layers:
            tokens = layer(tokens, mask)
        feat = feat + self.conv_after_body(self.norm(tokens).permute(0, 3, 1, 2))
        if self.config["upsampler"] == "pixelshuffle":
            out = self.conv_last(self.upsample(self.conv_before_upsample(feat)))
        else:
            out = self.upsample(feat)
        out = out[..., :h * self.scale, :w * self.scale] + self.mean.to(out.dtype)
        return to_signed(out) if self.input_range == "unit" else out


def _init_weights(m: nn.Module) -> None:
    # the official initialisation; convs keep torch's default
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _check_options(in_channels, embed_dim, depths, num_heads, window_size, mlp_ratio, upsampler, mean,
                   input_range, num_feat) -> None:
    def bad(message: str):
        raise MedsrError(f"SwinIR: {message}")

    if upsampler not in UPSAMPLERS:
        bad(f"unknown upsampler {upsampler!r}; use one of {', '.join(UPSAMPLERS)}")
    if input_range not in INPUT_RANGES:
        bad(f"unknown input_range {input_range!r}; use 'signed' (weights on [-1, 1]) or 'unit' (weights on [0, 1])")
    if not depths or len(depths) != len(num_heads):
        bad(f"depths {depths} and num_heads {num_heads} must be non-empty lists of the same length (one per RSTB)")
    if any(not isinstance(d, int) or d < 1 for d in depths):
        bad(f"depths {depths} must be positive integers")
    for heads in num_heads:
        if not isinstance(heads, int) or heads < 1 or embed_dim % heads:
            bad(f"embed_dim {embed_dim} must be divisible by every entry of num_heads {num_heads}; change one of them")
    if not isinstance(window_size, int) or window_size < 1:
        bad(f"window_size must be a positive integer, got {window_size!r}")
    if min(in_channels, embed_dim, num_feat) < 1 or int(embed_dim * mlp_ratio) < 1:
        bad("in_channels, embed_dim, num_feat and embed_dim * mlp_ratio must be positive")
    if isinstance(mean, list) and len(mean) not in (1, in_channels):
        bad(f"img_mean has {len(mean)} values for {in_channels} channels; give one float or one per channel")


def convert_official(state: dict) -> tuple[dict, dict] | None:
    """(config, state_dict) of a 1-channel SwinIR (input_range "unit") from an official SwinIR
    checkpoint (maybe wrapped as {"params": ...} or {"params_ema": ...}); None if the keys are not SwinIR's.

    The architecture is read off the keys and shapes. RGB weights become gray ones: the first conv is
    summed over R, G, B (its bias absorbs the per-channel mean, so the gray model equals the RGB one
    on replicated gray input except within the first conv's reach of the image border, where the
    RGB model's zero padding of (x - mean_c) cannot be mimicked by one channel); the last conv
    (for "pixelshuffledirect" upsample.0, whose output channels are colour-major: c*scale^2 + k)
    is combined by luma, 0.299 R + 0.587 G + 0.114 B, and img_mean is the luma of the RGB mean.
    Inconsistent SwinIR-like dicts raise MedsrError.
    """
    if not isinstance(state, dict):
        return None
    for wrapper in ("params_ema", "params"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from DataParallel
    if "conv_first.weight" not in state or "layers.0.residual_group.blocks.0.attn.relative_position_bias_table" not in state:
        return None

    def bad(message: str):
        raise MedsrError(f"SwinIR checkpoint: {message}; convert only official SwinIR SR checkpoints (SwinIR-S or -M)")

    def shape(key: str) -> tuple:
        if key not in state or not torch.is_tensor(state[key]):
            bad(f"missing tensor {key!r}")
        return tuple(state[key].shape)

    embed_dim, in_ch = shape("conv_first.weight")[:2]
    if in_ch not in (1, 3):
        bad(f"{in_ch} input channels (expected 1 or 3)")
    if "layers.0.conv.0.weight" in state:
        bad("resi_connection '3conv' (the large real-world model) is not supported")
    if "absolute_pos_embed" in state:
        bad("absolute position embedding (ape=True) is not supported")
    if "patch_embed.norm.weight" not in state:
        bad("no patch_embed.norm (patch_norm=False) is not supported")

    depths, num_heads, windows, ratios = [], [], set(), set()
    while f"layers.{len(depths)}.residual_group.blocks.0.norm1.weight" in state:
        i, depth, heads = len(depths), 0, set()
        while f"layers.{i}.residual_group.blocks.{depth}.norm1.weight" in state:
            prefix = f"layers.{i}.residual_group.blocks.{depth}."
            table_len, n_heads = shape(prefix + "attn.relative_position_bias_table")
            window = (math.isqrt(table_len) + 1) // 2
            if (2 * window - 1) ** 2 != table_len:
                bad(f"{prefix}attn.relative_position_bias_table has {table_len} rows, not (2w-1)^2")
            hidden, dim = shape(prefix + "mlp.fc1.weight")
            if dim != embed_dim:
                bad(f"{prefix}mlp.fc1.weight has width {dim}, but conv_first makes {embed_dim} channels")
            windows.add(window)
            ratios.add(hidden / embed_dim)
            heads.add(n_heads)
            depth += 1
        if len(heads) != 1:
            bad(f"layer {i} mixes head counts {sorted(heads)}")
        depths.append(depth)
        num_heads.append(heads.pop())
    if not depths:
        bad("no layers.0.residual_group.blocks.0.norm1.weight")
    if len(windows) != 1 or len(ratios) != 1:
        bad(f"blocks disagree on the window size {sorted(windows)} or MLP ratio {sorted(ratios)}")
    window, mlp_ratio = windows.pop(), ratios.pop()

    if "conv_up1.weight" in state:
        bad("upsampler 'nearest+conv' (the real-world SR models) is not supported")
    num_feat = 64
    if "conv_before_upsample.0.weight" in state:
        upsampler, num_feat = "pixelshuffle", shape("conv_before_upsample.0.weight")[0]
        scale, k = 1, 0
        while f"upsample.{k}.weight" in state:
            factor = math.isqrt(shape(f"upsample.{k}.weight")[0] // num_feat)
            if factor * factor * num_feat != shape(f"upsample.{k}.weight")[0]:
                bad(f"upsample.{k}.weight has {shape(f'upsample.{k}.weight')[0]} outputs, not factor^2 * {num_feat}")
            scale, k = scale * factor, k + 2
        if shape("conv_last.weight")[:2] != (in_ch, num_feat):
            bad(f"conv_last.weight has shape {shape('conv_last.weight')}, expected ({in_ch}, {num_feat}, 3, 3)")
    elif "upsample.0.weight" in state:
        upsampler = "pixelshuffledirect"
        out = shape("upsample.0.weight")[0]
        scale = math.isqrt(out // in_ch)
        if scale * scale * in_ch != out:
            bad(f"upsample.0.weight has {out} outputs, not {in_ch} * scale^2")
    else:
        bad("no upsampler: a denoising or JPEG model (scale 1), not super-resolution")
    if scale not in SwinIR.SUPPORTED_SCALES:
        bad(f"scale {scale} is not supported (supported: {list(SwinIR.SUPPORTED_SCALES)})")

    luma = torch.tensor(LUMA, dtype=torch.float64)
    rgb_mean = torch.tensor(OFFICIAL_RGB_MEAN, dtype=torch.float64)
    img_mean = float(luma @ rgb_mean) if in_ch == 3 else 0.0  # the official 1-channel models subtract nothing
    config = dict(scale=scale, in_channels=1, embed_dim=embed_dim, depths=depths, num_heads=num_heads,
                  window_size=window, mlp_ratio=mlp_ratio, upsampler=upsampler, img_mean=img_mean,
                  input_range="unit", num_feat=num_feat)

    out = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in OFFICIAL_BUFFERS}
    if in_ch == 3:
        def to_gray(key: str, rows: int):
            """Luma-combine the colour-major output channels of `key`: rows c*rows + k -> k."""
            for name in (key + ".weight", key + ".bias"):
                t = out[name]
                out[name] = torch.einsum("c,ck...->k...", luma, t.double().reshape(3, rows, *t.shape[1:])).to(t.dtype)

        w, b = out["conv_first.weight"], out["conv_first.bias"]
        # the RGB model sees g - mean_c in channel c, the gray one g - img_mean: fold the difference into the bias
        offset = torch.einsum("ecyx,c->e", w.double(), img_mean - rgb_mean)
        out["conv_first.weight"] = w.sum(1, keepdim=True)
        out["conv_first.bias"] = (b.double() + offset).to(b.dtype)
        if upsampler == "pixelshuffle":
            to_gray("conv_last", 1)
        else:
            to_gray("upsample.0", scale * scale)

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in SwinIR(**config).state_dict().items()}
    got = {k: tuple(v.shape) if torch.is_tensor(v) else None for k, v in out.items()}
    if got != expected:
        missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        bad(f"keys do not match the inferred architecture (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {wrong[:3]})")
    return config, out
