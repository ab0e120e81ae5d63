"""Model registry: generators and discriminators by name, and factories that check names and scales."""

import inspect

from medsr.errors import MedsrError
from medsr.models.dcgan import DCGANDiscriminator, DCGANGenerator
from medsr.models.edsr import EDSR
from medsr.models.paper_gan import PaperDiscriminator, PaperGenerator
from medsr.models.srresnet import SRResNet, VGGDiscriminator

GENERATORS = {"paper": PaperGenerator, "srgan": SRResNet, "dcgan": DCGANGenerator, "edsr": EDSR}
# edsr has no discriminator of its own: a GAN recipe for it names one (discriminator_model: srgan).
DISCRIMINATORS = {"paper": PaperDiscriminator, "srgan": VGGDiscriminator, "dcgan": DCGANDiscriminator}


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
    """Build generator `name` ("paper", "srgan", "dcgan", "edsr") with its defaults, replaced by `overrides`."""
    cls = _lookup("generator", GENERATORS, name, overrides)
    scale = overrides.get("scale", inspect.signature(cls.__init__).parameters["scale"].default)
    if isinstance(scale, bool) or scale not in cls.SUPPORTED_SCALES:
        raise MedsrError(f"generator {name!r} does not support scale {scale!r}; supported: {list(cls.SUPPORTED_SCALES)}")
    return cls(**overrides)


def create_discriminator(name: str, **overrides):
    """Build discriminator `name` ("paper", "srgan", "dcgan", "edsr") with its defaults, replaced by `overrides`."""
    return _lookup("discriminator", DISCRIMINATORS, name, overrides)(**overrides)


__all__ = ["GENERATORS", "DISCRIMINATORS", "create_generator", "create_discriminator",
           "PaperGenerator", "PaperDiscriminator", "SRResNet", "VGGDiscriminator",
           "DCGANGenerator", "DCGANDiscriminator", "EDSR"]
