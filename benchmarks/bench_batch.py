"""Batch throughput: `medsr upscale` over a folder of synthetic 512x512 8-bit PNGs with the default
model (x3, to 1536x1536), files/s with 0, 1 and 2 I/O threads (--workers), with one or two model
streams (--streams), in int8 (what `auto` runs on most CPUs) and the float path (bf16 where native,
else fp32), the time of a resume pass that finds every output complete and skips it, the marginal
time per image, each step's cost on one thread and what that makes the least possible marginal
time on this machine's cores, the Ray engine against the local one (a one-machine cluster), PNG
encoding at two zlib levels, and a fresh process's start-up.

    python benchmarks/bench_batch.py [--files 40] [--workers 0,1,2]

Each timing is one whole `medsr upscale` call in this process (model loading included, Python and
torch start-up not), after a 2-file warm-up run.
"""

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import FLOAT, best_of, machine
from PIL import Image

from medsr import cli
from medsr.inference import batch
from medsr.inference.upscaler import load_upscaler
from medsr.io.raster import PNG_OPTIONS


def synthetic_scan(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """Smooth shapes plus a little noise: compresses like a real scan, unlike pure noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.3 + 0.2 * np.sin(xx * rng.uniform(3, 9)) * np.cos(yy * rng.uniform(3, 9))
    for _ in range(6):
        cy, cx, r = rng.uniform(0.2, 0.8, 3) * (1, 1, 0.3)
        img += 0.25 * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)
    img += rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def upscale(args: list[str]) -> float:
    """Seconds for one `medsr upscale` call; its per-file lines are swallowed."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["upscale", "--device", "cpu", *args])  # a CPU benchmark, also where a GPU is present
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"medsr upscale {' '.join(args)} exited with {code}")
    return seconds


def png_seconds(pixels: np.ndarray, **options) -> tuple[float, int]:
    """Seconds to encode one PNG with Pillow's `options`, and its size in bytes."""
    buffer = io.BytesIO()
    seconds = best_of(lambda: (buffer.seek(0), buffer.truncate(), Image.fromarray(pixels).save(buffer, format="PNG", **options)), 3)
    return seconds, len(buffer.getvalue())


def command_seconds(args: list[str]) -> float:
    """Wall time of a fresh `medsr` process (Python, imports and model loading included)."""
    start = time.perf_counter()
    subprocess.run([shutil.which("medsr") or "medsr", *args], check=True, capture_output=True)
    return time.perf_counter() - start


def stage_seconds(files: list[Path], out: Path, precision: str = "auto") -> dict[str, float]:
    """Mean seconds per file of each step of a job (medsr.inference.batch.JobRunner), on this thread."""
    upscaler, _ = load_upscaler("default", device="cpu", precision=precision)
    runner = batch.JobRunner(upscaler, {})
    totals = {"read": 0.0, "model": 0.0, "write (PNG, hash)": 0.0}
    for path in files:
        job = batch.Job(path, out / path.name)
        start = time.perf_counter()
        data, state, _ = runner.read(job)
        read = time.perf_counter()
        sr, maps = runner.upscale(job, data)
        model = time.perf_counter()
        runner.write(job, sr, maps, state, 0.0)
        totals["read"] += read - start
        totals["model"] += model - read
        totals["write (PNG, hash)"] += time.perf_counter() - model
    return {k: v / len(files) for k, v in totals.items()}


def one_thread_floor(files: list[Path], out: Path) -> str:
    """Each step's cost on one thread (CPU-seconds per image, the float path and int8), and the marginal time
    they allow at best: all of this machine's cores busy, nothing lost to waiting."""
    threads, cores = torch.get_num_threads(), len(os.sched_getaffinity(0))  # the cores this process may use
    torch.set_num_threads(1)
    try:
        costs = {precision: stage_seconds(files, out / precision, precision) for precision in (FLOAT, "int8")}
    finally:
        torch.set_num_threads(threads)
    lines = ["\n| one image's steps, one thread (CPU-seconds) | " + " | ".join(costs[FLOAT]) + " | total | best marginal time on "
             f"{cores} cores (total / {cores}) |", "|---|" + "---:|" * (len(costs[FLOAT]) + 2)]
    for precision, steps in costs.items():
        total = sum(steps.values())
        lines.append(f"| --precision {precision} | " + " | ".join(f"{v:.3f}" for v in steps.values()) + f" | {total:.3f} | "
                     f"{total / cores:.3f} s |")
    return "\n".join(lines)


def ray_seconds(src: Path, out: Path, files: int) -> tuple[float, float] | None:
    """(seconds with a running one-machine cluster, seconds when medsr starts Ray itself), or None without Ray."""
    ray_cli = shutil.which("ray")
    if ray_cli is None:
        return None
    port = 6390
    # Ray 2.59+ wants one token shared by the cluster's processes and the driver (this process)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.urandom(16).hex(), RAY_USAGE_STATS_ENABLED="0")
    subprocess.run([ray_cli, "start", "--head", f"--port={port}", f"--num-cpus={os.cpu_count()}", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True)
    try:
        upscale([str(src / "scan_0000.png"), str(src / "scan_0001.png"), "-o", str(out / "ray-warmup"), "--engine", "ray",
                 "--ray-address", f"127.0.0.1:{port}"])  # the workers import torch and load the model
        running = upscale([str(src), "-o", str(out / "ray"), "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"])
    finally:
        import ray

        ray.shutdown()
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True)
    cold = command_seconds(["upscale", str(src), "-o", str(out / "ray-cold"), "--engine", "ray"])
    return running, cold


def projection(stages: dict[str, float], ray_seconds: float, files: int, src: Path, out: Path) -> str:
    """What N machines like this one would give: measured per-file costs, then a projection."""
    cpus = os.cpu_count()
    work = sum(stages.values()) * torch.get_num_threads()  # CPU-seconds of one job run locally, at most (all threads busy)
    per_cpu = ray_seconds * cpus / files  # CPU-seconds of one job under Ray (one job per CPU), scheduling and waiting included
    in_bytes = sum(p.stat().st_size for p in src.iterdir()) / files
    out_bytes = sum(p.stat().st_size for p in out.glob("*.png")) / files
    node_rate = files / ray_seconds
    storage = 1e9  # bytes/s: an ASSUMED shared file system (a good NFS server or object-store gateway), not measured
    saturate = storage / (in_bytes + out_bytes) / node_rate
    overhead = (f"Ray's scheduling and transfer add at least {per_cpu - work:.2f} CPU-seconds per job" if per_cpu > work else
                "Ray's scheduling and transfer cost is within that bound: too small to measure this way")
    return "\n".join([
        "", "**Scaling out, measured on this machine:** one job's steps take "
        + ", ".join(f"{k} {v:.3f} s" for k, v in stages.items()) + f" with torch's {torch.get_num_threads()} threads (at most "
        f"{work:.2f} CPU-seconds); under the Ray engine, one job per CPU, a job costs {per_cpu:.2f} CPU-seconds, so {overhead}. "
        f"A job reads {in_bytes / 1e6:.2f} MB "
        f"and writes {out_bytes / 1e6:.2f} MB.",
        "", f"**Projected, not measured:** N machines like this one give about N x {node_rate:.2f} files/s while nothing is "
        "shared but the file system and Ray's head: 100 of them about "
        f"{100 * node_rate:.0f} files/s, a 100,000-image archive in {100_000 / (100 * node_rate) / 60:.0f} min. The file system "
        f"saturates first: at an assumed 1 GB/s of shared storage, {(in_bytes + out_bytes) / 1e6:.1f} MB per job caps the run "
        f"at {storage / (in_bytes + out_bytes):.0f} files/s, reached with about {saturate:.0f} machines. Next is the driver: "
        "one Ray task per job and one ledger line per file on the head, a few hundred a second at that rate (not measured "
        "here at that scale); its resume check hashes every existing output, as fast as the storage reads them.",
    ])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    print(f"{machine()}\n")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.files):
            Image.fromarray(synthetic_scan(rng)).save(src / f"scan_{i:04d}.png")
        upscale([str(src / "scan_0000.png"), str(src / "scan_0001.png"), "-o", str(Path(tmp) / "warmup")])
        few = src.parent / "few"  # a quarter of the files: the difference in time is the marginal cost of the rest
        few.mkdir()
        for path in sorted(src.iterdir())[: args.files // 4]:
            (few / path.name).write_bytes(path.read_bytes())
        auto = load_upscaler("default")[0].precision
        print(f"{args.files} files of 512x512 -> 1536x1536, default model; no --precision is auto ({auto} on this CPU); "
              f"--streams 1 is one image at a time on all {torch.get_num_threads()} threads, no --streams the default (2 here); "
              f"`--precision {FLOAT} --streams 1` is how medsr ran before 2026-11-29 on this CPU\n")
        print("| run | seconds | files/s |\n|---|---:|---:|")
        before = ["--precision", FLOAT, "--streams", "1"]
        for workers in args.workers.split(","):
            out = Path(tmp) / f"out-{workers}"
            seconds = upscale([str(src), "-o", str(out), "--workers", workers, *before])
            print(f"| --workers {workers} {' '.join(before)} | {seconds:.1f} | {args.files / seconds:.2f} |", flush=True)
        rest = args.files - args.files // 4
        runs = {" ".join(before): seconds}  # options (with the last --workers) -> seconds for all the files
        for options in (["--precision", FLOAT], ["--streams", "1"], []):
            out = Path(tmp) / f"run-{len(runs)}"
            runs[" ".join(options)] = seconds = upscale([str(src), "-o", str(out), "--workers", workers, *options])
            print(f"| {' '.join(['--workers', workers, *options])} | {seconds:.1f} | {args.files / seconds:.2f} |", flush=True)
        full = runs[""]
        seconds = upscale([str(src), "-o", str(out), "--workers", workers])  # the defaults run (the last), again
        print(f"| resume, all complete (--workers {workers}) | {seconds:.2f} | {args.files / seconds:.0f} |")
        print(f"\n| marginal time per image, --workers {workers} | seconds |\n|---|---:|")
        for label, total in runs.items():
            part = upscale([str(few), "-o", str(Path(tmp) / f"out-few-{label.replace(' ', '')}"), "--workers", workers, *label.split()])
            print(f"| {label or '(defaults)'} | {(total - part) / rest:.3f} (({total:.1f} s for {args.files} files - {part:.1f} s "
                  f"for {args.files // 4}) / {rest}) |", flush=True)
        print(one_thread_floor(sorted(src.iterdir())[:4], Path(tmp) / "floor"))

        stages = stage_seconds(sorted(src.iterdir())[:6], Path(tmp) / "stages")
        print("\nOne job's steps, one after another on this thread (6 files): "
              + ", ".join(f"{k} {v:.3f} s" for k, v in stages.items()) + ".")

        ray = None if args.no_ray else ray_seconds(src, Path(tmp), args.files)
        if ray is not None:
            running, cold = ray
            local = args.files / full
            print(f"\n| engine | seconds | files/s | vs local (--workers {workers}) |\n|---|---:|---:|---:|")
            print(f"| local, --workers {workers} (above) | {full:.1f} | {local:.2f} | 1.00 |")
            print(f"| --engine ray, a running one-machine cluster ({os.cpu_count()} CPUs: one job per CPU) | {running:.1f} | "
                  f"{args.files / running:.2f} | {args.files / running / local:.2f} |")
            print(f"| --engine ray, started by medsr (a fresh process: Ray start-up, imports and model loading included) | {cold:.1f} | "
                  f"{args.files / cold:.2f} | {args.files / cold / local:.2f} |")
            print(projection(stages, running, args.files, src, Path(tmp) / "ray"))

        output = np.asarray(Image.open(next((Path(tmp) / f"out-{workers}").glob("*.png"))))
        print("\n| PNG encoding of one 1536x1536 8-bit output | seconds | bytes |\n|---|---:|---:|")
        for label, options in (("zlib level 6 (Pillow's default)", {"compress_level": 6}), ("zlib level 1", {"compress_level": 1}),
                               ("zlib level 1, run-length matching (medsr's)", PNG_OPTIONS)):
            seconds, size = png_seconds(output, **options)
            print(f"| {label} | {seconds:.3f} | {size:,} |")

        one = str(src / "scan_0000.png")
        version = command_seconds(["--version"])
        single = command_seconds(["upscale", one, "-o", str(Path(tmp) / "single"), "--device", "cpu"])
        print(f"\nA fresh process: `medsr --version` {version:.2f} s; `medsr upscale` of one file {single:.2f} s "
              "(Python, imports, model loading and fusion, one image, its PNG).")


if __name__ == "__main__":
    main()
