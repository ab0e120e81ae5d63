"""How far can a shipped network go on these images at all? Writes docs/results/fit-bound-MODEL.md.

The model is fine-tuned on the VALIDATION images themselves (random native-resolution crops and
their paper-protocol pairs, both data sets, L1, the recipe's learning rate with a cosine decay,
bf16 where the CPU has it), then scored on the very same images. Such a model has seen its test,
so it is never shipped; it shows how far this network goes on such images when it may learn the very
images it is scored on, beyond what training data or a recipe that has not seen them should give.
Issue 14's PSNR targets ask the default for more than its network reaches even this way (see the
note in docs/RESULTS.md).

    python benchmarks/fit_bound.py [--model default] [--steps 2000] [--limit 24]

--steps 8000 (docs/results/fit-bound-default-8000.md) shows how far four times the fitting goes:
further on brain MRI, where the network goes on learning the scored images, not on chest X-rays.
"""

import argparse
import math
import time

import numpy as np
import torch
from common import DATA, FLOAT, ROOT, machine

from medsr import hardware, zoo
from medsr.data import degrade, load_arrays
from medsr.evaluation import quality
from medsr.inference.upscaler import Upscaler
from medsr.io.types import as_unit

CPU = torch.device("cpu")
CROP, NATIVE_PER_BATCH, PAPER_PER_BATCH = 150, 10, 6
STEPS = 2000


def fit(model: torch.nn.Module, images: list[np.ndarray], steps: int) -> torch.nn.Module:
    """`model` fine-tuned on `images` (2-D [0, 1] arrays) for `steps` batches of 16."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    natives = [degrade.native_hr(image, 3) for image in images]
    papers = [tuple(torch.from_numpy(a)[None, None] for a in degrade.make_pair(image, "paper", 3)) for image in images]
    model = model.train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    dtype = torch.bfloat16 if FLOAT == "bf16" else None
    for step in range(steps):
        lr, hr = [], []
        for _ in range(NATIVE_PER_BATCH):
            image = natives[rng.integers(len(natives))]
            y, x = rng.integers(0, image.shape[0] - CROP + 1), rng.integers(0, image.shape[1] - CROP + 1)
            crop = torch.from_numpy(np.ascontiguousarray(image[y:y + CROP, x:x + CROP]))[None, None]
            hr.append(crop)
            lr.append(degrade.downscale(crop, 3).clamp(0, 1))
        for _ in range(PAPER_PER_BATCH):
            small, big = papers[rng.integers(len(papers))]
            lr.append(small)
            hr.append(big)
        lr_batch = (torch.cat(lr) * 2 - 1).contiguous(memory_format=torch.channels_last)
        with hardware.autocast(CPU, dtype):
            out = model(lr_batch)
        loss = (out.float() - (torch.cat(hr) * 2 - 1)).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="default")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"fitting steps; other than {STEPS}, the file name says how many")
    parser.add_argument("--limit", type=int, default=24, help="validation images per data set (spread over the classes)")
    args = parser.parse_args()
    images = []
    for modality in ("brain-mri", "chest-xray"):
        # the very images quality.evaluate scores below
        arrays, _ = load_arrays(quality.split_items([str(DATA / modality)], "val", args.limit))
        images += [as_unit(array)[0] for array in arrays]
    started = time.perf_counter()
    fitted = fit(zoo.load(args.model)[0], images, args.steps)
    minutes = (time.perf_counter() - started) / 60
    methods = [quality.Method("bicubic"), quality.Method(args.model, Upscaler(zoo.load(args.model)[0], 3, CPU, FLOAT, tile=0)),
               quality.Method(f"{args.model} fitted to these very images", Upscaler(fitted, 3, CPU, FLOAT, tile=0))]
    command = f"python benchmarks/fit_bound.py --model {args.model} --steps {args.steps} --limit {args.limit}"
    lines = [f"## {args.model} fitted to the images it is scored on (validation split)", "",
             f"Produced by `{command}` ({machine()}).",
             f"{args.model} fine-tuned for {args.steps} steps ({minutes:.0f} min) on {args.limit} validation images per data set "
             "(native crops and paper pairs), then scored on the same images, x3, {FLOAT}. It has seen its test: what this".format(FLOAT=FLOAT),
             "network reaches when it may learn the very images it is scored on, in that many steps (not a model to use).",
             "The native images are large (up to 1500 px), so it learns them slowly; the paper pairs are one 150 px image each, "
             "which it partly learns by heart, so the paper figures are loose.", ""]
    for modality in ("brain-mri", "chest-xray"):
        for protocol in ("paper", "native"):
            summary = quality.summarize(quality.evaluate([str(DATA / modality)], methods, 3, protocol, "val", args.limit))
            lines += [f"### {modality}, {protocol} protocol", "", quality.markdown_table(summary), ""]
            print("\n".join(lines[-4:]), flush=True)
    out = ROOT / "docs" / "results" / f"fit-bound-{args.model}{'' if args.steps == STEPS else f'-{args.steps}'}.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
