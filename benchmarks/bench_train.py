"""Training throughput (images/s) of the paper and default recipes, each beside a naive baseline.

naive = fp32, contiguous tensors, images decoded from disk and degraded every step, stock
torch.nn.Dropout, and the discriminator's weight gradients computed during the generator step
(a plain GAN loop).
medsr = the Trainer as shipped: bf16 autocast where native, channels_last, pairs decoded once,
the discriminator frozen while it judges the generator, dropout masks from uint8 random numbers.

    python benchmarks/bench_train.py [--steps 10]
"""

import argparse
import random

import torch
from common import DATA, ROOT, timed

from medsr.data import degrade, scan, select
from medsr.io import read_image
from medsr.models import create_discriminator, create_generator
from medsr.models.value_range import to_signed
from medsr.training import losses
from medsr.training.trainer import Trainer, load_config


def naive_step_fn(cfg, files):
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
        lr, hr = zip(*(degrade.paper_pair(read_image(p).pixels, cfg.hr_size, cfg.scale) for p in random.sample(files, cfg.batch_size)))
        lr, hr = to_signed(torch.cat(lr)), to_signed(torch.cat(hr))
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
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch of 16, {args.steps} timed steps each\n")
    print("| recipe | naive (img/s) | medsr (img/s) | speed-up |\n|---|---:|---:|---:|")
    for recipe in ("configs/paper.yaml", "configs/default.yaml"):
        cfg = load_config(ROOT / recipe, [f"data={data}", "max_train_images=64", "max_val_images=4", "out_dir=/tmp/medsr-bench"])
        naive = timed(naive_step_fn(cfg, files), args.steps)
        trainer = Trainer(cfg)
        fast = timed(trainer.step, args.steps)
        bs = cfg.batch_size
        print(f"| {recipe} | {bs / naive:.1f} | {bs / fast:.1f} | {naive / fast:.2f}x |")


if __name__ == "__main__":
    main()
