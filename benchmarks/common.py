"""Shared bits of the benchmark scripts: timing, the machine, and where the data is."""

import os
import platform
import time
from pathlib import Path

import torch

from medsr import hardware

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSR_DATA", ROOT.parent / "shared" / "data")).resolve()
# The float precision `auto` runs where it does not pick int8: for baselines that must stay float.
FLOAT = "bf16" if hardware.cpu_has_fast_bf16() else "fp32"
# the float precisions worth timing here: bf16 without native support is emulated, many times slower than fp32
FLOATS = ("fp32", "bf16") if FLOAT == "bf16" else ("fp32",)
os.environ["MEDSR_DATA"] = str(DATA)  # recipes say ${MEDSR_DATA}/...; right from whatever folder a script runs in


def trained_run(cfg, runs: Path, name: str):
    """(model, metadata) of recipe `cfg` trained as run `name` in folder `runs`; a finished run there is reused."""
    import dataclasses

    from medsr import zoo
    from medsr.training.trainer import Trainer

    if not (runs / name / "model.safetensors").is_file():
        Trainer(dataclasses.replace(cfg, name=name, out_dir=str(runs))).fit()
    return zoo.load(runs / name)


def timed(fn, repeats: int, warmup: int = 2) -> float:
    """Mean seconds per call of fn() after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def best_of(fn, repeats: int, warmup: int = 1) -> float:
    """The fastest of `repeats` timed calls after `warmup` untimed ones: on a shared host the
    minimum is the figure least disturbed by other work."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def best_of_interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """best_of for several calls that are to be compared, taken in turns (a, b, c, a, b, c, ...), so
    that a slow spell of a shared host falls on all of them rather than on whichever ran then."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def bf16_support() -> str:
    """What bf16 arithmetic the CPU has: AMX, AVX-512 BF16, or none."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    return "AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else "none (fp32 only)"


def int8_support() -> str:
    """What int8 dot-product instructions the CPU has: AMX-INT8, AVX-512 VNNI, AVX-VNNI, or none."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    names = {"amx_int8": "AMX-INT8", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI"}
    return ", ".join(label for flag, label in names.items() if flag in flags) or "none"


def machine() -> str:
    """One line naming what every figure was measured on."""
    usable, total = len(os.sched_getaffinity(0)), os.cpu_count()
    cores = f"{usable} cores" if usable == total else f"{usable} of its {total} cores (pinned)"
    return (f"{cpu_model()}, {cores}, bf16: {bf16_support()}, int8: {int8_support()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}"
            + (f", THP_MEM_ALLOC_ENABLE={os.environ['THP_MEM_ALLOC_ENABLE']}" if "THP_MEM_ALLOC_ENABLE" in os.environ else ""))
