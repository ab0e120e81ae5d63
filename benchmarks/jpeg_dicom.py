"""DICOM files stored as lossy JPEG: do they carry JPEG's block grid, and which model keeps it down?
Writes docs/results/jpeg-dicom.md.

Every compressed DICOM file in ../shared/data/dicom (none of them is training data), with its
transfer syntax and whether medsr counts it as JPEG-coded (medsr.io.formats.jpeg_coded: what
`medsr upscale` runs default-jpeg on). Each file itself is upscaled x3, as a user upscales it: a
centre crop on its 8-pixel grid (medsr.evaluation.quality.grid_crop, as medsr evaluate measures JPEG
files) by bicubic, `default` and `default-jpeg` (bf16 where the CPU has it), and the block-grid
ratio (medsr.metrics.block_grid_ratio) of the input on its 8-pixel grid and of each output on the
24-pixel one. About 1: no grid.

    python benchmarks/jpeg_dicom.py
"""

import argparse

import torch
from common import DATA, FLOAT, ROOT, machine
from pydicom.uid import UID

from medsr import metrics
from medsr.evaluation import quality
from medsr.inference.upscaler import load_upscaler
from medsr.io import read_image
from medsr.io.formats import jpeg_coded
from medsr.io.types import as_unit

MODELS = ("default", "default-jpeg")


def main():
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()  # --help, then nothing
    upscalers = {name: load_upscaler(name, precision=FLOAT, tile=0)[0] for name in MODELS}
    lines = ["## DICOM files stored as lossy JPEG: block grid in and out", "",
             f"Produced by `python benchmarks/jpeg_dicom.py` ({machine()}).",
             "The compressed DICOM files of ../shared/data/dicom, each upscaled x3 as it is (a centre crop of up to 256 px on its",
             f"8-pixel grid), {FLOAT}; block-grid ratio of the input and of each output (about 1: no grid).", "",
             "| file | transfer syntax | JPEG-coded (default-jpeg) | input | bicubic | default | default-jpeg |",
             "|---|---|---|---:|---:|---:|---:|"]
    for path in sorted((DATA / "dicom").glob("*.dcm")):
        image = read_image(path)
        syntax = UID(image.meta.extra["transfer_syntax"])
        if not syntax.is_compressed:
            continue
        pixels = image.pixels
        crop = torch.from_numpy(quality.grid_crop(as_unit(pixels if pixels.ndim == 2 else pixels[0])[0]))[None, None]
        ratio = {"input": metrics.block_grid_ratio(crop, 8).item()}
        outputs = {"bicubic": quality.Method("bicubic").run(crop[0, 0].numpy(), 3)}
        outputs.update({name: upscaler.upscale(crop[0, 0].numpy()) for name, upscaler in upscalers.items()})
        ratio.update({name: metrics.block_grid_ratio(torch.from_numpy(out)[None, None], 24).item() for name, out in outputs.items()})
        lines.append(f"| {path.name} | {syntax.name} | {'yes' if jpeg_coded(path) else 'no'} | "
                     + " | ".join(f"{ratio[k]:.2f}" for k in ("input", "bicubic", *MODELS)) + " |")
        print(lines[-1], flush=True)
    out = ROOT / "docs" / "results" / "jpeg-dicom.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
