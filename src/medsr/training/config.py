"""A training recipe: the TrainConfig dataclass, loaded from YAML with --set overrides."""

from __future__ import annotations

import dataclasses
import math
import os
import typing
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
    max_train_images: int | None = None  # spread evenly over the split's sorted files (every class is in); mixed: volumes and slices too
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

    def __post_init__(self):
        if isinstance(self.data, (str, Path)):  # one folder, as text: a list of one (not its characters)
            self.data = [str(self.data)]

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


FIELD_TYPES = typing.get_type_hints(TrainConfig)
DEFAULT_DATA = "../shared/data"  # ${MEDSR_DATA} when the environment does not set it


# Numbers for which 0 makes no sense or divides by zero; numbers that may be 0 but not less; shares
# and rates that must also stay under 1 (a validation share of 1 leaves nothing to train on, an EMA
# decay of 1 never moves, a beta of 1 divides by zero in Adam).
POSITIVE = ("scale", "hr_size", "max_train_images", "max_val_images", "epochs", "steps_per_epoch", "batch_size",
            "time_budget_minutes", "collapse_patience", "checkpoint_every", "keep_checkpoints", "grid_images", "log_every",
            "lr_generator", "lr_discriminator", "collapse_lr_factor")
NOT_NEGATIVE = ("warmup_epochs", "collapse_retries", "pixel_weight", "teacher_weight", "perceptual_weight", "adversarial_weight")
UNDER_ONE = ("val_fraction", "test_fraction", "ema_decay")
TYPE_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "text",
              list: "a list such as [a, b]", dict: "a mapping such as {key: value}"}


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """A TrainConfig from a YAML recipe plus `key=value` overrides (values parsed as YAML;
    `generator.channels=32` sets a key inside a dict field). Every value is checked against its
    field's type (check_value); an error names the recipe or the --set option it came from."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError:
            raise MedsrError(f"{path}: recipe not found; pass a YAML file such as configs/paper.yaml") from None
        except UnicodeDecodeError:
            raise MedsrError(f"{path}: not a UTF-8 text file; save the recipe as UTF-8 YAML such as configs/paper.yaml") from None
        except yaml.YAMLError as err:
            raise MedsrError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); fix the file") from None
        if not isinstance(values, dict):
            raise MedsrError(f"{path}: a recipe must be a YAML mapping of key: value")
    origin = {key: str(path) for key in values}  # where each value came from, for the error messages
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise MedsrError(f"--set {item}: expected key=value, e.g. --set epochs=2")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise MedsrError(f"--set {item}: the value is not valid YAML ({str(err).splitlines()[0]}); "
                             f"fix it, or quote text, e.g. --set '{key}=\"{raw}\"'") from None
        head, _, sub = key.partition(".")
        if sub:
            mapping = values.setdefault(head, {})
            if not isinstance(mapping, dict):
                raise MedsrError(f"--set {item}: {head} is {mapping!r} (from {origin[head]}), not a mapping, so {key} cannot be set; "
                                 f"give {head} as a mapping, e.g. {head}: {{{sub}: {raw}}}")
            mapping[sub] = value
        else:
            values[key] = value
        origin[head] = f"--set {item}"
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = [key for key in values if key not in known]
    if unknown:
        where = ", ".join(dict.fromkeys(origin[key] for key in unknown))
        raise MedsrError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; known keys: {', '.join(sorted(known))}")
    cfg = TrainConfig(**{key: check_value(key, value, origin[key]) for key, value in values.items()})
    if cfg.val_fraction + cfg.test_fraction >= 1:
        where = ", ".join(origin[key] for key in ("val_fraction", "test_fraction") if key in origin)
        raise MedsrError(f"{where}: val_fraction + test_fraction = {cfg.val_fraction + cfg.test_fraction:g} leaves no images "
                         f"to train on; keep their sum under 1 (defaults 0.1 and 0.1)")
    _check_parts(cfg, origin)
    return cfg


def _check_parts(cfg: TrainConfig, origin: dict) -> None:
    """The options inside the recipe's mappings (generator, discriminator, augment, mix, through_plane),
    checked as the trainer will use them but before any image is read, in a MedsrError naming the
    recipe or --set option they came from. The generator and discriminator are built once to check them."""
    from medsr.data import augment, dataset, slice_profile
    from medsr.models import create_generator

    # each check, with the keys whose values it reads (for where they came from)
    checks = [(("generator", "model", "scale"), lambda: create_generator(cfg.model, scale=cfg.scale, **cfg.generator)),
              (("augment",), lambda: augment.Augment.from_dict(cfg.augment))]
    if cfg.adversarial_weight > 0 and cfg.epochs > cfg.warmup_epochs:
        checks.append((("discriminator", "discriminator_model", "model", "adversarial_weight"), lambda: _discriminator(cfg)))
    if cfg.protocol == "mixed":
        checks.append((("mix",), lambda: dataset.mix_options(cfg.mix)))
    if cfg.protocol == "through-plane":
        checks.append((("through_plane",), lambda: slice_profile.check_through_plane_options(cfg.through_plane)))
    for keys, check in checks:
        try:
            check()
        except (MedsrError, TypeError, ValueError) as err:
            where = ", ".join(dict.fromkeys(origin[k] for k in keys if k in origin)) or "the recipe's defaults"
            if not isinstance(err, MedsrError):  # a value of the wrong kind, met inside a constructor
                err = f"{keys[0]} {getattr(cfg, keys[0])} is not usable ({type(err).__name__}: {err}); fix its values"
            raise MedsrError(f"{where}: {err}") from None


def _discriminator(cfg: TrainConfig):
    from medsr.models import DISCRIMINATORS, create_discriminator

    if not cfg.discriminator_model and cfg.model not in DISCRIMINATORS:
        raise MedsrError(f"model {cfg.model} has no discriminator of its own for adversarial_weight {cfg.adversarial_weight:g}; "
                         f"name one with discriminator_model ({', '.join(DISCRIMINATORS)}), or set adversarial_weight: 0")
    return create_discriminator(cfg.discriminator_model or cfg.model, input_size=cfg.hr_size, **cfg.discriminator)


def check_value(key: str, value, where: str):
    """`value` for TrainConfig field `key`, or a MedsrError naming `where` (the recipe or --set option).
    The value must be of the field's type: a float field takes a whole number too, and number text
    such as 1e-4 (which YAML reads as text); an optional field takes null. A number must be finite;
    those in POSITIVE more than 0, those in NOT_NEGATIVE 0 or more, those in UNDER_ONE and each of
    the two betas in [0, 1). data takes one folder as text (a list of one)."""
    if key == "data":
        folders = [value] if isinstance(value, str) else value
        if not isinstance(folders, list) or not folders or not all(isinstance(f, str) and f for f in folders):
            raise MedsrError(f"{where}: data must be a folder or a list of folders, not {value!r}; "
                             f"e.g. data: [${{MEDSR_DATA}}/brain-mri, ${{MEDSR_DATA}}/chest-xray]")
        return folders
    types = typing.get_args(FIELD_TYPES[key]) or (FIELD_TYPES[key],)
    if float in types and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    default = TrainConfig.__dataclass_fields__[key].default
    hint = "" if default in (None, dataclasses.MISSING) else f" (default: {default})"
    # type(), not isinstance(): YAML's true / false are not whole numbers
    fits = (value is None and type(None) in types) or type(value) in types or (float in types and type(value) is int)
    if not fits:
        wanted = " or ".join(TYPE_WORDS[t] for t in types if t in TYPE_WORDS) + (" or null" if type(None) in types else "")
        raise MedsrError(f"{where}: {key} must be {wanted}, not {value!r}; fix the value{hint}")
    if type(value) is float and not math.isfinite(value):
        raise MedsrError(f"{where}: {key} must be a finite number, not {value}; fix the value{hint}")
    if value is not None and (key in POSITIVE and value <= 0 or key in NOT_NEGATIVE and value < 0):
        raise MedsrError(f"{where}: {key} must be {'more than 0' if key in POSITIVE else '0 or more'}, not {value}; "
                         f"fix the value{hint}")
    if key in UNDER_ONE and not 0 <= value < 1:
        raise MedsrError(f"{where}: {key} must be 0 or more and less than 1, not {value}; fix the value{hint}")
    if key == "betas" and not (len(value) == 2 and all(type(b) in (int, float) and 0 <= b < 1 for b in value)):
        raise MedsrError(f"{where}: betas must be two numbers of 0 or more and less than 1, not {value!r}; "
                         f"fix the value{hint}")
    names = _names(key)
    if names is not None and value not in names:
        raise MedsrError(f"{where}: {key} must be one of {', '.join(n for n in names if n)}, not {value!r}; fix the value{hint}")
    return value


def _names(key: str) -> tuple[str, ...] | None:
    """The names a text field takes where it is one of a few, so that a typo is said at once, not
    after the images have loaded."""
    if key == "model":
        from medsr.models import GENERATORS

        return tuple(GENERATORS)
    if key in ("pixel_loss", "gan_loss"):
        from medsr.training import losses

        return losses.PIXEL_LOSSES if key == "pixel_loss" else losses.GAN_LOSSES
    if key == "discriminator_model":
        from medsr.models import DISCRIMINATORS

        return (None, *DISCRIMINATORS)
    if key == "degradation":
        from medsr.data.dataset import DEGRADATIONS

        return DEGRADATIONS
    return {"lr_schedule": ("constant", "cosine"), "protocol": ("paper", "patch", "mnist", "mixed", "through-plane"),
            "precision": ("auto", "fp32", "bf16")}.get(key)


def expand_data_path(text: str) -> str:
    """Expand ${MEDSR_DATA} (default DEFAULT_DATA) and ~ in a data path. A path through MEDSR_DATA
    that does not exist is a MedsrError saying to set MEDSR_DATA: the default is relative to the
    current folder, so it is found only from the project root."""
    os.environ.setdefault("MEDSR_DATA", DEFAULT_DATA)
    path = os.path.expanduser(os.path.expandvars(text))
    if "MEDSR_DATA" in text and not os.path.exists(path):
        value = os.environ["MEDSR_DATA"]
        default = f", the default, relative to the current folder {os.getcwd()}" if value == DEFAULT_DATA else ""
        raise MedsrError(f"{path}: data folder not found ({text} with MEDSR_DATA={value}{default}); set the MEDSR_DATA "
                         f"environment variable to the shared data folder, e.g. export MEDSR_DATA=/path/to/shared/data")
    return path
