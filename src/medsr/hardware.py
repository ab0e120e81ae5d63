"""Where and in what precision models run: device choice, bf16 detection, autocast."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from medsr.errors import MedsrError
from medsr.settings import PRECISIONS, TILE, TILE_AMX


@functools.cache
def _cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux's /proc/cpuinfo), read at run time; empty where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.partition(":")[2].split()}


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AMX or AVX-512 BF16)."""
    return bool(_cpu_flags() & {"amx_bf16", "avx512_bf16"})


def cpu_has_fast_int8() -> bool:
    """True when the CPU has int8 dot-product units (AMX-INT8, AVX-512 VNNI or AVX-VNNI)."""
    return bool(_cpu_flags() & {"amx_int8", "avx512_vnni", "avx_vnni"})


def cpu_runs_int8_auto() -> bool:
    """Whether `--precision auto` may run a calibrated model in int8 on this CPU: where it has int8
    dot-product units, and where it has AVX2 but no native bf16, so that the float path would be
    fp32: on such an AMD EPYC int8 ran about 2x faster than fp32 and lost what its calibration
    recorded on a CPU with VNNI, to within 0.004 dB (benchmarks/int8_here.py, docs/results/int8-avx2.md)."""
    return cpu_has_fast_int8() or ("avx2" in _cpu_flags() and not cpu_has_fast_bf16())


def default_tile(device: torch.device | None, precision: str) -> int:
    """The LR tile size medsr upscales in when none is asked for: TILE_AMX for bf16 on CPUs with AMX,
    where 128- and 256-px tiles ran 1.3-1.6x faster than 512-px ones or one call, else TILE. `precision`
    is what runs ("int8", "bf16", "fp32"); int8 and fp32 keep TILE until they are measured on AMX."""
    on_amx = device is not None and device.type == "cpu" and "amx_bf16" in _cpu_flags()
    return TILE_AMX if on_amx and precision == "bf16" else TILE


def resolve_device(name: str = "auto") -> torch.device:
    if not isinstance(name, str):
        raise MedsrError(f"device {name!r}: give a name, auto, cpu or cuda")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MedsrError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise MedsrError(f"unknown device '{name}'; use auto, cpu or cuda")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision name, or None for plain fp32.

    auto = bf16 where the hardware does it natively (CUDA with bf16, CPUs with AMX/AVX-512 BF16),
    else fp32. Asking for bf16 where it is not native is allowed (it is emulated, and slow).
    int8 is no autocast dtype: it is for upscaling (medsr.inference.upscaler), whose float layers run as auto.
    """
    if name == "int8":
        raise MedsrError("--precision int8 is for upscaling with an EDSR model that carries int8 calibration; use auto, fp32 or bf16 here")
    if name not in PRECISIONS:
        raise MedsrError(f"unknown precision '{name}'; use {', '.join(PRECISIONS)}")
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_fast_bf16()
    return torch.bfloat16 if native else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for `dtype`, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
