"""Model registry: generators and discriminators by name, and factories that check names and scales."""

import inspect

from medsr.errors import MedsrError
from medsr.models.dcgan import DCGANDiscriminator, DCGANGenerator
from medsr.models.edsr import EDSR
from medsr.models.paper_gan import PaperDiscriminator, PaperGenerator
from medsr.models.resshift import ResShift
from medsr.models.rrdb import RRDBNet
from medsr.models.rrdb import convert_official as rrdb_from_official
from medsr.models.srresnet import SRResNet, VGGDiscriminator
from medsr.models.swinir import SwinIR
from medsr.models.swinir import convert_official as swinir_from_official
from medsr.models.through_plane import ThroughPlaneNet
from medsr.models.unet_discriminator import UNetDiscriminatorSN

# Names are what a recipe's `model:` says; ESRGAN and Real-ESRGAN share the RRDBNet generator and
# differ in their discriminators, losses and training degradations (configs/esrgan.yaml, real-esrgan.yaml).
GENERATORS = {"paper": PaperGenerator, "srgan": SRResNet, "dcgan": DCGANGenerator, "edsr": EDSR,
              "esrgan": RRDBNet, "real-esrgan": RRDBNet, "swinir": SwinIR, "resshift": ResShift,
              "through-plane": ThroughPlaneNet}
# edsr, swinir and resshift have no discriminator of their own: a GAN recipe names one (discriminator_model).
DISCRIMINATORS = {"paper": PaperDiscriminator, "srgan": VGGDiscriminator, "dcgan": DCGANDiscriminator,
                  "esrgan": VGGDiscriminator, "real-esrgan": UNetDiscriminatorSN}
# Released checkpoints of other projects that medsr can adapt to gray: name -> convert(state) -> (config, state) | None
OFFICIAL_CONVERTERS = {"esrgan": rrdb_from_official, "swinir": swinir_from_official}


def _lookup(kind: str, registry: dict, name: str, overrides: dict):
    """The class for `name`, after checking the name and the override keys (typos in configs are common)."""
    if name not in registry:
        raise MedsrError(f"unknown {kind} {name!r}; known: {', '.join(sorted(registry))}")
    cls = registry[name]
    known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise MedsrError(f"unknown option(s) {unknown} for {kind} {name!r}; known: {', '.join(known)}")
    return cls


def create_generator(name: str, **overrides):
    """Build generator `name` (a key of GENERATORS) with its defaults, replaced by `overrides`."""
    cls = _lookup("generator", GENERATORS, name, overrides)
    scale = overrides.get("scale", inspect.signature(cls.__init__).parameters["scale"].default)
    if isinstance(scale, bool) or scale not in cls.SUPPORTED_SCALES:
        raise MedsrError(f"generator {name!r} does not support scale {scale!r}; supported: {list(cls.SUPPORTED_SCALES)}")
    return cls(**overrides)


def create_discriminator(name: str, **overrides):
    """Build discriminator `name` (a key of DISCRIMINATORS) with its defaults, replaced by `overrides`."""
    return _lookup("discriminator", DISCRIMINATORS, name, overrides)(**overrides)


__all__ = ["GENERATORS", "DISCRIMINATORS", "OFFICIAL_CONVERTERS", "create_generator", "create_discriminator",
           "PaperGenerator", "PaperDiscriminator", "SRResNet", "VGGDiscriminator", "DCGANGenerator", "DCGANDiscriminator",
           "EDSR", "RRDBNet", "SwinIR", "ResShift", "UNetDiscriminatorSN", "ThroughPlaneNet"]
