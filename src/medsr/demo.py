"""`medsr demo`: upscale real medical images that ship inside pip packages (nothing is downloaded).

- chest: the computed radiograph RG1_J2KI.dcm (JPEG 2000, MONOCHROME1) from `pydicom-data`;
- brain: the middle axial slice of the MNI152 T1 template (an average of 152 adult brain MRIs)
  that `nilearn` ships as package data.
Each original is downscaled by the model's scale to make the low-resolution input, so the
result can be compared with the truth: the figure shows bicubic, medsr and the original side by
side, with the PSNR of each against the original.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

import numpy as np
import torch

from medsr import figures, metrics
from medsr.data import degrade
from medsr.errors import MedsrError
from medsr.files import mark_output_folder
from medsr.inference.upscaler import Upscaler
from medsr.io import Image, ImageMeta, read_image, write_image

MNI_T1 = "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
INSTALL_HINT = 'install the demo images with: pip install -e ".[demo]"'


def demo_images() -> dict[str, np.ndarray]:
    """name -> 2-D [0, 1] array of each demo image that is installed."""
    images = {}
    try:
        from pydicom.data import get_testdata_file

        chest = get_testdata_file("RG1_J2KI.dcm", download=False)
    except (ImportError, ValueError, OSError):
        chest = None
    if chest:
        images["chest-cr"] = read_image(chest).pixels
    if importlib.util.find_spec("nilearn") is not None:
        path = importlib.resources.files("nilearn") / MNI_T1
        if path.is_file():
            volume = read_image(Path(str(path))).pixels  # (axial slices, H, W)
            # The template's axes are left-right and anterior-posterior in-plane; show it like a scan.
            images["brain-mri"] = np.rot90(volume[len(volume) // 2 + 10]).copy()
    if not images:
        raise MedsrError(f"no demo images found (pydicom-data, nilearn); {INSTALL_HINT}")
    return images


def run_demo(upscaler: Upscaler, out_dir: Path, model_name: str) -> list[Path]:
    """Upscale every demo image; write the SR PNG and a bicubic | medsr | original figure, with a
    second row of zoomed insets of the image's busiest region (boxed in red on the original)."""
    mark_output_folder(out_dir)  # never read back as input by a later medsr upscale of a folder holding it
    s = upscaler.scale
    written = []
    for name, original in demo_images().items():
        # the whole image (no native cap), so the figure shows all of it; scored against the original
        lr01, hr01 = degrade.make_pair(original, "native", s, native_cap=None)
        lr, hr = torch.from_numpy(lr01)[None, None], torch.from_numpy(hr01)[None, None]
        h, w = hr.shape[-2:]
        bicubic = degrade.upscale_baseline(lr, s).clamp(0, 1)
        sr = torch.from_numpy(upscaler.upscale(lr01))[None, None]
        scores = {k: metrics.psnr(v, hr, s).item() for k, v in (("bicubic", bicubic), ("sr", sr))}
        meta = ImageMeta(path="", format="png", bit_depth=16, value_range=(0.0, 1.0), pixel_spacing=None)
        sr_path = write_image(out_dir / f"{name}-x{s}.png", Image(sr[0, 0].numpy(), meta), scale=s, model_name=model_name)
        panels = [(bicubic[0, 0].numpy(), f"bicubic x{s}: {scores['bicubic']:.2f} dB"),
                  (sr[0, 0].numpy(), f"medsr {model_name} x{s}: {scores['sr']:.2f} dB"), (hr01, "original")]
        # At 512 px a large radiograph's three panels look alike: a second row zooms into its busiest region.
        box = figures.busiest_box(hr01, max(16, min(h, w) // 8), margin=0.2)
        top, left, side, _ = box
        figure = figures.grid([
            [figures.tile(figures.with_box(image, box) if label == "original" else image, label, 512) for image, label in panels],
            [figures.tile(image[top : top + side, left : left + side], f"zoom: {label.split(':')[0]}", 512, figures.Image.Resampling.NEAREST)
             for image, label in panels],
        ])
        fig_path = out_dir / f"{name}-comparison.png"
        figure.save(fig_path)
        print(f"{name}: {w // s}x{h // s} -> {w}x{h}; PSNR vs original: bicubic {scores['bicubic']:.2f} dB, medsr {scores['sr']:.2f} dB")
        written += [sr_path, fig_path]
    return written
