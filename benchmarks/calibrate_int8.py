"""Give shipped EDSR models int8 calibration (`--precision int8`): the activations' quantization
parameters, found on TRAIN-split images, written into each model file's metadata (`medsr_int8`);
the weights are not changed.

    python benchmarks/calibrate_int8.py default default-x2 default-x4 default-gan [--images 16]

Calibration images: `--images` files spread over both data sets' train split, each as a paper-protocol
and a native-protocol LR at the model's scale, plus every 20th head-holding slice of a train T1
volume (16-bit data). Choosing the calibration (how many images, equalization, the backend) was
done on the validation split (int8_validation.py); docs/PERFORMANCE.md (bench_infer.py) reports the
test-split PSNR change. Each file also records int8's PSNR change from bf16 (fp32 on CPUs without
it) on 48 validation images per protocol: where it is within medsr.models.int8.AUTO_BUDGET_DB
(0.05 dB), `--precision auto` runs the model in int8 on CPUs with int8 units and on CPUs with AVX2
but no bf16 (medsr.hardware.cpu_runs_int8_auto).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from common import DATA, FLOAT, machine
from safetensors.torch import load_file, save_file

from medsr import zoo
from medsr.data import degrade, load_arrays, scan, select, spread
from medsr.evaluation import quality
from medsr.files import atomic_write
from medsr.inference.upscaler import Upscaler
from medsr.io.types import as_unit
from medsr.models import int8
from medsr.models.value_range import to_signed

TRAIN_VOLUME = "brain-t1-sub-01"  # not the validation (sub-08) or test (sub-09) subject of configs/default.yaml


def calibration_images(scale: int, count: int) -> list[torch.Tensor]:
    items = select(scan([str(DATA / "brain-mri"), str(DATA / "chest-xray")]), "train")
    arrays, _ = load_arrays(spread(items, count))
    images = [as_unit(array)[0] for array in arrays]
    images += [image for _, _, image, _ in quality.volume_slice_images(DATA / "nifti" / f"{TRAIN_VOLUME}.nii.gz", 20)]
    lrs = []
    for image in images:
        image = (image - image.min()) / max(float(np.ptp(image)), 1e-6)  # stretched to [0, 1], as the Upscaler does
        for protocol in ("paper", "native"):
            lr, _ = degrade.make_pair(image, protocol, scale)
            lrs.append(to_signed(torch.from_numpy(lr)[None, None]))
    return lrs


def int8_upscaler(model, calibration: dict) -> Upscaler:
    """`model` with its body in int8 by `calibration`, the rest in FLOAT, as --precision int8 runs it."""
    upscaler = Upscaler(model, model.scale, torch.device("cpu"), FLOAT, tile=0)
    upscaler.model = int8.quantized(upscaler.model, calibration)
    return upscaler


def validation_changes(model, int8_upscalers: dict[str, Upscaler], limit: int = 48) -> dict[str, dict[str, float]]:
    """Each of `int8_upscalers`' PSNR change from `model` in FLOAT, per protocol, on `limit` VALIDATION
    images of both data sets (one pass over the images for all of them)."""
    upscalers = {FLOAT: Upscaler(model, model.scale, torch.device("cpu"), FLOAT, tile=0), **int8_upscalers}
    methods = [quality.Method(name, up) for name, up in upscalers.items()]
    data = [str(DATA / "brain-mri"), str(DATA / "chest-xray")]
    changes = {name: {} for name in int8_upscalers}
    for protocol in ("paper", "native"):
        psnr = {s["method"]: s["psnr"] for s in quality.summarize(quality.evaluate(data, methods, model.scale, protocol, "val", limit))}
        for name in int8_upscalers:
            changes[name][protocol] = psnr[name] - psnr[FLOAT]
    return changes


def calibrate_file(path: Path, count: int = 16) -> tuple[int, dict[str, float]]:
    """Write int8 calibration into the model file at `path` (weights unchanged), with its
    validation-split PSNR change (which decides whether `auto` runs it); returns the number of
    calibration images and that change."""
    model, _ = zoo.load(path)
    lrs = calibration_images(model.scale, count)
    calibration = int8.calibrate(model, lrs)
    change = validation_changes(model, {"int8": int8_upscaler(model, calibration)})["int8"]
    calibration["validation_db"] = {protocol: round(db, 4) for protocol, db in change.items()}
    metadata = dict(zoo.read_metadata(path), medsr_int8=json.dumps(calibration))
    tensors = load_file(str(path))
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    path.chmod(0o644)  # safetensors writes owner-only files; a package file must be readable by all
    return len(lrs), calibration["validation_db"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="+", help="shipped EDSR models")
    parser.add_argument("--images", type=int, default=16, help="train-split files per calibration (spread over both data sets)")
    args = parser.parse_args()
    print(machine())
    for name in args.names:
        count, changes = calibrate_file(zoo.shipped_models()[name], args.images)
        within = "within" if int8.within_budget({"validation_db": changes}) else "outside"
        print(f"{name}: int8 calibration from {count} train-split LR images; PSNR change from {FLOAT} on the validation split: "
              f"paper {changes['paper']:+.3f} dB, native {changes['native']:+.3f} dB, {within} the {int8.AUTO_BUDGET_DB} dB "
              "for `auto`", flush=True)


if __name__ == "__main__":
    main()
