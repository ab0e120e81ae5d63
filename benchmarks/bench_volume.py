"""Through-plane SR on the held-aside 1 mm volume: quality inside the head, seconds and peak memory.

    python benchmarks/bench_volume.py                 # writes docs/VOLUMES.md (about 15 min on 2 cores)
    python benchmarks/bench_volume.py --factors 4 --out /tmp/VOLUMES.md   # a quick look

Each method runs on each simulated volume in a fresh worker process (this script with --worker), so
that process's peak resident memory (VmHWM in /proc/self/status) is the peak of that one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSR_DATA", ROOT.parent / "shared" / "data"))
TEST_VOLUME = "brain-t1-sub-09"  # held aside: never trained on, never used to choose settings
SLICES = 180  # the volume's first 180 axial slices: a whole number of thick slices for every factor below
FACTORS = (2.0, 2.5, 3.0, 4.0, 4.5, 5.0, 6.0)
MASK_DILATION = 2  # voxels (6-connected steps) around the head's non-zero voxels


def reference_volume() -> tuple[np.ndarray, tuple]:
    import nibabel as nib

    from medsr.data.slice_profile import (
        read_volume,  # scaled so the white level (99.5th percentile inside) is 1
    )

    path = DATA / "nifti" / f"{TEST_VOLUME}.nii.gz"
    zooms = tuple(float(z) for z in nib.load(str(path)).header.get_zooms()[:3])
    return np.ascontiguousarray(read_volume(path)[:, :, :SLICES]), zooms


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM (Linux); getrusage's ru_maxrss would carry the parent's peak over fork."""
    try:
        line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args) -> None:
    """One method on one simulated volume: write the output, print seconds and peak RSS."""
    import torch

    torch.set_num_threads(args.threads)
    from medsr.data.slice_profile import simulate_thick_slices
    from medsr.inference import volume as V

    reference, zooms = reference_volume()
    thick, _ = simulate_thick_slices(reference, axis=2, spacing=args.factor)  # Gaussian, FWHM = K voxels, every K-th
    del reference
    spacing = (zooms[0], zooms[1], zooms[2] * args.factor)
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    if args.method in ("linear", "cubic"):
        result = V.interpolate_through_plane(thick, spacing, 2, target_spacing=zooms[2], order=1 if args.method == "linear" else 3)
    else:
        result = V.upscale_through_plane(thick, spacing, 2, model=args.model, target_spacing=zooms[2],
                                         adapt_minutes=args.adapt_minutes, progress=False)
    seconds = time.perf_counter() - start
    np.save(args.worker, result.array)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss_before, "shape": list(result.array.shape), "spacing": list(result.spacing)}))


def ssim_inside(output: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """3-D SSIM map (Gaussian window sigma 1.5 voxels, truncated at 3.5 sigma; data range 1), averaged over the mask."""
    from scipy.ndimage import gaussian_filter

    f = lambda a: gaussian_filter(a, 1.5, truncate=3.5)
    x, y = output.astype(np.float64), reference.astype(np.float64)
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(ssim[mask].mean())


def psnr_inside(output: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((output[mask].astype(np.float64) - reference[mask]) ** 2)))


def run_worker(method: str, factor: float, args, folder: Path, adapt_minutes: float = 0) -> tuple[dict, np.ndarray]:
    out = folder / f"{method}-{factor}-{adapt_minutes}.npy"
    command = [sys.executable, __file__, "--worker", str(out), "--method", method, "--factor", str(factor), "--model", args.model,
               "--threads", str(args.threads), "--adapt-minutes", str(adapt_minutes)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if done.returncode:
        sys.exit(f"worker failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    array = np.load(out)
    out.unlink()
    return record, array


def machine() -> dict:
    import torch

    from medsr import hardware

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown"
    return {"cpu": model, "cores": os.cpu_count(), "bf16": hardware.cpu_has_fast_bf16(), "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="through-plane")
    parser.add_argument("--factors", default=",".join(f"{f:g}" for f in FACTORS))
    parser.add_argument("--adapt-factors", default="4", help="factors also run with adaptation (comma-separated; empty: none)")
    parser.add_argument("--adapt-minutes", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "docs" / "VOLUMES.md"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--factor", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # the options that reproduce this file (--threads always; the others where they differ from their defaults)
    args.command_options = "".join(f" --{key.replace('_', '-')} {value}" for key, value in vars(args).items()
                                   if key in ("model", "factors", "adapt_factors", "adapt_minutes", "threads")
                                   and (key == "threads" or value != parser.get_default(key)))
    if args.worker:
        return worker(args)

    from scipy.ndimage import binary_dilation

    reference, zooms = reference_volume()
    mask = binary_dilation(reference > 0, iterations=MASK_DILATION)
    factors = [float(f) for f in args.factors.split(",")]
    adapt_factors = [float(f) for f in args.adapt_factors.split(",") if f]
    info = machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for factor in factors:
            runs = [("linear", 0.0), ("cubic", 0.0), ("medsr", 0.0)] + ([("medsr", args.adapt_minutes)] if factor in adapt_factors else [])
            for method, adapt in runs:
                record, output = run_worker(method, factor, args, Path(tmp), adapt)
                assert output.shape == reference.shape, (output.shape, reference.shape)
                row = {"factor": factor, "method": method if not adapt else f"medsr + {adapt:g} min adaptation", **record,
                       "psnr": psnr_inside(output, reference, mask), "ssim": ssim_inside(output, reference, mask)}
                rows.append(row)
                print(f"K={factor:g} {row['method']:28} PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.4f}  "
                      f"{row['seconds']:.1f} s  peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
        # the speed target is stated for 256 x 256 x 180: time the central 256 x 256 columns at K = 4
        speed = timing_256(args, Path(tmp))
    Path(args.out).write_text(report(rows, speed, info, args, reference.shape, zooms, int(mask.sum())))
    print(f"wrote {args.out}")


def timing_256(args, folder: Path) -> dict:
    code = f"""
import json, time, numpy as np, torch
torch.set_num_threads({args.threads})
import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
from bench_volume import reference_volume, peak_rss_mb
from medsr.data.slice_profile import simulate_thick_slices
from medsr.inference.volume import upscale_through_plane
reference, zooms = reference_volume()
crop = np.ascontiguousarray(reference[16:272, 16:272])
thick, _ = simulate_thick_slices(crop, axis=2, spacing=4.0)
start = time.perf_counter()
result = upscale_through_plane(thick, (zooms[0], zooms[1], 4 * zooms[2]), 2, model={args.model!r}, target_spacing=zooms[2], progress=False)
print(json.dumps({{"seconds": time.perf_counter() - start, "shape": list(result.array.shape),
                  "peak_rss_mb": peak_rss_mb()}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if done.returncode:
        sys.exit(f"timing run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(rows, speed, info, args, shape, zooms, mask_voxels) -> str:
    by = {(r["factor"], r["method"]): r for r in rows}
    lines = ["# Through-plane super-resolution of volumes", "",
             f"Made by `python benchmarks/bench_volume.py{args.command_options}` (this file is its output; "
             f"{time.strftime('%Y-%m-%d')}).", "",
             "What it measures: thick slices made thin with `medsr.inference.volume.upscale_through_plane` and the shipped "
             f"`{args.model}` model (card: `src/medsr/zoo/through-plane.md`), against linear and cubic interpolation along the "
             "slice axis on the same grid.", "",
             "## Protocol", "",
             f"- Volume: `{TEST_VOLUME}` of `../shared/data/nifti` (skull-stripped T1, {zooms[0]:.4f} x {zooms[1]:.4f} x "
             f"{zooms[2]:.1f} mm), held aside: never trained on, never used to choose a setting (sub-08 was validation). "
             f"Its first {SLICES} axial slices (axis 2, {shape[0]} x {shape[1]} x {shape[2]} voxels) are the reference, "
             "scaled so that the 99.5th percentile of its non-zero voxels is 1 (`medsr.data.slice_profile.read_volume`).",
             "- Thick slices along the axial axis: Gaussian slice profile with FWHM = K voxels, one thick slice every K voxels "
             "(edge-aligned: n = 180 / K slices covering the same 180 mm; `simulate_thick_slices(volume, 2, K)`), "
             f"for K = {', '.join(f'{f:g}' for f in sorted({r['factor'] for r in rows}))}.",
             "- Reconstruction on the original grid (target spacing 1 mm: 180 slices again, centres aligned with the reference's): "
             "linear and cubic (cubic B-spline, mirrored at the edges) interpolation along the slice axis "
             "(`interpolate_through_plane(..., order=1 | 3)`), and medsr (`upscale_through_plane`), without and with "
             f"`adapt_minutes={args.adapt_minutes:g}` (fine-tuning a copy of the model on this volume's own axial planes "
             "degraded the same way). All outputs are clipped below at the input's minimum (0).",
             f"- Inside the head: the voxels > 0 of the reference, dilated by {MASK_DILATION} voxels "
             f"(`scipy.ndimage.binary_dilation`, 6-connected, {MASK_DILATION} iterations): {mask_voxels:,} voxels.",
             "- PSNR = 10 log10(1 / MSE) over those voxels (data range 1 = the reference's white level). "
             "SSIM: the 3-D SSIM map (Gaussian window sigma 1.5 voxels truncated at 3.5 sigma, C1 = 0.01^2, C2 = 0.03^2, "
             "data range 1) averaged over those voxels.",
             "- Seconds: wall time of the call alone (reading and simulation excluded), "
             f"torch with {args.threads} thread(s), bf16 autocast where the CPU has it. Peak memory: the peak resident set "
             "(`VmHWM` in `/proc/self/status`; `resource.getrusage`'s ru_maxrss would inherit the parent's peak across fork) "
             "of a fresh worker process that reads the volume, simulates the thick slices and runs "
             "one method; it includes Python, torch and the reference volume (the 'before' column is the same process's "
             "peak just before the call).", "",
             "## Machine", "",
             f"- CPU: {info['cpu']} ({info['cores']} logical cores visible, shared with other work while this ran)",
             f"- native bf16 (AVX-512 BF16 / AMX): {'yes' if info['bf16'] else 'no'}; torch {info['torch']}", "",
             "## Results", "",
             "| K | method | PSNR (dB) | vs cubic | SSIM | vs cubic | seconds | peak RSS (MB) | before (MB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cubic = by[(r["factor"], "cubic")]
        lines.append(f"| {r['factor']:g} | {r['method']} | {r['psnr']:.2f} | {r['psnr'] - cubic['psnr']:+.2f} | {r['ssim']:.4f} | "
                     f"{r['ssim'] - cubic['ssim']:+.4f} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['rss_before_mb']:.0f} |")
    medsr = [r for r in rows if r["method"] == "medsr"]
    gains = {r["factor"]: r["psnr"] - by[(r["factor"], "cubic")]["psnr"] for r in medsr}
    never_below = all(r["psnr"] >= by[(r["factor"], "cubic")]["psnr"] and r["ssim"] >= by[(r["factor"], "cubic")]["ssim"] for r in medsr)
    x4 = gains.get(4.0)
    lines += ["", f"Speed on a 256 x 256 x 180 volume (the central 256 x 256 columns of the reference, K = 4, no adaptation): "
              f"{speed['seconds']:.1f} s, peak RSS {speed['peak_rss_mb']:.0f} MB.", "",
              "## Targets", "",
              "- x4 at least +3 dB PSNR over cubic inside the head, without adaptation: "
              + ("not measured" if x4 is None else f"{x4:+.2f} dB, {'met' if x4 >= 3 else 'NOT met'}"),
              f"- never below cubic in PSNR and SSIM (medsr without adaptation, every K): {'met' if never_below else 'NOT met'}",
              f"- at most 60 s per 256 x 256 x 180 volume without adaptation: {speed['seconds']:.1f} s, "
              f"{'met' if speed['seconds'] <= 60 else 'NOT met'}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
