"""What keeping flat neighbourhoods flat costs: the default with the clamp as it was trained (a flat
3x3 LR neighbourhood widened by the margin, so a zero background came out as small positive values)
against the shipped clamp (a flat neighbourhood gives its value exactly: medsr.models.edsr.
neighbourhood_clamp). Measured on the VALIDATION split (zero_background.validation_report: the rim,
then PSNR and the other measures on both data sets, both protocols, and the validation volume's
slices), plus the share of background voxels of the validation volume (those whose 3x3 source
neighbourhood is all zero) that come out nonzero. x3, fp32. Writes docs/results/flat-clamp.md.

    python benchmarks/flat_clamp.py [--limit 24]
"""

import argparse

import nibabel as nib
import numpy as np
import torch
from common import DATA
from zero_background import VAL_VOLUME, write_validation_doc

from medsr import zoo
from medsr.evaluation import quality
from medsr.inference.upscaler import Upscaler
from medsr.models.layers import source_range


class MarginClamp(torch.nn.Module):
    """A clamped EDSR with the clamp as it was before: [min - m, max + m] everywhere, flat or not."""

    def __init__(self, model):
        super().__init__()
        self.margin, self.scale = model.clamp_margin, model.scale
        self.model = model.fused_for_inference()
        self.model.clamp_margin = None

    def forward(self, lr):
        low, high = source_range(lr, self.scale)
        return torch.minimum(torch.maximum(self.model(lr), low - 2 * self.margin), high + 2 * self.margin)


def background_lit(upscaler: Upscaler, volume: np.ndarray, step: int = 8) -> float:
    """% of the output pixels of every `step`-th axial slice whose 3x3 source neighbourhood is all zero but which are not 0."""
    from scipy import ndimage

    lit = total = 0
    top = float(volume.max())
    for plane in volume[..., ::step].transpose(2, 0, 1):
        if not plane.any():
            continue
        out = upscaler.upscale(plane / top)
        zero = ndimage.minimum_filter((plane == 0).astype(np.uint8), size=3, mode="nearest").astype(bool)
        zero = zero.repeat(upscaler.scale, 0).repeat(upscaler.scale, 1)
        lit += int((out[zero] != 0).sum())
        total += int(zero.sum())
    return 100 * lit / max(total, 1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=24, help="validation images per data set (spread over the classes)")
    args = parser.parse_args()
    model, _ = zoo.load("default")
    before = Upscaler(MarginClamp(model), 3, torch.device("cpu"), "fp32", tile=0)
    after = Upscaler(model, 3, torch.device("cpu"), "fp32", tile=0)
    methods = [quality.Method("bicubic"), quality.Method("default, margin everywhere (as trained)", before),
               quality.Method("default, flat neighbourhoods kept (shipped)", after)]
    volume = np.asanyarray(nib.load(DATA / "nifti" / f"{VAL_VOLUME}.nii.gz").dataobj, dtype=np.float32)
    lit = {m.name: background_lit(m.upscaler, volume) for m in methods[1:]}
    write_validation_doc("flat-clamp.md", "Keeping flat neighbourhoods flat (validation split)",
                         f"python benchmarks/flat_clamp.py --limit {args.limit}",
                         "The shipped default with its neighbourhood clamp as trained (every output pixel within its 3x3 LR "
                         "neighbourhood's range + 4 %, a flat neighbourhood too) and as shipped (a flat neighbourhood gives its "
                         "value exactly); x3, fp32.", methods, args.limit,
                         [f"## Background left nonzero ({VAL_VOLUME}, every 8th axial slice)", "",
                          "Output pixels whose 3x3 source neighbourhood is all zero (a skull-stripped volume's background) that are not 0.", "",
                          "| method | nonzero background (%) |", "|---|---:|", *(f"| {name} | {share:.3f} |" for name, share in lit.items()), ""])


if __name__ == "__main__":
    main()
