"""Model files: generator weights as .safetensors with a JSON record of how to rebuild them.

A model file's metadata holds `medsr_arch` (a name in medsr.models.GENERATORS),
`medsr_config` (the generator's constructor arguments as JSON) and `medsr_scale`; shipped EDSR
models also `medsr_int8` (int8 calibration for --precision int8). Training
checkpoints use the same format with extra "discriminator." tensors, so a checkpoint can be
given wherever a model is expected.

`load(name_or_path)` accepts a shipped model's name, a .safetensors file, a training run folder
(its final model.safetensors, or else its newest checkpoint), or an official checkpoint of
another project (ESRGAN / Real-ESRGAN RRDBNet, SwinIR; .pth or .safetensors), whose 3-channel
weights are adapted to gray (see each architecture's `convert_official`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from medsr.errors import MedsrError
from medsr.files import atomic_write
from medsr.io.formats import jpeg_coded
from medsr.models import OFFICIAL_CONVERTERS, create_generator

ZOO_DIR = Path(__file__).parent
DEFAULT_MODEL = "default"
JPEG_MODEL = "default-jpeg"  # the x3 default for JPEG files and DICOM files stored as lossy JPEG
# A training checkpoint's model.safetensors holds each network's tensors under its own prefix.
GENERATOR_PREFIX, DISCRIMINATOR_PREFIX, EMA_PREFIX = "generator.", "discriminator.", "ema."


def shipped_models() -> dict[str, Path]:
    """Shipped model names -> files (the .safetensors files inside this folder)."""
    return {p.stem: p for p in sorted(ZOO_DIR.glob("*.safetensors"), key=lambda p: p.stem)}


def save_model(path: Path, tensors: dict[str, torch.Tensor], arch: str, config: dict, extra: dict | None = None) -> None:
    """Write tensors + rebuild record to `path` atomically (temp file + rename)."""
    metadata = {"medsr_arch": arch, "medsr_config": json.dumps(config), "medsr_scale": str(config.get("scale", ""))}
    metadata.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()})
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def default_model(scale: int | None = None, inputs: Iterable[str | os.PathLike] = ()) -> str:
    """The shipped model `medsr upscale` uses when no --model is given: `default` at x3, or the
    default recipe's model of another scale (default-x2, default-x4). At x3, when `inputs` (the
    files to upscale) are all JPEG-coded (JPEG files, DICOM files stored as lossy JPEG:
    medsr.io.formats.jpeg_coded), `default-jpeg`, trained on JPEG inputs: `default` would sharpen
    their 8x8 block grid (docs/RESULTS.md)."""
    if scale is None or scale == 3:
        inputs = list(inputs)
        if inputs and all(map(jpeg_coded, inputs)) and JPEG_MODEL in shipped_models():
            return JPEG_MODEL
        return DEFAULT_MODEL
    scales = ", ".join(f"x{s}" for s in sorted({s for s in shipped_scales().values() if s > 1}))  # not through-plane's x1
    if scale < 2:
        raise MedsrError(f"--scale {scale}: medsr upscales by 2 or more (shipped scales: {scales}); "
                         "for thinner slices alone use --through-plane without --scale")
    name = f"{DEFAULT_MODEL}-x{scale}"
    if name not in shipped_models():
        raise MedsrError(f"scale {scale}: no shipped model upscales x{scale} (shipped scales: {scales}); "
                         f"pick one of those, or name a x{scale} model of yours (--model, or model= in Python)")
    return name


def jpeg_default(scale: int | None = None, inputs: Iterable[str | os.PathLike] = ()) -> str | None:
    """The shipped model `medsr upscale` runs on the JPEG-coded files among `inputs` when no --model
    is given and it is not default_model's pick for the rest: `default-jpeg` for the JPEG-coded
    files of a x3 run that holds other files too. None where default_model's pick does every input."""
    coded = [jpeg_coded(path) for path in inputs]
    if scale in (None, 3) and JPEG_MODEL in shipped_models() and any(coded) and not all(coded):
        return JPEG_MODEL
    return None


def shipped_scales() -> dict[str, int]:
    """Shipped model names and the scale each upscales by (read from the files' metadata, no weights loaded)."""
    return {name: int(read_metadata(path)["medsr_scale"]) for name, path in shipped_models().items()}


def model_scale(name_or_path: str | Path) -> int:
    """The scale of a shipped name, model file or run folder (an official checkpoint is loaded to find it)."""
    path = resolve(name_or_path)
    meta = read_metadata(path) if path.suffix == ".safetensors" else {}
    return int(meta["medsr_scale"]) if "medsr_scale" in meta else int(load(path)[1]["medsr_scale"])


def save_checkpoint_model(path: Path, networks: dict[str, torch.nn.Module | None], arch: str, config: dict, extra: dict) -> None:
    """One model file for a training checkpoint: each network's tensors under its prefix
    (GENERATOR_PREFIX, DISCRIMINATOR_PREFIX, EMA_PREFIX); loadable wherever a model is expected."""
    tensors = {f"{prefix}{k}": v for prefix, net in networks.items() if net is not None for k, v in net.state_dict().items()}
    save_model(path, tensors, arch, config, extra)


def checkpoint_part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of one network in a checkpoint's model file, without their prefix."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def resolve(name_or_path: str | Path) -> Path:
    """The model file a --model value refers to."""
    text = str(name_or_path)
    shipped = shipped_models()
    if text in shipped:
        return shipped[text]
    path = Path(text)
    if path.is_dir():
        final = path / "model.safetensors"
        if final.is_file():
            return final
        checkpoints = sorted((path / "checkpoints").glob("step-*[0-9]/model.safetensors"))
        if checkpoints:
            return checkpoints[-1]
        raise MedsrError(f"{path}: no model.safetensors or checkpoints/ found in this folder; pass a model file or a finished run folder")
    if path.is_file():
        return path
    known = ", ".join(shipped) or "none shipped in this version"
    raise MedsrError(f"{text}: no such model file or shipped model (shipped: {known}); pass a .safetensors path or train one with 'medsr train'")


def read_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise MedsrError(f"{path}: not a readable .safetensors model file ({err}); re-export or re-download it") from None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or PyTorch (.pth/.pt, loaded without running code) file."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every unreadable file gets the same one-line advice
        raise MedsrError(f"{path}: not a readable weights file ({type(err).__name__}); check that it is a complete "
                         ".safetensors or .pth download") from None
    if not isinstance(state, dict):
        raise MedsrError(f"{path}: holds a {type(state).__name__}, not a state dict of weights; save model.state_dict()")
    return state


def load_official(path: Path) -> tuple[torch.nn.Module, dict]:
    """A generator from another project's released checkpoint, adapted to one channel."""
    state = read_weights(path)
    for arch, convert in OFFICIAL_CONVERTERS.items():
        found = convert(state)
        if found is not None:
            config, tensors = found
            model = create_generator(arch, **config)
            try:
                model.load_state_dict(tensors)
            except RuntimeError as err:
                raise MedsrError(f"{path}: looks like an official {arch} checkpoint but does not fit ({str(err).splitlines()[0]})") from None
            meta = {"medsr_arch": arch, "medsr_config": json.dumps(model.config), "medsr_scale": str(model.scale),
                    "medsr_source": f"official {arch} checkpoint, adapted to 1 channel", "path": str(path),
                    "parameters": str(sum(p.numel() for p in model.parameters()))}
            return model.eval(), meta
    raise MedsrError(f"{path}: neither a medsr model file nor an official checkpoint medsr can adapt "
                     f"({', '.join(OFFICIAL_CONVERTERS)}); pass a file from 'medsr train' or an official release")


def load(name_or_path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the generator stored in a model file; returns (model in eval mode, metadata)."""
    path = resolve(name_or_path)
    meta = read_metadata(path) if path.suffix == ".safetensors" else {}
    if "medsr_arch" not in meta:
        model, meta = load_official(path)
        return model.to(device), meta
    config = json.loads(meta["medsr_config"])
    model = create_generator(meta["medsr_arch"], **config)
    tensors = load_file(str(path))
    # A training checkpoint: take its EMA generator when it has one, else the generator.
    for prefix in (EMA_PREFIX, GENERATOR_PREFIX):
        if any(k.startswith(prefix) for k in tensors):
            tensors = checkpoint_part(tensors, prefix)
            break
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise MedsrError(f"{path}: weights do not match the '{meta['medsr_arch']}' architecture ({first}); the file is damaged or from another version") from None
    meta["path"] = str(path)
    meta["parameters"] = str(sum(p.numel() for p in model.parameters()))
    if "medsr_int8" in meta:  # int8 calibration (medsr.models.int8), for --precision int8
        model.int8_calibration = json.loads(meta["medsr_int8"])
    return model.to(device).eval(), meta
