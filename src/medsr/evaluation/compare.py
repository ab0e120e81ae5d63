"""`medsr compare`: models and interpolation side by side on one data split, with numbers.

The seed paper compared its GAN with SRGAN, ESRGAN, Real-ESRGAN, SwinIR and ResShift by eye
only (its Figure 7). Here every method upscales the same LR images (same split, same
degradation: the evaluation protocol's antialiased bicubic downscale) and gets:
- a metrics table (PSNR, SSIM, MS-SSIM, fine-detail ratio, parameters, training time recorded in
  the model file, and ms per 512x512 input on this machine), as Markdown and CSV;
- per image, a figure: a row of full images (HR, bicubic, each model), a row of zoomed insets of
  the same region (the window with the most detail, boxed in red on the HR image), and a row of
  |method - HR| maps (black = exact, white = an error of a quarter of the range or more);
- one summary figure in the spirit of the paper's Figure 7: a few images as rows, LR / methods / HR as columns.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsr import figures, hardware, zoo
from medsr.data import degrade, load_arrays
from medsr.errors import MedsrError
from medsr.evaluation import quality, report
from medsr.inference.upscaler import load_upscaler
from medsr.io.types import as_unit
from medsr.settings import TILE_OVERLAP

TIMING_SIDE = 512
DIFF_RANGE = 0.25  # |error| shown as white in the difference maps


@dataclass
class Entry:
    method: quality.Method
    params: int | None = None
    train_minutes: float | None = None
    ms_per_512: float | None = None


def build_entries(names: list[str], device: str, precision: str, scale: int | None) -> tuple[list[Entry], int]:
    """Interpolation names stay classical methods; anything else is loaded as a model. `label=model`
    names a model file or run folder in the table and figures."""
    entries, first = [], None
    for item in names:
        name, _, ref = item.partition("=")
        ref = ref or name
        label = ref if ref in quality.BASELINES or ref == "bilinear" else name  # what the table and figures call it
        if label in [e.method.name for e in entries]:
            raise MedsrError(f"--models names '{label}' twice; name each entry once, labelling models with label=model, "
                             "e.g. --models bicubic,gan=default-gan,psnr=default")
        if ref in quality.BASELINES or ref == "bilinear":
            entries.append(Entry(quality.Method(ref)))
            continue
        # the first model sets the comparison's scale (unless --scale did); every later one must match it
        if first is not None and scale is not None and zoo.model_scale(ref) != scale:
            raise MedsrError(f"model {name} upscales x{zoo.model_scale(ref)}, not x{scale} as {first} does; "
                             "compare models of one scale, e.g. --models bicubic,default,large")
        if ref.lower().endswith(".onnx"):
            raise MedsrError(f"{ref}: compare runs PyTorch models (it reports their parameters and training time); name the "
                             "model the .onnx was exported from, or score the .onnx with 'medsr evaluate --runtime onnx'")
        upscaler, meta = load_upscaler(ref, scale=scale, device=device, precision=precision, tile=0)
        first, scale = first or name, upscaler.scale
        seconds = meta.get("medsr_train_seconds")
        entries.append(Entry(quality.Method(name, upscaler, quality.held_out_volumes(meta)), params=int(meta["parameters"]),
                             train_minutes=float(seconds) / 60 if seconds else None))
    if not entries:
        raise MedsrError("--models is empty; name at least one model or interpolation, e.g. --models bicubic,default")
    return entries, scale or 3


def time_per_image(entry: Entry, scale: int, repeats: int = 1) -> float:
    """Milliseconds to upscale a 512x512 image, as `medsr upscale` does it (its default tiles)."""
    lr = np.random.default_rng(0).random((TIMING_SIDE, TIMING_SIDE), dtype=np.float32)
    upscaler = entry.method.upscaler
    if upscaler is None:
        run = lambda: entry.method.run(lr, scale)  # noqa: E731
    else:
        tiled = copy.copy(upscaler)  # the same (already prepared) model, with upscale's default tiling
        tiled.tile = hardware.default_tile(getattr(upscaler, "device", None), getattr(upscaler, "precision", "fp32"))
        tiled.overlap = TILE_OVERLAP
        run = lambda: tiled.upscale_plane(lr)  # noqa: E731
        tiled.upscale_plane(lr[:64, :64])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats * 1000


def nearest_to(lr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The LR image blown up to `shape` with square pixels, as it really looks."""
    return np.kron(lr, np.ones((shape[0] // lr.shape[0], shape[1] // lr.shape[1])))


def image_figure(lr: np.ndarray, hr: np.ndarray, outputs: dict[str, np.ndarray], scores: dict[str, float],
                 width: int = 220) -> "figures.Image.Image":
    """Full images, zoomed insets and |error| maps, one column per method (HR first)."""
    box = figures.busiest_box(hr, max(8, min(hr.shape) // 4))
    top, left, h, w = box
    columns = [("HR", hr, "")] + [(m, out, f" {scores[m]:.2f} dB") for m, out in outputs.items()]
    full = [figures.tile(figures.with_box(hr, box) if label == "HR" else image, label + psnr, width)
            for label, image, psnr in columns]
    zoom = [figures.tile(image[top : top + h, left : left + w], f"zoom {label}", width, figures.Image.Resampling.NEAREST)
            for label, image, _ in columns]
    error = [figures.tile(figures.hot(np.abs(image - hr), DIFF_RANGE), f"|{label} - HR|", width)
             for label, image, _ in columns]
    error[0] = figures.tile(nearest_to(lr, hr.shape), "LR input", width)
    return figures.grid([full, zoom, error])


def summary_figure(samples: list[tuple[str, np.ndarray, np.ndarray, dict[str, np.ndarray]]], width: int = 160) -> "figures.Image.Image":
    """Rows of images, columns LR / each method / HR, like the paper's Figure 7."""
    rows = []
    for _, lr, hr, outputs in samples:
        row = [figures.tile(nearest_to(lr, hr.shape), "LR", width)] + [figures.tile(out, name, width) for name, out in outputs.items()]
        rows.append(row + [figures.tile(hr, "HR", width)])
    return figures.grid(rows)


def comparison_table(summary: list[dict], entries: list[Entry]) -> str:
    info = {e.method.name: e for e in entries}
    ref = next((s for s in summary if s["method"] == "bicubic"), None)
    header = ["method", "parameters", "training (min)", "PSNR (dB)", "vs bicubic (dB)", "SSIM", "MS-SSIM",
              "fine detail (HF ratio)", "ms per 512x512"]
    rows = []
    for s in summary:
        e = info[s["method"]]
        rows.append([s["method"], f"{e.params / 1e6:.2f} M" if e.params else "-", f"{e.train_minutes:.0f}" if e.train_minutes else "-",
                     report.number(s["psnr"], ".2f"), report.number(s["psnr"] - ref["psnr"], "+.2f") if ref else "",
                     report.number(s["ssim"], ".4f"), report.number(s["ms_ssim"], ".4f"), report.number(s["hf_ratio"], ".3f"),
                     "-" if np.isnan(e.ms_per_512) else f"{e.ms_per_512:.0f}"])
    return report.markdown_table(header, rows)


def compare(data_dirs: list[str], names: list[str], out_dir: Path, protocol: str = "paper", split: str = "test",
            limit: int | None = None, n_figures: int = 4, scale: int | None = None, device: str = "auto",
            precision: str = "auto", timing: bool = True) -> dict:
    """Run the comparison; write table.md, summary.csv, per_image.csv, results.json, figures/ and summary.png into out_dir."""
    entries, scale = build_entries(names, device, precision, scale)
    methods = [e.method for e in entries]
    rows = quality.evaluate(data_dirs, methods, scale, protocol, split, limit)
    summary = quality.summarize(rows)
    for e in entries:
        e.ms_per_512 = time_per_image(e, scale) if timing else float("nan")
    for s in summary:
        e = next(e for e in entries if e.method.name == s["method"])
        s.update(parameters=e.params or 0, train_minutes=e.train_minutes, ms_per_512=e.ms_per_512)

    out_dir.mkdir(parents=True, exist_ok=True)
    context = {"data": data_dirs, "protocol": protocol, "split": split, "scale": scale, "models": names}
    report.write_reports(rows, summary, out_dir, context)
    table = comparison_table(summary, entries)
    (out_dir / "table.md").write_text(table + "\n")

    # figures: some of the images just scored (not those left out), spread evenly, so every data folder shows up
    arrays, kept = load_arrays(quality.split_items(data_dirs, split, limit, quality.held_out_by(methods)))
    scored = {r["file"] for r in rows}
    arrays, kept, names = zip(*[(a, item, name) for a, item, name in zip(arrays, kept, quality.image_names(kept)) if name in scored])
    picks = np.unique(np.linspace(0, len(arrays) - 1, max(1, n_figures)).round().astype(int))
    (out_dir / "figures").mkdir(exist_ok=True)
    samples, figure_paths = [], []
    for i in picks:
        lr, hr = degrade.make_pair(as_unit(arrays[i])[0], protocol, scale)
        outputs = {m.name: m.run(lr, scale) for m in methods}
        scores = {r["method"]: r["psnr"] for r in rows if r["file"] == names[i]}
        slice_index = names[i][len(str(kept[i].path)):].replace("#", "-")  # "-k" for a slice of a volume
        stem = f"{kept[i].label.replace('/', '-') or 'image'}-{kept[i].path.stem}{slice_index}"
        path = out_dir / "figures" / f"{stem}.png"
        image_figure(lr, hr, outputs, scores).save(path)
        figure_paths.append(path)
        samples.append((stem, lr, hr, outputs))
    summary_figure(samples).save(out_dir / "summary.png")
    return {"table": table, "summary": summary, "figures": figure_paths, "out_dir": out_dir}
