"""The rim inside the edge of a zero background (benchmarks/zero_background.py's measure) of any EDSR-family
models, shipped names or model files, each at its own scale and in fp32, against bicubic: on the demo's
brain and on every 16th head-holding slice of the kept-out T1 subject (test split).

    python benchmarks/rim.py default-x4 OLD.safetensors   # e.g. OLD = git show 652e9ae:src/medsr/zoo/default-x4.safetensors
"""

import argparse

import torch
from common import DATA
from make_results import TEST_VOLUME, rim_images
from zero_background import profile_table

from medsr import zoo
from medsr.evaluation import quality
from medsr.inference.upscaler import Upscaler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", help="shipped names or .safetensors files")
    args = parser.parse_args()
    images = rim_images(quality.volume_slice_images(DATA / "nifti" / f"{TEST_VOLUME}.nii.gz", 16))
    for name in args.models:
        model, _ = zoo.load(name)
        methods = [quality.Method("bicubic"), quality.Method(name, Upscaler(model, model.scale, torch.device("cpu"), "fp32", tile=0))]
        for where, group in images.items():
            table, _ = profile_table(methods, group, model.scale)
            print(f"### {name} (x{model.scale}, fp32): {where}\n", *table, "", sep="\n", flush=True)


if __name__ == "__main__":
    main()
