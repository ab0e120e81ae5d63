"""Shared bits of the benchmark scripts: timing and where the data is."""

import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSR_DATA", ROOT.parent / "shared" / "data")).resolve()
os.environ["MEDSR_DATA"] = str(DATA)  # recipes say ${MEDSR_DATA}/...; right from whatever folder a script runs in


def timed(fn, repeats: int, warmup: int = 2) -> float:
    """Mean seconds per call of fn() after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats
