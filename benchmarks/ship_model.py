"""Copy a finished run's model into the package (src/medsr/zoo/NAME.safetensors) and write its
model card (NAME.md) from the run's record and the figures in docs/results/.

    python benchmarks/ship_model.py --run runs/default --name default --command "medsr train configs/default.yaml" [--note TEXT] [--half] [--int8]

After benchmarks/make_results.py (or make_comparison.py), put the new figures into shipped cards
without shipping again:

    python benchmarks/ship_model.py --figures-only --name default [--name default-gan ...]
--half stores the weights as float16 (half the size; the comparison models are shipped so).
--int8 adds int8 calibration for `--precision int8` (benchmarks/calibrate_int8.py; EDSR models).
"""

import argparse
import json
import shutil
from pathlib import Path

import calibrate_int8
import yaml
from common import FLOAT, cpu_model
from safetensors.torch import load_file, save_file

from medsr import zoo
from medsr.models import int8

ROOT = Path(__file__).resolve().parents[1]
FIGURES = "## Test-split figures (from docs/RESULTS.md or docs/COMPARISON.md)"


def test_figures(name: str) -> list[str]:
    """One line per results table that has the model: its PSNR and SSIM against bicubic's."""
    lines = []
    results = sorted((ROOT / "docs" / "results").glob("*/results.json")) + sorted((ROOT / "runs" / "comparison").glob("*/results.json"))
    for result in results:
        data = json.loads(result.read_text())
        by_name = {s["method"]: s for s in data["summary"]}
        if name in by_name:
            mine, bicubic = by_name[name], by_name["bicubic"]
            where = ", ".join(Path(d).name for d in data["data"]) if isinstance(data["data"], list) else data["data"]
            lines.append(f"- {where}, {data['protocol']} protocol ({mine['images']} images): PSNR {mine['psnr']:.2f} dB "
                         f"({mine['psnr'] - bicubic['psnr']:+.2f} vs bicubic), SSIM {mine['ssim']:.4f} (bicubic {bicubic['ssim']:.4f})"
                         + (f", edge overshoot {100 * mine['overshoot']:.3f} % (bicubic {100 * bicubic['overshoot']:.3f} %)"
                            if "overshoot" in mine else ""))
    return lines


def refresh_figures(name: str) -> None:
    """Replace the test-split figures in a shipped model's card with those in docs/results/ now."""
    card = zoo.ZOO_DIR / f"{name}.md"
    head, rest = card.read_text().split(FIGURES + "\n", 1)
    card.write_text(head + FIGURES + "\n\n" + "\n".join(test_figures(name)) + "\n" + rest[rest.index("\n## "):])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, help="the training run to ship")
    parser.add_argument("--name", required=True, action="append", help="the shipped name (several only with --figures-only)")
    parser.add_argument("--command", help="the exact command that trained it")
    parser.add_argument("--note", default="", help="a line for the card, e.g. how the budget differs from the recipe's")
    parser.add_argument("--half", action="store_true", help="store float16 weights")
    parser.add_argument("--int8", action="store_true", help="calibrate it for --precision int8 (EDSR models)")
    parser.add_argument("--figures-only", action="store_true", help="only put the figures in docs/results/ into the named cards")
    args = parser.parse_args()
    if args.figures_only:
        for name in args.name:
            refresh_figures(name)
        return
    if args.run is None or args.command is None or len(args.name) != 1:
        parser.error("shipping a model takes --run, --command and one --name")
    args.name = args.name[0]
    source = args.run / "model.safetensors"
    meta = zoo.read_metadata(source)
    seconds = meta.get("medsr_train_seconds")
    if seconds is None:  # runs from before the trainer recorded it: config written at start, model at the end
        seconds = f"{source.stat().st_mtime - (args.run / 'config.yaml').stat().st_mtime:.0f}"
    target = zoo.ZOO_DIR / f"{args.name}.safetensors"
    if args.half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(source)).items()}
        save_file(tensors, str(target), metadata=meta)
        target.chmod(0o644)  # safetensors writes owner-only files; a package file must be readable by all
    else:
        shutil.copyfile(source, target)
    int8_images, int8_change = calibrate_int8.calibrate_file(target) if args.int8 else (0, {})
    model, _ = zoo.load(target)
    recipe = (args.run / "config.yaml").read_text()
    mix = (yaml.safe_load(recipe) or {}).get("mix") or {}
    volumes = (f"; slices of the T1 volumes in `../shared/data/nifti` (OpenNeuro, CC0) but {', '.join(mix['volume_val'] + mix['volume_test'])} "
               f"(validation: {', '.join(mix['volume_val'])}; test: {', '.join(mix['volume_test'])})") if mix.get("volumes") else ""
    lines = [f"# Model card: {args.name}", "",
             f"- architecture: `{meta['medsr_arch']}` {json.loads(meta['medsr_config'])}, "
             f"{sum(p.numel() for p in model.parameters()):,} parameters, x{meta['medsr_scale']}, 1 channel, input/output in [-1, 1]",
             "- data: `../shared/data/brain-mri` (Kaggle Brain Tumor MRI, CC0) and `../shared/data/chest-xray` (Kaggle Chest X-Ray "
             "Pneumonia, CC BY 4.0), train split only (80 % by a hash of `<class>/<file>`; val 10 % for monitoring; test 10 % never used)"
             + volumes,
             f"- trained with: `{args.command}`",
             f"- steps: {meta['medsr_step']}; wall time {int(seconds) / 60:.0f} min on the 2-core development CPU ({cpu_model()}, {FLOAT})",
             *([f"- int8: `--precision int8` runs its residual body in int8, activations calibrated on {int8_images} train-split "
                f"LR images (`python benchmarks/calibrate_int8.py`); PSNR change from {FLOAT} on the validation split: paper "
                f"{int8_change['paper']:+.3f} dB, native {int8_change['native']:+.3f} dB, so `--precision auto` runs it in "
                + ("int8 on CPUs with int8 units and on CPUs with AVX2 but no bf16; " if int8.within_budget({"validation_db": int8_change})
                   else "a float precision on every CPU; ") +
                "its speed: docs/results/int8-avx2.md (AVX2 only) and, where it lists the model, docs/PERFORMANCE.md "
                "(AVX-512, AMX; with int8's test-split PSNR change)"]
               if int8_images else []),
             *([f"- note: {args.note}"] if args.note else []),
             "", FIGURES, "", *test_figures(args.name)]
    lines += ["", "## Recipe", "", "```yaml", recipe.strip(), "```", ""]
    (zoo.ZOO_DIR / f"{args.name}.md").write_text("\n".join(lines))
    print(f"shipped {target} ({target.stat().st_size / 1e6:.1f} MB) and {args.name}.md")


if __name__ == "__main__":
    main()
