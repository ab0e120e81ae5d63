"""Upscale arrays of any size: tiling with overlap, precision, devices.

The model's memory stays bounded because it only ever sees one tile (plus its overlap margin) at a
time; the input and output arrays are whole (the output is scaled back in place, no copies). With an overlap at least as wide as the
model's receptive field, tiled and untiled results are the same up to float rounding.
Two runtimes share that tiling: PyTorch (`Upscaler`) and onnxruntime (`OnnxUpscaler`, fp32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medsr import hardware, zoo
from medsr.errors import MedsrError
from medsr.inference import onnx
from medsr.models import int8
from medsr.models.value_range import to_signed, to_unit
from medsr.settings import RUNTIMES, TILE, TILE_OVERLAP


def _check_unit(pixels01) -> None:
    """A MedsrError unless `pixels01` is an (H, W) or (N, H, W) float array in [0, 1]: 8-bit values
    (0..255) would all come out white, without a word."""
    if not isinstance(pixels01, np.ndarray) or pixels01.ndim not in (2, 3) or not np.issubdtype(pixels01.dtype, np.floating):
        what = f"{pixels01.dtype} array of shape {pixels01.shape}" if isinstance(pixels01, np.ndarray) else type(pixels01).__name__
        raise MedsrError(f"upscale takes an (H, W) or (N, H, W) float array in [0, 1], not a {what}; "
                         "medsr.upscale() takes any dtype and range")
    low, high = (float(pixels01.min()), float(pixels01.max())) if pixels01.size else (0.0, 0.0)
    if not (0.0 <= low and high <= 1.0):  # NaN fails too
        raise MedsrError(f"upscale takes values in [0, 1], and these span {low:g} to {high:g}; scale them first (8-bit: "
                         "pixels / 255) or call medsr.upscale(), which takes any dtype and range")


class TiledUpscaler:
    """Tiling and the per-image range stretch, shared by the runtimes. A subclass supplies `_run`,
    which upscales one tile ([0, 1] in, [0, 1] out); arrays are (H, W) or (N, H, W) in [0, 1]."""

    def __init__(self, scale: int, tile: int | None = None, tile_overlap: int = TILE_OVERLAP, normalize: bool = True,
                 auto_tile: int = TILE):
        # tile None or "auto": auto_tile (the torch Upscaler passes hardware.default_tile's choice)
        tile = None if tile == "auto" else tile
        if tile is not None and (isinstance(tile, bool) or not isinstance(tile, (int, np.integer))):
            raise MedsrError(f"tile {tile!r}: give a whole number of LR pixels, 0 (the whole image at once) or None (auto)")
        if tile is not None and tile < 0:
            raise MedsrError(f"tile {tile}: give 0 (the whole image at once) or a tile size in LR pixels")
        if tile_overlap < 0:
            raise MedsrError(f"tile overlap {tile_overlap}: give 0 or more pixels of context around each tile")
        self.scale, self.tile, self.overlap, self.normalize = scale, auto_tile if tile is None else tile, tile_overlap, normalize

    def _run(self, lr01: np.ndarray) -> np.ndarray:
        raise NotImplementedError

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
        sr *= span  # in place: the output is the one whole-size array
        sr += lo
        return np.clip(sr, 0.0, 1.0, out=sr)

    def upscale(self, pixels01: np.ndarray) -> np.ndarray:
        """(H, W) or (N, H, W) [0, 1] -> upscaled, each frame / slice on its own."""
        _check_unit(pixels01)
        if pixels01.ndim == 2:
            return self.upscale_plane(pixels01)
        out = None
        for index, plane in enumerate(pixels01):  # into one array as they come (not a list of planes, then a stacked copy)
            sr = self.upscale_plane(plane)
            if out is None:
                out = np.empty((len(pixels01), *sr.shape), sr.dtype)
            out[index] = sr
        return out if out is not None else np.empty((0, *(n * self.scale for n in pixels01.shape[1:])), np.float32)


class Upscaler(TiledUpscaler):
    """A PyTorch generator ready to upscale [0, 1] float arrays, shaped (H, W) or (N, H, W)."""

    def __init__(self, model: torch.nn.Module, scale: int, device: torch.device, precision: str = "auto",
                 tile: int | None = None, tile_overlap: int = TILE_OVERLAP, normalize: bool = True):
        self.device = device
        self.dtype = hardware.resolve_precision("auto" if precision == "int8" else precision, device)
        calibration = getattr(model, "int8_calibration", None)  # set by zoo.load from the file's medsr_int8 metadata
        if precision == "auto" and device.type == "cpu" and hardware.cpu_runs_int8_auto() and int8.within_budget(calibration):
            precision = "int8"  # as exact as bf16 within int8.AUTO_BUDGET_DB, and faster
        self.precision = "int8" if precision == "int8" else "bf16" if self.dtype == torch.bfloat16 else "fp32"  # what runs
        super().__init__(scale, tile, tile_overlap, normalize, auto_tile=hardware.default_tile(device, self.precision))
        model = model.to(device).eval()
        if hasattr(model, "fused_for_inference"):
            model = model.fused_for_inference()  # same function, fewer operations
        if precision == "int8":
            if calibration is None:
                raise MedsrError("--precision int8 needs a model file with int8 calibration (the shipped default, default-jpeg, "
                                 "default-x2, default-x4, default-gan and large have one); use --precision auto with this model")
            if device.type != "cpu":
                raise MedsrError(f"--precision int8 runs on the CPU only; add --device cpu or use --precision auto on {device.type}")
            try:
                model = int8.quantized(model, calibration)
            except ValueError as err:  # a calibration from another version of the model or of medsr
                raise MedsrError(f"--precision int8: {err}") from None
        # Model and input share one memory format: channels_last, the faster one for oneDNN's
        # convolutions in fp32 and bf16 alike (benchmarks/bench_infer.py); a mismatch costs a
        # layout conversion at every layer.
        self.model = model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def _run(self, lr01: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(lr01, dtype=np.float32))[None, None].to(self.device)
        x = to_signed(x).contiguous(memory_format=torch.channels_last)
        with hardware.autocast(self.device, self.dtype):
            y = self.model(x)
        return to_unit(y.float())[0, 0].cpu().numpy()


class OnnxUpscaler(TiledUpscaler):
    """An exported ONNX model (medsr.inference.onnx) run by onnxruntime, with Upscaler's interface. fp32 only.

    `model` is an .onnx file or its bytes; `scale` defaults to the model's medsr_scale metadata.
    """

    def __init__(self, model: str | Path | bytes, scale: int | None = None, device: str = "cpu", tile: int | None = None,
                 tile_overlap: int = TILE_OVERLAP, normalize: bool = True):
        ort = onnx.require("onnxruntime")
        name = "the exported model" if isinstance(model, bytes) else str(model)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same thread budget as the torch runtime
        options.log_severity_level = 3  # errors only: onnxruntime's own warnings would interleave with medsr's output
        providers = _onnx_providers(ort, device)  # its own error (no such device), not the file's
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types, with multi-line messages
            raise MedsrError(f"{name}: not a readable ONNX model ({type(err).__name__}); check the file is complete "
                             "or export it again with 'medsr export'") from None
        self.meta = dict(self.session.get_modelmeta().custom_metadata_map)
        inputs = [i.name for i in self.session.get_inputs()]
        if (scale is None and "medsr_scale" not in self.meta) or inputs != [onnx.INPUT_NAME]:
            raise MedsrError(f"{name}: not an ONNX model exported by medsr (no medsr_scale metadata or no '{onnx.INPUT_NAME}' input); "
                             "export it with 'medsr export --format onnx'")
        super().__init__(int(self.meta["medsr_scale"]) if scale is None else scale, tile, tile_overlap, normalize)
        self.input_name, self.output_name = onnx.INPUT_NAME, onnx.OUTPUT_NAME

    def _run(self, lr01: np.ndarray) -> np.ndarray:
        lr = to_signed(np.ascontiguousarray(lr01, dtype=np.float32)[None, None])
        sr = self.session.run([self.output_name], {self.input_name: lr})[0]
        return to_unit(sr[0, 0])


def _onnx_providers(ort, device: str) -> list[str]:
    """onnxruntime's CUDA provider for --device cuda (auto: when installed), else its CPU provider."""
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device.startswith("cuda") and not has_cuda:
        raise MedsrError(f"--device {device}: this onnxruntime has no CUDA provider; pip install onnxruntime-gpu or use --device cpu")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise MedsrError(f"unknown device '{device}'; use auto, cpu or cuda")
    use_cuda = has_cuda and device != "cpu"
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]


def _model_scale(name: str, meta: dict[str, str], scale: int | None) -> int:
    """The model's scale, after checking that `scale`, when given, is that scale."""
    model_scale = int(meta["medsr_scale"])
    if scale is not None and scale != model_scale:
        same_scale = [n for n, s in zoo.shipped_scales().items() if s == scale]
        hint = f"shipped x{scale} models: {', '.join(same_scale)}" if same_scale else \
            f"no shipped model upscales x{scale}; shipped scales: {', '.join(f'x{s}' for s in sorted(set(zoo.shipped_scales().values())))}"
        raise MedsrError(f"model {name} upscales x{model_scale}, not x{scale}; drop --scale (scale= in Python) or pick another model ({hint})")
    return model_scale


def check_upscales(model: str | Path, meta: dict[str, str]) -> None:
    """MedsrError unless the model (its file's metadata `meta`) upscales images: the through-plane model does not."""
    if meta.get("medsr_arch") == "through-plane":
        raise MedsrError(f"model {model} makes thick slices thin, it does not upscale images; name it with --through-plane "
                         "--through-plane-model (through_plane_model= in Python), not as the in-plane model")


def load_upscaler(model: str | Path | None = None, *, scale: int | None = None, device: str = "auto",
                  precision: str = "auto", tile: int | None = None, tile_overlap: int = TILE_OVERLAP,
                  runtime: str = "torch") -> tuple[TiledUpscaler, dict[str, str]]:
    """An upscaler for a shipped model name, model file or run folder, and the model file's metadata.

    model=None: the shipped default for `scale` (default at x3, default-x2, default-x4). Otherwise
    `scale`, when given, must be the model's own scale (a x3 model cannot make x2 images).
    runtime="onnx" runs onnxruntime (fp32; precision "auto" means fp32 there): `model` may then also be
    an .onnx file from `medsr export`; anything else is exported in memory first.
    """
    if runtime not in RUNTIMES:
        raise MedsrError(f"unknown runtime '{runtime}'; use {' or '.join(RUNTIMES)}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, np.integer))):
        raise MedsrError(f"scale {scale!r}: give a whole number (2, 3 or 4 for the shipped models) or None (the model's own)")
    model = zoo.default_model(scale) if model is None else model
    is_onnx_file = Path(str(model)).suffix.lower() == ".onnx"
    if runtime == "torch":
        if is_onnx_file:
            raise MedsrError(f"{model}: an ONNX model runs with --runtime onnx (runtime='onnx' in Python); add it")
        torch_device = hardware.resolve_device(device)
        generator, meta = zoo.load(model, torch_device)
        check_upscales(model, meta)
        upscaler = Upscaler(generator, _model_scale(str(model), meta, scale), torch_device, precision, tile, tile_overlap)
    elif precision not in ("auto", "fp32"):
        raise MedsrError(f"--precision {precision}: the ONNX runtime runs fp32 only; use --precision fp32 or --runtime torch")
    elif is_onnx_file:
        if not Path(model).is_file():
            raise MedsrError(f"{model}: no such ONNX model file; check the path or export one with 'medsr export'")
        upscaler = OnnxUpscaler(Path(model), None, device, tile, tile_overlap)
        meta = dict(upscaler.meta, path=str(model))
        _model_scale(str(model), meta, scale)
    else:
        generator, meta = zoo.load(model)
        check_upscales(model, meta)
        upscaler = OnnxUpscaler(onnx.onnx_bytes(generator, meta, str(model)), _model_scale(str(model), meta, scale), device, tile, tile_overlap)
    return upscaler, meta
