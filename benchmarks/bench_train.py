"""Training throughput (images/s) of the paper and default recipes, each beside a naive baseline,
on the same pre-made batches (compute only), and what making those batches costs (data only).

naive = fp32, contiguous tensors, stock torch.nn.Dropout, and the discriminator's weight gradients
computed during the generator step (a plain GAN loop).
medsr = the Trainer as shipped: bf16 autocast where native, channels_last, the discriminator
frozen while it judges the generator, medsr's cheaper dropout.
Both consume the same batches, drawn beforehand from the recipe's own sampler, so the ratio is
compute only. Data: the Trainer's sampler making a batch (pairs decoded once at start-up; the
default recipe adds crops, noise and JPEG per image), beside a loop that decodes its 16 files
from disk and degrades them at every step.
The default recipe is also run as it was until 2026-11-29, with EDSR's "convs" upsampler (two
convs and a pixel shuffle on 432 channels) instead of the "fused" one it trains now (one 5x5 conv
on the LR grid, the same linear map): the ratio of the two medsr columns is the step's speed-up.

    python benchmarks/bench_train.py [--steps 10]
"""

import argparse
import itertools
import random

import torch
from common import DATA, ROOT, machine, timed

from medsr.data import degrade, scan, select
from medsr.io import read_image
from medsr.models import create_discriminator, create_generator
from medsr.training import losses
from medsr.training.config import load_config
from medsr.training.trainer import Trainer


def naive_step_fn(cfg, batches):
    g = create_generator(cfg.model, scale=cfg.scale, **cfg.generator)
    adversarial = cfg.adversarial_weight > 0
    d = create_discriminator(cfg.discriminator_model or cfg.model, input_size=cfg.hr_size) if adversarial else None
    for module in d.modules() if d else []:  # stock dropout, as plain PyTorch code would have
        if isinstance(module, torch.nn.Dropout):
            module.forward = torch.nn.Dropout.forward.__get__(module)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_generator)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_discriminator) if adversarial else None
    pixel = losses.pixel_loss(cfg.pixel_loss)

    def step():
        lr, hr = next(batches)
        lr, hr = lr.contiguous(), hr.contiguous()
        sr = g(lr)
        loss = pixel(sr, hr)
        if adversarial:
            d_loss = losses.discriminator_bce(d(hr), d(sr.detach()))
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            loss = loss + cfg.adversarial_weight * losses.generator_bce(d(sr))
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()

    return step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    data = [str(DATA / "brain-mri"), str(DATA / "chest-xray")]
    files = [it.path for it in select(scan(data), "train")]
    print(f"{machine()}\n\nbatch of 16, {args.steps} timed steps each after 2 warm-up steps\n")
    print("| recipe | naive (img/s) | medsr (img/s) | speed-up, compute only | medsr sampler, one batch (s) | "
          "decoding and degrading 16 files per step (s) |\n|---|---:|---:|---:|---:|---:|")
    before = "generator={channels: 48, num_blocks: 8, clamp_margin: 0.04}"  # the default's upsampler until 2026-11-29
    rows = {"configs/paper.yaml": ("configs/paper.yaml", []),
            "configs/default.yaml, convs upsampler (before)": ("configs/default.yaml", [before]),
            "configs/default.yaml": ("configs/default.yaml", [])}
    for row, (recipe, extra) in rows.items():
        cfg = load_config(ROOT / recipe, [f"data={data}", "max_train_images=64", "max_val_images=4", "out_dir=/tmp/medsr-bench",
                                          "init_from=null", *extra])
        trainer = Trainer(cfg)
        bs = cfg.batch_size
        sampler_seconds = timed(lambda: trainer.sampler.next_batch(bs), args.steps)
        batches = [trainer.sampler.next_batch(bs) for _ in range(4)]
        trainer.sampler.next_batch = lambda _size, it=itertools.cycle(batches): next(it)
        naive = timed(naive_step_fn(cfg, itertools.cycle(batches)), args.steps)
        fast = timed(trainer.step, args.steps)
        decode = timed(lambda: [degrade.paper_pair(read_image(p).pixels, cfg.hr_size, cfg.scale) for p in random.sample(files, bs)],
                       args.steps // 2 or 1, warmup=0)
        print(f"| {row} | {bs / naive:.1f} | {bs / fast:.1f} | {naive / fast:.2f}x | {sampler_seconds:.3f} | {decode:.2f} |", flush=True)


if __name__ == "__main__":
    main()
