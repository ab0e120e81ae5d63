"""Upscale arrays of any size: tiling with overlap, precision, devices.

Memory stays bounded because the model only ever sees one tile (plus its overlap margin) at a
time; only the input and output arrays are whole. With an overlap at least as wide as the
model's receptive field, tiled and untiled results are the same up to float rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medsr import runtime
from medsr.data import degrade
from medsr.errors import MedsrError


class Upscaler:
    """A generator ready to upscale [0, 1] float arrays, shaped (H, W) or (N, H, W)."""

    def __init__(self, model: torch.nn.Module, scale: int, device: torch.device, precision: str = "auto",
                 tile: int = 256, tile_overlap: int = 16, normalize: bool = True):
        self.device = device
        self.dtype = runtime.resolve_precision(precision, device)
        model = model.to(device).eval()
        if hasattr(model, "fused_for_inference"):
            model = model.fused_for_inference()  # same function, fewer operations
        self.model = model
        if self.dtype is not None or device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.scale, self.tile, self.overlap, self.normalize = scale, tile, tile_overlap, normalize

    @torch.inference_mode()
    def _run(self, lr01: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(lr01, dtype=np.float32))[None, None].to(self.device)
        x = degrade.to_signed(x).contiguous(memory_format=torch.channels_last)
        with runtime.autocast(self.device, self.dtype):
            y = self.model(x)
        return degrade.to_unit(y.float())[0, 0].cpu().numpy()

    def upscale_plane(self, lr01: np.ndarray) -> np.ndarray:
        """One 2-D [0, 1] array -> its upscaled [0, 1] array, tile by tile."""
        lo, hi = (float(lr01.min()), float(lr01.max())) if self.normalize else (0.0, 1.0)
        # Stretch each image to the full range the models were trained on (a 12-bit scan in a
        # 16-bit container would otherwise look almost black to them), then map back.
        span = hi - lo if hi > lo else 1.0
        lr = (lr01 - lo) / span
        h, w = lr.shape
        s, tile, pad = self.scale, self.tile, self.overlap
        if tile <= 0 or (h <= tile and w <= tile):
            sr = self._run(lr)
        else:
            sr = np.empty((h * s, w * s), dtype=np.float32)
            for top in range(0, h, tile):
                for left in range(0, w, tile):
                    bottom, right = min(top + tile, h), min(left + tile, w)
                    t0, l0 = max(top - pad, 0), max(left - pad, 0)
                    b1, r1 = min(bottom + pad, h), min(right + pad, w)
                    out = self._run(lr[t0:b1, l0:r1])
                    sr[top * s : bottom * s, left * s : right * s] = out[
                        (top - t0) * s : (bottom - t0) * s, (left - l0) * s : (right - l0) * s
                    ]
        return np.clip(sr * span + lo, 0.0, 1.0)

    def upscale(self, pixels01: np.ndarray) -> np.ndarray:
        """(H, W) or (N, H, W) [0, 1] -> upscaled, each frame / slice on its own."""
        if pixels01.ndim == 2:
            return self.upscale_plane(pixels01)
        return np.stack([self.upscale_plane(plane) for plane in pixels01])


def load_upscaler(model: str | Path = "default", *, scale: int | None = None, device: str = "auto",
                  precision: str = "auto", tile: int = 256, tile_overlap: int = 16) -> tuple[Upscaler, dict[str, str]]:
    """An Upscaler for a shipped model name, model file or run folder, and the model file's metadata.

    `scale`, when given, must be the model's own scale (a x3 model cannot make x2 images).
    """
    from medsr import zoo

    torch_device = runtime.resolve_device(device)
    generator, meta = zoo.load(model, torch_device)
    model_scale = int(meta["medsr_scale"])
    if scale is not None and scale != model_scale:
        raise MedsrError(f"{meta['path']}: this model upscales x{model_scale}, not x{scale}; drop --scale (scale= in Python) or pick a x{scale} model")
    return Upscaler(generator, model_scale, torch_device, precision, tile, tile_overlap), meta
