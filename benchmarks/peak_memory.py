"""Peak memory of `medsr upscale` on one large scan: how much a user's machine needs.
Writes docs/results/peak-memory.md.

The scan is synthetic (smooth random structure, 16 bits; no shared data), SIZE x SIZE pixels, written
once as a 16-bit PNG and as a DICOM file (medsr's own secondary capture of that PNG). Each row is one
`python -m medsr upscale FILE -o OUT ...` in a fresh process, run from a small parent that reports
its child's peak resident set (resource.getrusage(RUSAGE_CHILDREN).ru_maxrss), so the figure is the
whole command's: Python, torch, the model, the input, the output and the file written. Bytes per
output pixel = peak / (SIZE * scale)^2.

    python benchmarks/peak_memory.py [--size 4000] [--out docs/results/peak-memory.md]

PYTHONPATH=OTHER_CHECKOUT/src measures another version of medsr the same way.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, machine
from PIL import Image as PILImage
from scipy import ndimage

from medsr.io import read_image, write_image

# (label, input, options, scale)
ROWS = [
    ("DICOM, x3", "scan.dcm", [], 3),
    ("DICOM, x3, --format nii", "scan.dcm", ["--format", "nii"], 3),
    ("DICOM, x4", "scan.dcm", ["--scale", "4"], 4),
    ("PNG (16-bit), x3", "scan.png", [], 3),
    ("DICOM, x3, --uncertainty (maps with a reference model)", "scan.dcm", ["--uncertainty"], 3),
]
PEAK_OF_CHILD = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)")


def make_scan(folder: Path, size: int) -> None:
    noise = np.random.default_rng(0).random((size // 8, size // 8))
    smooth = ndimage.zoom(ndimage.gaussian_filter(noise, 2), 8, order=1)[:size, :size]
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    PILImage.fromarray((smooth * 4095).astype(np.uint16)).save(folder / "scan.png")  # 12 bits in 16, as CR scans are
    write_image(folder / "scan.dcm", read_image(folder / "scan.png"), scale=1, model_name="synthetic")


def peak(command: list[str]) -> tuple[float, float]:
    """(peak resident set in MB, seconds) of one command in a fresh process."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_OF_CHILD, *command], capture_output=True, text=True, check=True)
    kilobytes, code = done.stdout.split()
    if code != "0":
        raise SystemExit(f"{' '.join(command)} exited with {code}")
    return int(kilobytes) / 1024, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4000, help="the scan's side in pixels")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "peak-memory.md")
    args = parser.parse_args()
    lines = ["## Peak memory of `medsr upscale` on one large scan", "",
             f"Produced by `python benchmarks/peak_memory.py --size {args.size}` ({machine()}; precision auto, default tiles).",
             f"A synthetic {args.size} x {args.size} scan, 12 bits in 16; each row one command in a fresh process, its peak resident set.",
             "Seconds are the command's wall time, for scale only: other work may share the cores (docs/PERFORMANCE.md has the speed).",
             "", "| input, options | output pixels | peak RSS (MB) | bytes per output pixel | seconds |", "|---|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        make_scan(work, args.size)
        for index, (label, name, options, scale) in enumerate(ROWS):
            megabytes, seconds = peak([sys.executable, "-m", "medsr", "upscale", str(work / name), "-o", str(work / f"out{index}"),
                                       *options])
            pixels = (args.size * scale) ** 2
            lines.append(f"| {label} | {pixels / 1e6:.0f} M | {megabytes:.0f} | {megabytes * 2**20 / pixels:.1f} | {seconds:.0f} |")
            print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
