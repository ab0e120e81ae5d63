"""Every comparison recipe trains, and `medsr compare` runs end to end, official checkpoints included."""

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from medsr import metrics, zoo
from medsr.data import degrade, scan, select
from medsr.evaluation.quality import METRICS
from medsr.figures import GAP
from medsr.io import read_image
from medsr.models import RRDBNet
from medsr.training.config import load_config
from medsr.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
# mnist-baseline reads IDX files and through-plane NIfTI volumes (tests/test_volume.py trains that one)
RECIPES = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml") if p.stem not in ("mnist-baseline", "through-plane"))

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


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def check_comparison_outputs(out: Path, image_folder: Path, names: list[str], images: int, n_figures: int, params: int) -> None:
    """What `medsr compare` wrote says the same thing everywhere, and says it about the right images."""
    per_image, summary = read_csv(out / "per_image.csv"), read_csv(out / "summary.csv")
    results = json.loads((out / "results.json").read_text())
    num = lambda v: float("nan") if v is None else v  # strict JSON: null where a metric does not apply
    assert {k: results[k] for k in ("protocol", "split", "scale", "models")} == {"protocol": "paper", "split": "test", "scale": 3,
                                                                                  "models": names}
    # every method scored every image once, and the images are the test split's first `images`
    files = list(dict.fromkeys(r["file"] for r in per_image))
    test_files = [str(it.path) for it in select(scan(image_folder), "test")][:images]
    assert files == test_files and len(files) == images
    assert [r["method"] for r in per_image] == names * images
    assert [(r["file"], r["method"], r["label"]) for r in per_image] == [(r["file"], r["method"], r["label"]) for r in results["per_image"]]
    for row, json_row in zip(per_image, results["per_image"]):
        assert [float(row[k]) for k in METRICS] == pytest.approx([num(json_row[k]) for k in METRICS], rel=1e-12, nan_ok=True)
        assert row["label"] == Path(row["file"]).parent.name

    # one image's bicubic score, recomputed here from the file
    lr, hr = degrade.make_pair(read_image(files[0]).pixels, "paper", 3)
    bicubic = degrade.upscale_baseline(torch.from_numpy(lr)[None, None], 3, "bicubic").clamp(0, 1)
    expected = metrics.psnr(bicubic, torch.from_numpy(hr)[None, None], 3).item()
    assert float(per_image[1]["psnr"]) == pytest.approx(expected, abs=1e-4)

    # summary = per-method means of per_image, in --models order; the JSON holds the same
    assert [s["method"] for s in summary] == [s["method"] for s in results["summary"]] == names
    for s, js in zip(summary, results["summary"]):
        mine = [r for r in per_image if r["method"] == s["method"]]
        assert int(s["images"]) == js["images"] == images
        for key in METRICS:
            mean = sum(float(r[key]) for r in mine) / len(mine)
            assert float(s[key]) == pytest.approx(mean, rel=1e-9, nan_ok=True) and num(js[key]) == pytest.approx(mean, rel=1e-9, nan_ok=True), (s["method"], key)
    by_method = {s["method"]: s for s in results["summary"]}
    assert by_method[names[-1]]["parameters"] == params and by_method["bicubic"]["parameters"] == 0

    # interpolation behaves as interpolation does on smooth scan-like images: bicubic beats nearest on every image
    psnr = {(r["file"], r["method"]): float(r["psnr"]) for r in per_image}
    assert all(psnr[f, "bicubic"] > psnr[f, "nearest"] + 0.5 for f in files)
    assert by_method["lanczos"]["psnr"] > by_method["bicubic"]["psnr"] > by_method["nearest"]["psnr"]

    # table.md: one row per method, in order, whose numbers are the summary's
    lines = (out / "table.md").read_text().strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["method", "parameters", "training (min)", "PSNR (dB)", "vs bicubic (dB)", "SSIM", "MS-SSIM",
                      "fine detail (HF ratio)", "ms per 512x512"]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    assert [r["method"] for r in rows] == names
    for row in rows:
        s = by_method[row["method"]]
        assert row["PSNR (dB)"] == f"{s['psnr']:.2f}" and row["SSIM"] == f"{s['ssim']:.4f}" and row["MS-SSIM"] == f"{s['ms_ssim']:.4f}"
        assert row["vs bicubic (dB)"] == f"{s['psnr'] - by_method['bicubic']['psnr']:+.2f}"
        assert row["fine detail (HF ratio)"] == f"{s['hf_ratio']:.3f}" and float(row["ms per 512x512"]) > 0
    assert rows[1]["vs bicubic (dB)"] == "+0.00" and rows[0]["vs bicubic (dB)"].startswith("-")
    assert rows[-1]["parameters"] == f"{params / 1e6:.2f} M" and rows[0]["parameters"] == "-"

    # figures: one per picked image, columns HR + each method, rows full / zoom / |error|; the
    # summary: one row per figure, columns LR + each method + HR (tiles 220 and 160 px wide, 4 px apart)
    figures_made = sorted((out / "figures").glob("*.png"))
    assert len(figures_made) == n_figures
    assert {f.stem for f in figures_made} <= {f"{Path(f).parent.name}-{Path(f).stem}" for f in files}
    tile_h = {w: w + 22 for w in (220, 160)}  # a square tile under its 22 px caption
    for figure in figures_made:
        assert Image.open(figure).size == (5 * 220 + 4 * GAP, 3 * tile_h[220] + 2 * GAP)
    summary_png = np.asarray(Image.open(out / "summary.png").convert("L"), dtype=float)
    assert summary_png.shape == (n_figures * tile_h[160] + (n_figures - 1) * GAP, 6 * 160 + 5 * GAP)
    for col in range(6):  # no empty column: every tile shows an image
        x = col * (160 + GAP)
        assert summary_png[22 : tile_h[160], x : x + 160].std() > 5, col


def test_compare_end_to_end_with_an_official_checkpoint(image_folder, tmp_path, medsr_cli):
    run = tmp_path / "runs"
    final = Trainer(load_config(ROOT / "configs" / "default.yaml", [f"data=[{image_folder}]", f"out_dir={run}", "epochs=1",
                                                                  "steps_per_epoch=2", "hr_size=48", "batch_size=2",
                                                                  "generator={channels: 8, num_blocks: 1}", "max_val_images=2",
                                                                  "init_from=null", "mix={paper: 0.5, native: 0.5}"])).fit()
    official = official_rrdb_checkpoint(tmp_path / "RealESRGAN_x4plus_like.pth")
    model, meta = zoo.load(official)
    assert meta["medsr_arch"] == "esrgan" and model.scale == 4 and "official" in meta["medsr_source"]

    out = tmp_path / "cmp"
    names = ["nearest", "bicubic", "lanczos", str(final)]
    result = subprocess.run(medsr_cli + ["compare", "--data", str(image_folder), "--models", ",".join(names),
                                         "--out", str(out), "--limit", "6", "--figures", "2"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    check_comparison_outputs(out, image_folder, names, images=6, n_figures=2, params=sum(p.numel() for p in zoo.load(final)[0].parameters()))

    # an x4 official model and x3 models cannot share one table: a one-line error, exit 2
    mixed = subprocess.run(medsr_cli + ["compare", "--data", str(image_folder), "--models", f"{final},{official}", "--out", str(out)],
                           capture_output=True, text=True, timeout=600)
    assert mixed.returncode == 2 and "x4" in mixed.stderr and "Traceback" not in mixed.stderr
    x4 = subprocess.run(medsr_cli + ["compare", "--data", str(image_folder), "--models", f"bicubic,{official}", "--out",
                                     str(tmp_path / "x4"), "--limit", "3", "--figures", "1", "--no-timing"],
                        capture_output=True, text=True, timeout=600)
    assert x4.returncode == 0, x4.stderr[-2000:]
    # --limit spreads the scored images over the split; the figures show some of those very images
    few = subprocess.run(medsr_cli + ["compare", "--data", str(image_folder), "--models", f"bicubic,{final}", "--out",
                                      str(tmp_path / "few"), "--limit", "2", "--figures", "2", "--no-timing"],
                         capture_output=True, text=True, timeout=600)
    assert few.returncode == 0, few.stderr[-2000:]
    scored = {Path(r["file"]).stem for r in read_csv(tmp_path / "few" / "per_image.csv")}
    shown = {p.stem.split("-", 1)[1] for p in (tmp_path / "few" / "figures").glob("*.png")}
    assert len(scored) == 2 and shown == scored
    assert "nan" not in (tmp_path / "few" / "table.md").read_text()  # --no-timing: "-", not nan


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


def test_models_of_another_scale_than_the_first_are_named_without_a_scale_option():
    from medsr.errors import MedsrError
    from medsr.evaluation.compare import build_entries

    with pytest.raises(MedsrError, match=r"^model default-x2 upscales x2, not x3 as default does; compare models of one scale"):
        build_entries(["bicubic", "default", "default-x2"], "cpu", "fp32", None)
    with pytest.raises(MedsrError, match=r"model default upscales x3, not x2; drop --scale"):  # --scale 2 was given
        build_entries(["default"], "cpu", "fp32", 2)


def test_duplicate_labels_are_refused_not_merged():
    from medsr.errors import MedsrError
    from medsr.evaluation.compare import build_entries

    with pytest.raises(MedsrError, match=r"^--models names 'x' twice; name each entry once, labelling models with label=model"):
        build_entries(["bicubic", "x=default-gan", "x=default"], "cpu", "fp32", None)
    with pytest.raises(MedsrError, match=r"^--models names 'bicubic' twice"):
        build_entries(["bicubic", "default", "bicubic"], "cpu", "fp32", None)
