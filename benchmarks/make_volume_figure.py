"""The README's through-plane figure: a coronal view of thick-slice input, cubic, medsr and the reference.

    python benchmarks/make_volume_figure.py                     # writes docs/volume.png (about 1 min on 2 cores)
    python benchmarks/make_volume_figure.py --adapt-minutes 5   # also prints the PSNR after 5 minutes of adaptation

The volume is the MNI152 T1 template shipped in nilearn (1 mm, 197x233x189; not ../shared/data,
whose pixels may not be committed). Its axial slices are made 4 mm thick exactly as
benchmarks/bench_volume.py does (Gaussian profile, FWHM = 4 voxels, every 4th position), then
brought back to the 1 mm grid by cubic interpolation and by medsr's through-plane model
(`medsr.upscale_volume`, no adaptation in the figure). PSNR is inside the head (reference > 0.02
of its white level), against the reference. The template is a volume unlike the training data (an
average of many scans, processed elsewhere), so --adapt-minutes shows what per-volume adaptation adds.
"""

from __future__ import annotations

import argparse
import importlib.resources
import time
from pathlib import Path

import nibabel as nib
import numpy as np

import medsr
from medsr import figures
from medsr.data import slice_profile
from medsr.demo import MNI_T1

ROOT = Path(__file__).resolve().parents[1]
FACTOR = 4


def psnr_inside(result: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    error = np.mean((result[mask] - reference[mask]) ** 2)
    return float(10 * np.log10(1.0 / error))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapt-minutes", type=float, default=0, help="also measure medsr after this much per-volume adaptation")
    args = parser.parse_args()
    path = Path(str(importlib.resources.files("nilearn") / MNI_T1))
    reference = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    reference = reference[:, :, : reference.shape[2] // FACTOR * FACTOR]
    reference /= np.percentile(reference[reference > 0], 99.5)
    thick, positions = slice_profile.simulate_thick_slices(reference, 2, FACTOR)
    started = time.perf_counter()
    # thick slices of 4 voxels, first centred at 1.5: on the 1 mm grid again, the first centre moves back by 1.5 mm
    thin = medsr.upscale_volume(thick, (1.0, 1.0, float(FACTOR)), slice_spacing=1.0)
    seconds = time.perf_counter() - started
    assert thin.array.shape == reference.shape and np.isclose(thin.origin_shift[2], -1.5)
    cubic = slice_profile.interpolate_back(thick, 2, positions, reference.shape[2])
    mask = reference > 0.02
    row = reference.shape[1] // 2 - 20  # a coronal plane through the ventricles
    panels = [(np.repeat(thick, FACTOR, axis=2), f"{FACTOR} mm slices (input)"),
              (cubic, f"cubic: {psnr_inside(cubic, reference, mask):.2f} dB"),
              (thin.array, f"medsr through-plane: {psnr_inside(thin.array, reference, mask):.2f} dB"),
              (reference, "1 mm reference")]
    tiles = [figures.tile(np.rot90(np.clip(volume[:, row, :], 0, 1)), label, 300) for volume, label in panels]
    out = ROOT / "docs" / "volume.png"
    figures.grid([tiles]).save(out)
    print(f"wrote {out}; x{FACTOR}, PSNR inside the head: cubic {psnr_inside(cubic, reference, mask):.2f} dB, medsr "
          f"{psnr_inside(thin.array, reference, mask):.2f} dB ({seconds:.1f} s for {reference.shape})")
    if args.adapt_minutes:
        adapted = medsr.upscale_volume(thick, (1.0, 1.0, float(FACTOR)), slice_spacing=1.0, adapt_minutes=args.adapt_minutes)
        print(f"medsr after {args.adapt_minutes:g} min of adaptation: {psnr_inside(adapted.array, reference, mask):.2f} dB")


if __name__ == "__main__":
    main()
