"""One trainer for every recipe: warm-up on the pixel loss, then adversarial training.

Order of one step (read top to bottom in `Trainer.step`):
  1. draw an (lr, hr) batch;  2. sr = G(lr);
  3. after the warm-up: discriminator step on [hr, sr.detach()] with BCE;
  4. generator step on pixel loss (+ adversarial_weight x BCE after the warm-up).
Mixed precision is bf16 autocast (CPU with native bf16, or CUDA) with channels_last tensors.
Runs on one process, or under `torchrun` with DistributedDataParallel (gloo on CPU, nccl on GPU):
every rank draws its own batches; rank 0 validates, logs and writes checkpoints.

A checkpoint is a folder `checkpoints/step-NNNNNNNN/` holding `model.safetensors` (generator
and discriminator weights, with the rebuild record) and one `state-rankR.pt` per rank (optimisers,
step, RNG and sampler states, config). It is built under a temporary name and renamed when
complete, so a killed run never leaves a half-written checkpoint behind; `--resume` continues
from the newest complete one.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from PIL import Image
from safetensors.torch import load_file
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from medsr import hardware, metrics, zoo
from medsr.data import build_sampler, degrade
from medsr.data.augment import Augment
from medsr.errors import MedsrError
from medsr.files import atomic_write, mark_output_folder
from medsr.models import create_discriminator, create_generator
from medsr.models.value_range import to_unit
from medsr.training import losses
from medsr.training.collapse import CollapseGuard
from medsr.training.config import TrainConfig, expand_data_path

log = logging.getLogger(__name__)

# What --resume may change: where, how long and how often the run writes, and on how many images it
# validates (validation only logs), not what it learns.
RESUME_MAY_CHANGE = ("name", "out_dir", "time_budget_minutes", "checkpoint_every", "keep_checkpoints", "log_every", "grid_images",
                     "max_val_images")


def _set_requires_grad(module: torch.nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class Trainer:
    def __init__(self, cfg: TrainConfig):
        scored = cfg.hr_size - 2 * cfg.scale  # validation scores the HR crop less a border of `scale` px
        if scored < metrics.SSIM_WINDOW:  # found only when the first validation failed, after the training
            smallest = -(-(metrics.SSIM_WINDOW + 2 * cfg.scale) // cfg.scale) * cfg.scale
            raise MedsrError(f"hr_size {cfg.hr_size} leaves {scored} px to score after validation's border of {cfg.scale} px, less "
                             f"than SSIM's {metrics.SSIM_WINDOW}-px window; use hr_size {smallest} or more")
        for key, protocol in (("mix", "mixed"), ("through_plane", "through-plane")):
            if getattr(cfg, key) and cfg.protocol != protocol:
                log.warning("%s is set but protocol is %s: it is used only by protocol %s", key, cfg.protocol, protocol)
        if cfg.degradation != "bicubic" and cfg.protocol in ("mixed", "through-plane"):
            log.warning("degradation %s is set but protocol %s makes its own low-resolution inputs (%s); it is not used",
                        cfg.degradation, cfg.protocol, "mix: jpeg, noise" if cfg.protocol == "mixed" else "thick slices")
        self.cfg = cfg
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.distributed = self.world > 1
        self.device = hardware.resolve_device(cfg.device)
        if self.distributed:
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            if self.device.type == "cuda":
                self.device = torch.device("cuda", local_rank)
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.dtype = hardware.resolve_precision(cfg.precision, self.device)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"

        torch.manual_seed(cfg.seed + self.rank)
        data = [expand_data_path(d) for d in cfg.data]
        mix = dict(cfg.mix, volume_data=expand_data_path(cfg.mix["volume_data"])) if "volume_data" in cfg.mix else cfg.mix
        split = dict(val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, through_plane=cfg.through_plane, mix=mix)
        augment = Augment.from_dict(cfg.augment)
        self.sampler = build_sampler(data, "train", cfg.protocol, cfg.scale, cfg.hr_size, seed=cfg.seed + self.rank,
                                     limit=cfg.max_train_images, augment=augment, degradation=cfg.degradation, **split)
        self.val_lr, self.val_hr = None, None
        if self.rank == 0:
            val = build_sampler(data, "val", cfg.protocol, cfg.scale, cfg.hr_size, limit=cfg.max_val_images, **split)
            self.val_lr, self.val_hr = val.fixed_pairs(cfg.max_val_images)
            bicubic = degrade.upscale_baseline(to_unit(self.val_lr), cfg.scale).clamp(0, 1)
            self.val_psnr_bicubic = metrics.psnr(bicubic, to_unit(self.val_hr), cfg.scale).mean().item()
        self.steps_per_epoch = cfg.steps_per_epoch or max(1, math.ceil(len(self.sampler) / (cfg.batch_size * self.world)))
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.warmup_steps = cfg.warmup_epochs * self.steps_per_epoch

        self.generator = create_generator(cfg.model, scale=cfg.scale, **cfg.generator).to(self.device, memory_format=self.memory_format)
        if cfg.init_from:
            self._init_from(cfg.init_from, cfg.init_partial)
        if augment.cutblur and not getattr(self.generator, "hr_input", False):
            raise MedsrError(f"augment.cutblur needs a generator that takes CutBlur's HR-sized input; use model: edsr with "
                             f"generator.hr_input: true (the {cfg.model} generator does not have it)")
        self.own_loss = hasattr(self.generator, "training_loss")  # e.g. diffusion: its own objective replaces the pixel loss
        if self.own_loss and self.distributed:
            raise MedsrError(f"{cfg.model} trains with its own objective, which medsr runs on one process only; run without torchrun")
        betas = tuple(cfg.betas)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr_generator, betas=betas)
        if cfg.lr_schedule not in ("constant", "cosine"):
            raise MedsrError(f"unknown lr_schedule '{cfg.lr_schedule}'; use constant or cosine")
        self.ema = copy.deepcopy(self.generator).eval().requires_grad_(False) if cfg.ema_decay > 0 else None
        self.adversarial = cfg.adversarial_weight > 0 and cfg.epochs > cfg.warmup_epochs
        self.discriminator = self.opt_d = None
        if self.adversarial:
            name = cfg.discriminator_model or cfg.model
            self.discriminator = create_discriminator(name, input_size=cfg.hr_size, **cfg.discriminator)
            self.discriminator.to(self.device, memory_format=self.memory_format)
            self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr_discriminator, betas=betas)
        if cfg.gan_loss not in losses.GAN_LOSSES:
            raise MedsrError(f"unknown gan_loss '{cfg.gan_loss}'; use {' or '.join(losses.GAN_LOSSES)}")
        self.pixel_loss = losses.pixel_loss(cfg.pixel_loss)
        self.teacher = None
        if cfg.teacher and cfg.teacher_weight > 0:
            teacher, meta = zoo.load(cfg.teacher, self.device)
            if int(meta.get("medsr_scale", 0)) != cfg.scale or meta["medsr_arch"] == "through-plane":
                raise MedsrError(f"teacher {cfg.teacher}: a x{meta.get('medsr_scale', '?')} {meta['medsr_arch']} model cannot teach "
                                 f"this x{cfg.scale} recipe; name a model of the same scale")
            self.teacher = teacher.to(memory_format=self.memory_format).eval().requires_grad_(False)
        self.perceptual = None
        if cfg.perceptual_loss:
            self.perceptual = losses.perceptual_loss(cfg.perceptual_loss, cfg.vgg_weights, cfg.vgg_layers).to(self.device)
        self.step_count = 0
        self.guard = CollapseGuard(patience=cfg.collapse_patience)
        self.lr_scale = 1.0  # lowered at each roll-back after a collapse
        self.collapses = 0
        self.interrupted = False  # set when SIGINT ended fit() early (after a checkpoint)
        self._stop_requested = False
        self.train_seconds = 0.0  # wall time of the run (data loading and validation included), summed over resumes
        self._clock = time.monotonic()

    def _init_from(self, name: str, partial: bool) -> None:
        """Start the generator from a model's weights: all of them, or with `partial` those whose
        shapes match (EDSR's way of starting x3/x4 from a trained x2 model); the rest keep their init.
        A shallower EDSR is first deepened to this recipe's depth, computing what it did."""
        start, meta = zoo.load(name)
        if self.generator.config.get("upsampler") == "fused" and hasattr(start, "with_fused_upsampler"):
            start = start.with_fused_upsampler()  # an EDSR trained with the "convs" upsampler, as this recipe's "fused" one
        blocks = self.generator.config.get("num_blocks", 0)
        if hasattr(start, "deepened") and start.config["num_blocks"] < blocks:
            start = start.deepened(blocks)  # a deeper recipe starts as the trained model, its extra blocks identities
        own = self.generator.state_dict()
        kept = {k: v for k, v in start.state_dict().items() if k in own and own[k].shape == v.shape}
        if meta["medsr_arch"] != self.cfg.model or (len(kept) < len(own) and not partial):
            raise MedsrError(f"{meta['path']}: init_from holds a {meta['medsr_arch']} {start.config}, not this recipe's {self.cfg.model} "
                             f"{self.generator.config}; match model/generator/scale to it, or set init_partial: true")
        self.generator.load_state_dict(kept, strict=False)
        if len(kept) < len(own) and self.rank == 0:
            tqdm.write(f"init_from {name}: {len(kept)} of {len(own)} tensors loaded; fresh: {', '.join(sorted(set(own) - set(kept)))}")

    # ---- one training step -------------------------------------------------------------
    def _set_learning_rates(self) -> float:
        """The schedule is a pure function of the step, so resuming needs no scheduler state."""
        factor = self.lr_scale
        if self.cfg.lr_schedule == "cosine":
            factor *= 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * self.step_count / max(1, self.total_steps)))
        for opt, base in ((self.opt_g, self.cfg.lr_generator), (self.opt_d, self.cfg.lr_discriminator)):
            for group in opt.param_groups if opt else []:
                group["lr"] = base * factor
        return factor

    @torch.no_grad()
    def _update_ema(self) -> None:
        # warm-up: early on, average over the steps so far, so the EMA does not hold on to the
        # initial weights for ~1 / (1 - decay) steps (short and time-budgeted runs would suffer)
        decay = min(self.cfg.ema_decay, (1 + self.step_count) / (10 + self.step_count))
        for ema_p, p in zip(self.ema.parameters(), _unwrap(self.generator).parameters()):
            ema_p.lerp_(p, 1 - decay)
        for ema_b, b in zip(self.ema.buffers(), _unwrap(self.generator).buffers()):
            ema_b.copy_(b)

    def step(self) -> dict[str, float]:
        cfg = self.cfg
        lr_factor = self._set_learning_rates()
        lr, hr = self.sampler.next_batch(cfg.batch_size)
        lr = lr.to(self.device).contiguous(memory_format=self.memory_format)
        hr = hr.to(self.device).contiguous(memory_format=self.memory_format)
        adversarial = self.adversarial and self.step_count >= self.warmup_steps
        self.generator.train()
        with hardware.autocast(self.device, self.dtype):
            if self.own_loss:
                own, sr = self.generator.training_loss(lr, hr)
            else:
                sr = self.generator(lr)
        logs = {}

        if adversarial:
            self.discriminator.train()
            with hardware.autocast(self.device, self.dtype):
                logits = self.discriminator(torch.cat([hr, sr.detach()])).float()
            d_loss = losses.discriminator_gan(cfg.gan_loss, logits[: len(hr)], logits[len(hr) :])
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            logs["loss/d"] = d_loss.item()
            logs["d/real_prob"] = torch.sigmoid(logits[: len(hr)]).mean().item()
            logs["d/fake_prob"] = torch.sigmoid(logits[len(hr) :]).mean().item()

        pixel = own.float() if self.own_loss else self.pixel_loss(sr.float(), hr.float())
        g_loss = cfg.pixel_weight * pixel
        if self.teacher is not None:  # distillation: a larger model's output as a second target
            with torch.no_grad(), hardware.autocast(self.device, self.dtype):
                taught = self.teacher(lr)
            distill = self.pixel_loss(sr.float(), taught.float())
            g_loss = g_loss + cfg.teacher_weight * distill
            logs["loss/g_teacher"] = distill.item()
        if self.perceptual is not None:
            with hardware.autocast(self.device, self.dtype):
                perceptual = self.perceptual(sr, hr)
            g_loss = g_loss + cfg.perceptual_weight * perceptual
            logs["loss/g_perceptual"] = perceptual.item()
        if adversarial:
            # The discriminator is only a judge here: no gradients for its weights (saves a third
            # of its backward pass), and no DDP hooks (it is called unwrapped). It judges the same
            # real + fake batch as in its own step: batch norm on a fakes-only batch would see
            # other statistics, and a discriminator that wins its own step could then still call
            # every fake real here, which leaves the generator no adversarial signal.
            judge = _unwrap(self.discriminator)
            _set_requires_grad(judge, False)
            with hardware.autocast(self.device, self.dtype):
                logits = judge(torch.cat([hr, sr])).float()
            adv = losses.generator_gan(cfg.gan_loss, logits[: len(hr)], logits[len(hr) :])
            _set_requires_grad(judge, True)
            g_loss = g_loss + cfg.adversarial_weight * adv
            logs["loss/g_adv"] = adv.item()
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        if self.ema is not None:
            self._update_ema()
        self.step_count += 1
        logs["lr_factor"] = lr_factor
        logs["loss/g_pixel"] = pixel.item()
        logs["loss/g"] = g_loss.item()
        logs["sr/std"], logs["sr/mean"] = (v.item() for v in torch.std_mean(sr.detach().float()))
        return logs

    # ---- validation ----------------------------------------------------------------------
    def export_generator(self) -> torch.nn.Module:
        """The generator to validate and ship: the EMA copy when there is one."""
        return self.ema if self.ema is not None else _unwrap(self.generator)

    @torch.no_grad()
    def validate(self) -> tuple[dict[str, float], torch.Tensor]:
        g = self.export_generator().eval()
        outputs = []
        for start in range(0, len(self.val_lr), 16):
            lr = self.val_lr[start : start + 16].to(self.device).contiguous(memory_format=self.memory_format)
            with hardware.autocast(self.device, self.dtype):
                outputs.append(g(lr).float().cpu())
        sr = to_unit(torch.cat(outputs))
        hr = to_unit(self.val_hr)
        border = self.cfg.scale
        scores = {
            "val/psnr": metrics.psnr(sr, hr, border).mean().item(),
            "val/ssim": metrics.ssim(sr, hr, border).mean().item(),
            "val/psnr_bicubic": self.val_psnr_bicubic,
            "val/sr_mean": sr.mean().item(),
        }
        return scores, sr

    def save_grid(self, sr: torch.Tensor, epoch: int) -> Path:
        """HR / LR (nearest-upsampled) / SR rows, as in the paper's figures."""
        n = min(self.cfg.grid_images, len(sr))
        hr = to_unit(self.val_hr[:n])
        lr = degrade.upscale_baseline(to_unit(self.val_lr[:n]), self.cfg.scale, "nearest")
        rows = [torch.cat(list(batch[:, 0]), dim=1) for batch in (hr, lr, sr[:n])]
        grid = (torch.cat(rows, dim=0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        return atomic_write(self.run_dir / "grids" / f"epoch-{epoch:04d}.png", lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))

    # ---- checkpoints -----------------------------------------------------------------------
    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @staticmethod
    def _written(tmp: Path, write) -> None:
        """write(), or, where it fails (a full disk: torch and safetensors raise errors of their own for it),
        the half-written checkpoint removed and one MedsrError saying how to go on."""
        try:
            write()
        except Exception as err:
            shutil.rmtree(tmp, ignore_errors=True)
            free = shutil.disk_usage(tmp.parent).free
            reason = (f"{free / 2**20:.0f} MB free on its disk" if free < 2**28 else
                      str(err).splitlines()[-1][:160] if str(err) else type(err).__name__)
            raise MedsrError(f"{tmp.parent}: cannot write the checkpoint ({reason}); free space or fix the folder, then rerun "
                             "with --resume (it goes on from the last checkpoint)") from None

    def save_checkpoint(self) -> Path:
        final = self.ckpt_dir / f"step-{self.step_count:08d}"
        tmp = self.ckpt_dir / f"{final.name}.tmp"
        if self.rank == 0:
            for stale in self.ckpt_dir.glob("step-*.tmp"):  # this one's, and any a kill left half written
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        state = {
            "step": self.step_count,
            "train_seconds": self.elapsed(),
            "lr_scale": self.lr_scale,
            "collapses": self.collapses,
            "config": dataclasses.asdict(self.cfg),
            "world_size": self.world,
            "sampler": self.sampler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        }
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.rank == 0:
            state["opt_g"] = self.opt_g.state_dict()
            state["opt_d"] = self.opt_d.state_dict() if self.opt_d else None
        self._written(tmp, lambda: torch.save(state, tmp / f"state-rank{self.rank}.pt"))
        self._barrier()
        if self.rank == 0:
            networks = {zoo.GENERATOR_PREFIX: _unwrap(self.generator), zoo.EMA_PREFIX: self.ema,
                        zoo.DISCRIMINATOR_PREFIX: None if self.discriminator is None else _unwrap(self.discriminator)}
            self._written(tmp, lambda: zoo.save_checkpoint_model(tmp / "model.safetensors", networks, self.cfg.model,
                                                                  _unwrap(self.generator).config, self.record()))
            aside = final.with_name(f"{final.name}.old")
            if final.exists():  # this step saved again (Ctrl-C on a checkpoint step): set the first aside, never none
                shutil.rmtree(aside, ignore_errors=True)
                final.rename(aside)
            tmp.rename(final)
            shutil.rmtree(aside, ignore_errors=True)
            for old in sorted(self.ckpt_dir.glob("step-*[0-9]"))[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self._barrier()
        return final

    def elapsed(self) -> float:
        return self.train_seconds + time.monotonic() - self._clock

    def record(self) -> dict:
        """What a model file says about its training (read by `medsr models` and the model cards)."""
        return {"medsr_step": str(self.step_count), "medsr_train_seconds": f"{self.elapsed():.0f}",
                "medsr_recipe": json.dumps(dataclasses.asdict(self.cfg))}

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint. One that a kill left set aside (save_checkpoint) is put back
        first, or removed where its replacement took its name."""
        for aside in self.ckpt_dir.glob("step-*[0-9].old"):
            if aside.with_suffix("").exists():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                aside.rename(aside.with_suffix(""))
        done = [p for p in sorted(self.ckpt_dir.glob("step-*[0-9]")) if (p / "model.safetensors").is_file() and (p / "state-rank0.pt").is_file()]
        return done[-1] if done else None

    def load_checkpoint(self, path: Path) -> None:
        try:
            tensors = load_file(str(path / "model.safetensors"))
            main = torch.load(path / "state-rank0.pt", weights_only=False)
            own_file = path / f"state-rank{self.rank}.pt"
            own = torch.load(own_file, weights_only=False) if own_file.is_file() else None
            if not {"step", "opt_g", "config"} <= set(main):  # in every checkpoint medsr writes
                raise KeyError(f"{sorted({'step', 'opt_g', 'config'} - set(main))} missing")
        except Exception as err:  # safetensors, torch and pickle raise many types on a damaged file
            raise MedsrError(f"{path}: damaged checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}); "
                             "delete this folder to resume from the checkpoint before it") from None
        self._check_recipe(path, main["config"])
        for prefix, model in ((zoo.GENERATOR_PREFIX, self.generator), (zoo.DISCRIMINATOR_PREFIX, self.discriminator),
                              (zoo.EMA_PREFIX, self.ema)):
            if model is not None:
                try:
                    _unwrap(model).load_state_dict(zoo.checkpoint_part(tensors, prefix))
                except RuntimeError:
                    raise MedsrError(f"{path}: checkpoint does not match this recipe's model; resume with the recipe that wrote it") from None
        self.opt_g.load_state_dict(main["opt_g"])
        if self.opt_d is not None and main["opt_d"] is not None:
            self.opt_d.load_state_dict(main["opt_d"])
        self.step_count = main["step"]
        self.train_seconds = main.get("train_seconds", 0.0)
        self.lr_scale, self.collapses = main.get("lr_scale", 1.0), main.get("collapses", 0)
        self._clock = time.monotonic()
        if own is not None and main.get("world_size") == self.world:
            try:
                self.sampler.load_state_dict(own["sampler"])
            except MedsrError as err:
                raise MedsrError(f"{path}: {err}") from None
            torch.set_rng_state(own["rng"]["torch"])
            np.random.set_state(own["rng"]["numpy"])
            random.setstate(own["rng"]["python"])
            if "cuda" in own["rng"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(own["rng"]["cuda"], self.device)
        else:  # resumed on another number of processes: same weights, fresh data order
            torch.manual_seed(self.cfg.seed + self.rank + self.step_count)

    def _cut_log(self, log: Path) -> None:
        """Drop the lines of log.jsonl after the checkpoint resumed from (a killed run may have written
        them), so that every step is in it once."""
        if not log.is_file():
            return
        kept = []
        for line in log.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= self.step_count:
                    kept.append(line + "\n")
            except json.JSONDecodeError:  # a line cut short by the kill
                pass
        atomic_write(log, lambda tmp: tmp.write_text("".join(kept)))

    def _check_recipe(self, path: Path, then: dict) -> None:
        """Refuse to resume with a recipe that changes what the run learns: its weights so far came
        from the recipe in the checkpoint, and the model file would record only the new one."""
        now = dataclasses.asdict(self.cfg)
        changed = [key for key in now if key in then and key not in RESUME_MAY_CHANGE and then[key] != now[key]]
        if changed:
            what = "; ".join(f"{key} {then[key]!r} then, {now[key]!r} now" for key in changed)
            raise MedsrError(f"{path}: this run was started with another recipe ({what}); resume with the recipe it was "
                             "started with, or start a new run (--set name=...)")

    # ---- the loop ------------------------------------------------------------------------------
    def fit(self, resume: bool = False, stop_after: int | None = None) -> Path:
        """Train to the end of the schedule; returns the final model file.
        `stop_after` ends this invocation after that many steps in total (for tests and debugging)."""
        cfg = self.cfg
        if resume:
            latest = self.latest_checkpoint()
            if latest is None:
                raise MedsrError(f"{self.ckpt_dir}: no checkpoint to resume from; run without --resume to start")
            self.load_checkpoint(latest)
        elif self.latest_checkpoint() is not None:  # every process says so and stops, not rank 0 alone (the others then crash)
            raise MedsrError(f"{self.run_dir}: this run already has checkpoints; add --resume to continue it, or set another name (--set name=...)")
        if self.distributed:
            ddp = torch.nn.parallel.DistributedDataParallel
            self.generator = ddp(self.generator)
            if self.discriminator is not None:
                self.discriminator = ddp(self.discriminator)

        writer = None
        if self.rank == 0:
            mark_output_folder(self.run_dir)  # never read back as training data
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
            # a resumed run drops the events written after its checkpoint, and keeps the checkpoint's own step
            writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step_count + 1 if resume else None)
            if resume:
                self._cut_log(self.run_dir / "log.jsonl")
            precision = "bf16" if self.dtype else "fp32"
            tqdm.write(f"medsr train: {cfg.model} x{cfg.scale}, {len(self.sampler)} training images, {self.total_steps} steps "
                       f"({cfg.epochs} epochs x {self.steps_per_epoch}), {precision}, {self.device}, {self.world} process(es) -> {self.run_dir}")
        end = self.total_steps if stop_after is None else min(self.total_steps, stop_after)
        budget = cfg.time_budget_minutes * 60 if cfg.time_budget_minutes else math.inf
        if not resume:
            self.save_checkpoint()  # step 0: something to roll back to if the first steps collapse
        bar = tqdm(total=self.total_steps, initial=self.step_count, disable=self.rank != 0, unit="step", dynamic_ncols=True)
        log_file = (self.run_dir / "log.jsonl").open("a") if self.rank == 0 else None
        previous_handler = self._catch_sigint()
        try:
            while self.step_count < end:
                if self.elapsed() >= budget:  # the budget ends the schedule here: this is the run's last step
                    self.total_steps = end = self.step_count
                    tqdm.write(f"time budget of {cfg.time_budget_minutes} min reached after {self.step_count} steps")
                    self.save_checkpoint()
                    break
                if self._any_rank(self._stop_requested):
                    tqdm.write(f"interrupted: checkpoint {self.save_checkpoint()}; continue with --resume")
                    self.interrupted = True
                    break
                logs = self.step()
                reason = self.guard.check(logs)
                if self._any_rank(reason is not None):
                    self._roll_back(reason or "collapse seen by another process", log_file)
                    bar.n = self.step_count
                    continue
                bar.update(1)
                if self.rank == 0:
                    log_file.write(json.dumps({"step": self.step_count, **logs}) + "\n")
                    if self.step_count % cfg.log_every == 0:
                        for key, value in logs.items():
                            writer.add_scalar(key, value, self.step_count)
                        bar.set_postfix({k.split("/")[-1]: f"{v:.4f}" for k, v in logs.items() if k.startswith("loss")})
                if self.step_count % self.steps_per_epoch == 0 and self.rank == 0:
                    self._end_of_epoch(writer, self.step_count // self.steps_per_epoch)
                if self.step_count % cfg.checkpoint_every == 0 or self.step_count == end:
                    log_file and log_file.flush()
                    self.save_checkpoint()
            final = self.run_dir / "model.safetensors"
            if self.rank == 0 and self.step_count == self.total_steps and not self.interrupted:
                g = self.export_generator()
                zoo.save_model(final, g.state_dict(), cfg.model, g.config, self.record())
                tqdm.write(f"done: {final}")
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            bar.close()
            if writer:
                writer.close()
            if log_file:
                log_file.close()
            self._teardown()
        return final

    def _any_rank(self, flag: bool) -> bool:
        """True on every process when `flag` is true on any (all must take the same branch: checkpoints sync)."""
        if not self.distributed:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def _catch_sigint(self):
        """The first Ctrl-C asks the loop to checkpoint and stop after the current step; a second one aborts."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def request_stop(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            tqdm.write("medsr: stopping after this step to write a checkpoint (Ctrl-C again to abort without one)")

        return signal.signal(signal.SIGINT, request_stop)

    def _roll_back(self, reason: str, log_file) -> None:
        """After a collapse: back to the newest checkpoint, learning rates lowered; or give up."""
        latest = self.latest_checkpoint()
        collapses, lr_scale = self.collapses + 1, self.lr_scale * self.cfg.collapse_lr_factor
        if collapses > self.cfg.collapse_retries or latest is None:
            raise MedsrError(f"{self.run_dir}: training collapsed at step {self.step_count} ({reason}) after {collapses - 1} "
                             f"roll-back(s); lower lr_generator / adversarial_weight in the recipe, then --resume from {latest}")
        failed_at = self.step_count
        self.load_checkpoint(latest)
        self.collapses, self.lr_scale = collapses, lr_scale
        self.guard.reset()
        event = {"step": failed_at, "event": "collapse", "reason": reason, "rolled_back_to": self.step_count, "lr_scale": lr_scale}
        if self.rank == 0:
            log_file.write(json.dumps(event) + "\n")
            log_file.flush()
        tqdm.write(f"collapse at step {failed_at}: {reason}; rolled back to step {self.step_count}, learning rates x{lr_scale:g} "
                   f"(roll-back {collapses} of at most {self.cfg.collapse_retries})")

    def _end_of_epoch(self, writer, epoch: int) -> None:
        scores, sr = self.validate()
        for key, value in scores.items():
            writer.add_scalar(key, value, self.step_count)
        grid = self.save_grid(sr, epoch)
        tqdm.write(f"epoch {epoch}/{self.cfg.epochs}: val PSNR {scores['val/psnr']:.2f} dB "
                   f"(bicubic {scores['val/psnr_bicubic']:.2f}), SSIM {scores['val/ssim']:.4f}; grid {grid}")

    def _teardown(self) -> None:
        if self.distributed and dist.is_initialized():
            # This exact order avoided rank 0 aborting at exit with gloo (seen on this machine).
            self.generator = self.discriminator = None
            gc.collect()
            dist.barrier()
            dist.destroy_process_group()
