"""A training recipe: the TrainConfig dataclass, loaded from YAML with --set overrides."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medsr.errors import MedsrError


@dataclass
class TrainConfig:
    """A training recipe. Every field can be set in the YAML file or with --set key=value."""

    name: str = "run"
    out_dir: str = "runs"  # the run folder is out_dir/name
    seed: int = 0
    # data
    data: list = field(default_factory=lambda: ["${MEDSR_DATA}/brain-mri", "${MEDSR_DATA}/chest-xray"])
    protocol: str = "paper"  # paper | patch | mnist (see medsr.data.PairSampler) | mixed | through-plane (medsr.data.slice_profile)
    scale: int = 3
    hr_size: int = 150  # HR side: the paper's 150, or the patch size
    max_train_images: int | None = None
    max_val_images: int = 64
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    degradation: str = "bicubic"  # how training LR images are made: bicubic | realesrgan (val/test stay bicubic)
    augment: dict = field(default_factory=dict)  # probabilities: {hflip, vflip, rot90, cutblur, cutblur_alpha, zero_background}
    mix: dict = field(default_factory=dict)  # protocol mixed: source shares and light degradation (medsr.data.MixedSampler)
    through_plane: dict = field(default_factory=dict)  # protocol through-plane: {val: [stems], test: [stems], factors: [lo, hi], ...}
    # model
    model: str = "paper"
    init_from: str | None = None  # start the generator from this model file / run folder / shipped name
    init_partial: bool = False  # init_from may differ in some layers' shapes (e.g. another scale): those start fresh
    generator: dict = field(default_factory=dict)  # constructor overrides, e.g. {channels: 32}
    discriminator: dict = field(default_factory=dict)
    # schedule
    epochs: int = 50
    steps_per_epoch: int | None = None  # default: one pass over the training images
    warmup_epochs: int = 0  # epochs on the pixel loss alone before the adversarial phase
    batch_size: int = 16
    # optimisation
    lr_generator: float = 1e-4
    lr_discriminator: float = 1e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    pixel_loss: str = "mse"
    pixel_weight: float = 1.0
    teacher: str | None = None  # a model (shipped name, file or run folder) whose outputs the generator also learns
    teacher_weight: float = 0.0  # weight of the pixel loss against the teacher's output on the same LR batch
    perceptual_loss: str | None = None  # vgg19 (needs vgg_weights, a local file) | ssim-grad (no weights)
    perceptual_weight: float = 1.0
    vgg_weights: str | None = None  # torchvision's vgg19 state dict (.pth or .safetensors)
    vgg_layers: list = field(default_factory=lambda: ["conv5_4"])
    adversarial_weight: float = 1e-3  # 0 turns the discriminator off entirely
    gan_loss: str = "bce"  # bce (the paper, SRGAN) | ragan (relativistic average, ESRGAN)
    discriminator_model: str | None = None  # default: the discriminator named like `model`
    lr_schedule: str = "constant"  # constant | cosine (to 1% of the start over the whole run)
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the generator, used for validation and export
    # machinery
    precision: str = "auto"  # auto | bf16 | fp32
    channels_last: bool = True
    device: str = "auto"
    time_budget_minutes: float | None = None  # end the run (with its final model) after this much training wall time
    collapse_retries: int = 3  # roll-backs after a collapse (medsr.training.collapse) before giving up
    collapse_lr_factor: float = 0.5  # learning rates are multiplied by this at each roll-back
    collapse_patience: int = 200  # steps of a discriminator winning outright that count as a collapse
    checkpoint_every: int = 500  # steps; also one at the end
    keep_checkpoints: int = 3
    grid_images: int = 6
    log_every: int = 10

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """A TrainConfig from a YAML recipe plus `key=value` overrides (values parsed as YAML;
    `generator.channels=32` sets a key inside a dict field)."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except OSError:
            raise MedsrError(f"{path}: recipe not found; pass a YAML file such as configs/paper.yaml") from None
        except yaml.YAMLError as err:
            raise MedsrError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); fix the file") from None
        if not isinstance(values, dict):
            raise MedsrError(f"{path}: a recipe must be a YAML mapping of key: value")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise MedsrError(f"--set {item}: expected key=value, e.g. --set epochs=2")
        value = yaml.safe_load(raw)
        head, _, sub = key.partition(".")
        if sub:
            values.setdefault(head, {})[sub] = value
        else:
            values[key] = value
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise MedsrError(f"{path or '--set'}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    return TrainConfig(**values)


def expand_data_path(text: str) -> str:
    """Expand ${MEDSR_DATA} (default ../shared/data) and ~ in a data path."""
    os.environ.setdefault("MEDSR_DATA", "../shared/data")
    return os.path.expanduser(os.path.expandvars(text))
