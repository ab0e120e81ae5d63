"""What the default's neighbourhood clamp costs, and whether it can be kept only where it was wanted.
The clamp (medsr.models.edsr.neighbourhood_clamp) keeps every output pixel within its 3x3 LR source
neighbourhood's range + 4 %: it took the bright-and-dark line off the edges of skull-stripped brains
(issue 14), and it also forbids real detail brighter or darker than its neighbourhood, which the
originals have (docs/results/truth-overshoot.md). The same trained network with the clamp everywhere
(shipped), with a wider margin, only where the neighbourhood touches the image's background (its
darkest value: the zero around a skull-stripped brain), and off (flat neighbourhoods still keep their
value). Inference only, no retraining. Measured on the VALIDATION split (zero_background.
validation_report); x3, fp32. Writes docs/results/clamp-scope.md.

    python benchmarks/clamp_scope.py [--limit 24]
"""

import argparse
import copy

import torch
from zero_background import write_validation_doc

from medsr import zoo
from medsr.evaluation import quality
from medsr.inference.upscaler import Upscaler
from medsr.models.layers import source_range


class ScopedClamp(torch.nn.Module):
    """The default's network, its clamp (margin `margin`) applied where `where` says: "everywhere",
    "background" (where the 3x3 source neighbourhood holds the image's darkest value) or "nowhere".
    A flat neighbourhood gives its value exactly in every case, as shipped."""

    def __init__(self, model, margin: float, where: str, contrast: float = 0.0):
        super().__init__()
        self.scale, self.margin, self.where, self.contrast = model.scale, margin, where, contrast
        self.model = copy.deepcopy(model).fused_for_inference()
        self.model.clamp_margin = None

    def forward(self, lr):
        sr = self.model(lr)
        low, high = source_range(lr, self.scale)
        kept = torch.minimum(torch.maximum(sr, low - 2 * self.margin), high + 2 * self.margin)
        if self.where == "background":
            touches = low <= lr.amin(dim=(-2, -1), keepdim=True)
            kept = torch.where(touches, kept, sr)
        elif self.where == "edges":
            kept = torch.where(high - low >= 2 * self.contrast, kept, sr)
        elif self.where == "nowhere":
            kept = sr
        return torch.where(high > low, kept, low)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=24, help="validation images per data set (spread over the classes)")
    parser.add_argument("--contrasts", type=float, nargs="*", default=[0.15, 0.25, 0.4],
                        help="clamp only where the 3x3 source neighbourhood's range is at least this share of the full range")
    args = parser.parse_args()
    model, _ = zoo.load("default")
    cpu = torch.device("cpu")
    variants = [("default, clamp everywhere (shipped)", 0.04, "everywhere"), ("default, clamp margin 10 %", 0.10, "everywhere"),
                ("default, clamp only where the neighbourhood touches the background", 0.04, "background"),
                ("default, clamp off", 0.04, "nowhere")]
    variants += [(f"default, clamp only where the neighbourhood spans {c:.0%} of the range or more", 0.04, "edges", c)
                 for c in args.contrasts]
    methods = [quality.Method("bicubic")] + [quality.Method(name, Upscaler(ScopedClamp(model, *how), 3, cpu, "fp32", tile=0))
                                             for name, *how in variants]
    methods.append(quality.Method("default-paper (no clamp, paper protocol only)", Upscaler(zoo.load("default-paper")[0], 3, cpu, "fp32", tile=0)))
    write_validation_doc("clamp-scope.md", "Where the neighbourhood clamp is applied (validation split)",
                         f"python benchmarks/clamp_scope.py --limit {args.limit} --contrasts {' '.join(f'{c:g}' for c in args.contrasts)}",
                         "The shipped default's trained network with its output clamp (every pixel within its 3x3 LR "
                         "neighbourhood's range + margin) everywhere, wider, only next to the background, only where the "
                         "neighbourhood's own range is large (a hard edge), or off; "
                         "inference only; x3, fp32. Edge overshoot counts pixels more than 5 % beyond that range.", methods, args.limit)


if __name__ == "__main__":
    main()
