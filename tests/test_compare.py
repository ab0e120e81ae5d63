"""Every comparison recipe trains, and `medsr compare` runs end to end, official checkpoints included."""

import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from medsr import zoo
from medsr.models import RRDBNet
from medsr.training.config import load_config
from medsr.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml") if p.stem != "mnist-baseline")

# each architecture at toy size; the recipe's losses, discriminator, degradation and augmentation stay as they are
TINY_GENERATOR = {
    "paper": "{channels: 8, num_blocks: 1}", "srgan": "{channels: 8, num_blocks: 1}", "edsr": "{channels: 8, num_blocks: 1}",
    "esrgan": "{channels: 8, num_blocks: 1, growth: 4}", "real-esrgan": "{channels: 8, num_blocks: 1, growth: 4}",
    "swinir": "{embed_dim: 8, depths: [1], num_heads: [2], window_size: 4}",
    "resshift": "{channels: 8, channel_mult: [1, 2], steps: 2}",
}


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_trains_a_few_steps(recipe, image_folder, tmp_path):
    values = yaml.safe_load((ROOT / "configs" / f"{recipe}.yaml").read_text())
    generator = dict(values.get("generator", {}))
    tiny = yaml.safe_load(TINY_GENERATOR[values["model"]])
    overrides = [f"data=[{image_folder}]", f"out_dir={tmp_path}", "epochs=2", "steps_per_epoch=1", "warmup_epochs=1",
                 "batch_size=2", "max_val_images=2", "hr_size=48", "init_from=null", "time_budget_minutes=null",
                 "discriminator={channels: 4}" if values.get("discriminator_model", values["model"]) != "paper" else "discriminator={channels: 4, dense: 16}",
                 f"generator={ {**{k: v for k, v in generator.items() if k in ('hr_input',)}, **tiny} }".replace("'", ""),
                 "precision=fp32"]
    final = Trainer(load_config(ROOT / "configs" / f"{recipe}.yaml", overrides)).fit()
    model, meta = zoo.load(final)
    assert meta["medsr_arch"] == values["model"]
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 1, 8 * model.scale, 8 * model.scale)


def official_rrdb_checkpoint(path: Path) -> Path:
    """A random 3-channel x4 RRDBNet saved as the Real-ESRGAN releases are: {'params_ema': state_dict}."""
    torch.manual_seed(0)
    model = RRDBNet(scale=4, in_channels=3, channels=8, num_blocks=1, growth=4, input_range="unit")
    torch.save({"params_ema": model.state_dict()}, path)
    return path


def test_compare_end_to_end_with_an_official_checkpoint(image_folder, tmp_path, medsr_cli):
    run = tmp_path / "runs"
    final = Trainer(load_config(ROOT / "configs" / "default.yaml", [f"data=[{image_folder}]", f"out_dir={run}", "epochs=1",
                                                                  "steps_per_epoch=2", "hr_size=48", "batch_size=2",
                                                                  "generator={channels: 8, num_blocks: 1}", "max_val_images=2"])).fit()
    official = official_rrdb_checkpoint(tmp_path / "RealESRGAN_x4plus_like.pth")
    model, meta = zoo.load(official)
    assert meta["medsr_arch"] == "esrgan" and model.scale == 4 and "official" in meta["medsr_source"]

    out = tmp_path / "cmp"
    result = subprocess.run(medsr_cli + ["compare", "--data", str(image_folder), "--models", f"bicubic,lanczos,{final}",
                                         "--out", str(out), "--limit", "6", "--figures", "2"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    table = (out / "table.md").read_text()
    assert "| bicubic |" in table and str(final) in table and "ms per 512x512" in table
    for name in ("summary.csv", "per_image.csv", "results.json", "summary.png"):
        assert (out / name).is_file(), name
    assert len(list((out / "figures").glob("*.png"))) == 2

    # an x4 official model and x3 models cannot share one table: a one-line error, exit 2
    mixed = subprocess.run(medsr_cli + ["compare", "--data", str(image_folder), "--models", f"{final},{official}", "--out", str(out)],
                           capture_output=True, text=True, timeout=600)
    assert mixed.returncode == 2 and "x4" in mixed.stderr and "Traceback" not in mixed.stderr
    x4 = subprocess.run(medsr_cli + ["compare", "--data", str(image_folder), "--models", f"bicubic,{official}", "--out",
                                     str(tmp_path / "x4"), "--limit", "3", "--figures", "1", "--no-timing"],
                        capture_output=True, text=True, timeout=600)
    assert x4.returncode == 0, x4.stderr[-2000:]


def test_unknown_checkpoints_are_one_line_errors(tmp_path, image_folder, medsr_cli):
    image = next(image_folder.rglob("*.png"))
    garbage = tmp_path / "weights.pth"
    torch.save({"foo.weight": torch.zeros(3)}, garbage)
    truncated = tmp_path / "cut.pth"
    official_rrdb_checkpoint(tmp_path / "full.pth")
    truncated.write_bytes((tmp_path / "full.pth").read_bytes()[:500])
    for path, words in ((garbage, "official checkpoint"), (truncated, "not a readable")):
        result = subprocess.run(medsr_cli + ["upscale", str(image), "-o", str(tmp_path / "o"), "--model", str(path)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr
