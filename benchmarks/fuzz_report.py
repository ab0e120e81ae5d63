"""Fuzz report for docs/RELIABILITY.md: run the hostile-input generators of tests/hostile_cases.py
(the ones tests/test_hostile.py uses) with many more cases, and print a Markdown table.

A case passes when medsr.io reads it into well-formed pixels (and, for corrupted files, writes
the x3 result back in the same format) or refuses it with a one-line MedsrError naming the file,
within 5 s. Anything else (another exception, a multi-line message, NaN pixels, a hang) fails.
Truncation cut points and corrupted bytes are drawn from a seeded generator, so a run repeats.

    python benchmarks/fuzz_report.py --cases 500 --seed 0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

import hostile_cases as hc  # noqa: E402  (lives in tests/, shared with the test suite)

from medsr.io.types import MAX_PIXELS  # noqa: E402

Case = tuple[str, Callable[[Path], str]]  # (file name, run the case in a scratch folder -> outcome)


def truncations(fmt: str, count: int, rng: np.random.Generator) -> Iterator[Case]:
    size = len(hc.good_bytes(fmt))
    for i in range(count):
        cut = int(rng.integers(0, size))
        name = f"cut{i}{hc.SUFFIX[fmt]}"
        yield name, lambda folder, name=name, cut=cut: hc.judge_bytes(folder, name, hc.truncated(fmt, cut), hc.good_shape(fmt))


def corruptions(fmt: str, count: int, rng: np.random.Generator) -> Iterator[Case]:
    size = len(hc.good_bytes(fmt))
    for i in range(count):
        edits = [(int(rng.integers(0, size)), int(rng.integers(0, 256))) for _ in range(int(rng.integers(1, 9)))]
        name = f"bad{i}{hc.SUFFIX[fmt]}"
        yield name, lambda folder, name=name, edits=edits: hc.judge_bytes(folder, name, hc.corrupted(fmt, edits), write_back=True)


def junk_files() -> Iterator[Case]:
    for suffix in sorted(set(hc.SUFFIX.values())):
        for stem, data in (("empty", b""), ("text", b"not an image\nat all\n")):
            yield stem + suffix, lambda folder, name=stem + suffix, data=data: _must_refuse(hc.judge_bytes(folder, name, data))


def tiny_images() -> Iterator[Case]:
    for fmt in ("png", "jpeg", "tiff", "dicom", "nii.gz"):
        for size in ((1, 1), (2, 2), (1, 3)):
            name = f"tiny{size[0]}x{size[1]}{hc.SUFFIX[fmt]}"
            yield name, lambda folder, name=name, fmt=fmt, size=size: _upscale_tiny(folder, name, fmt, size)


def _must_refuse(outcome: str) -> str:
    if outcome != "refused":
        raise hc.CaseFailure(f"an empty or text file was read as an image ({outcome})")
    return outcome


def _upscale_tiny(folder: Path, name: str, fmt: str, size: tuple[int, int]) -> str:
    """Read a tiny image and upscale it x3 with an untrained EDSR: the shape must be x3."""
    from medsr.io import read_image

    pixels = read_image(hc.write(folder, name, hc.tiny_bytes(fmt, *size))).pixels
    out = _tiny_upscaler().upscale(pixels)
    if out.shape[-2:] != (size[0] * 3, size[1] * 3) or not np.all(np.isfinite(out)):
        raise hc.CaseFailure(f"{name}: upscaled to shape {out.shape}")
    return "read"


_UPSCALER = []


def _tiny_upscaler():
    if not _UPSCALER:
        import torch

        from medsr.inference.upscaler import Upscaler
        from medsr.models import create_generator

        torch.manual_seed(0)
        model = create_generator("edsr", scale=3, channels=4, num_blocks=1)
        _UPSCALER.append(Upscaler(model, 3, torch.device("cpu"), "fp32", 256, 16))
    return _UPSCALER[0]


def run_family(cases: Iterator[Case], folder: Path) -> dict:
    tally = {"tried": 0, "read": 0, "refused": 0, "failed": 0, "failures": []}
    for name, case in cases:
        tally["tried"] += 1
        try:
            tally[case(folder)] += 1
        except Exception as err:  # CaseFailure, or anything the harness itself hit
            tally["failed"] += 1
            tally["failures"].append(f"{name}: {type(err).__name__}: {str(err)[:300]}")
    return tally


def run_bombs(folder: Path) -> dict:
    """Bombs run in a fresh process, so its peak memory (ru_maxrss) measures them alone."""
    result = subprocess.run([sys.executable, "-c", hc.BOMB_SCRIPT, str(folder), str(TESTS)],
                            capture_output=True, text=True, timeout=300)
    tally = {"tried": len(hc.bombs()), "read": 0, "refused": 0, "failed": 0, "failures": []}
    if result.returncode != 0:
        tally.update(failed=tally["tried"], failures=[result.stderr.strip().splitlines()[-1]])
        return tally
    report = json.loads(result.stdout)
    for name, (outcome, seconds) in report["files"].items():
        bounded = f"limit {MAX_PIXELS}" in outcome
        if outcome != "read" and "\n" not in outcome and bounded and seconds < 1.0:
            tally["refused"] += 1
        else:
            tally["failed"] += 1
            tally["failures"].append(f"{name}: {outcome[:200]} ({seconds:.2f} s)")
    tally["note"] = f"peak memory grew {report['rss_growth_mib']:.1f} MiB; slowest {max(s for _, s in report['files'].values()) * 1000:.1f} ms"
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=500, help="cases per format for truncation and for corruption")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    families: dict[str, Callable[[], Iterator[Case]]] = {}
    for fmt in hc.FORMATS:
        families[f"truncated {fmt}"] = lambda fmt=fmt: truncations(fmt, args.cases, rng)
    for fmt in hc.FORMATS:
        families[f"corrupted bytes {fmt} (read, then write x3)"] = lambda fmt=fmt: corruptions(fmt, args.cases, rng)
    families["empty and text files with image extensions"] = junk_files
    families["1x1, 2x2, 1x3 images read and upscaled x3"] = tiny_images

    start = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (family, cases) in enumerate(families.items()):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            results[family] = run_family(cases(), folder)
        bombs = Path(tmp) / "bombs"
        bombs.mkdir()
        results[f"decompression bombs (PNG, TIFF, DICOM, NIfTI; bound {MAX_PIXELS:,} pixels)"] = run_bombs(bombs)
    seconds = time.perf_counter() - start

    print(f"`python benchmarks/fuzz_report.py --cases {args.cases} --seed {args.seed}` ({seconds:.0f} s)\n")
    print("| case family | cases tried | passed (read / refused cleanly) | failed |")
    print("|---|---:|---:|---:|")
    for family, t in results.items():
        note = f"; {t['note']}" if "note" in t else ""
        print(f"| {family}{note} | {t['tried']} | {t['read'] + t['refused']} ({t['read']} / {t['refused']}) | {t['failed']} |")
    total = {k: sum(t[k] for t in results.values()) for k in ("tried", "read", "refused", "failed")}
    print(f"| **all** | {total['tried']} | {total['read'] + total['refused']} | {total['failed']} |")
    failures = [f for t in results.values() for f in t["failures"]]
    if failures:
        print("\nFailures (first 20):\n")
        for line in failures[:20]:
            print(f"- {line}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
