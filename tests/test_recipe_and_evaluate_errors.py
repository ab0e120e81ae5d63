"""User errors in `medsr train` recipes and in `medsr evaluate` give one line naming the cause and
the fix; one data folder given as text is a list of one; blank or tiny images are left out of the
evaluation's scores, and its JSON is strict."""

import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, smooth_image
from PIL import Image

from medsr.errors import MedsrError
from medsr.evaluation import diagnostic, quality, report
from medsr.training.config import DEFAULT_DATA, TrainConfig, load_config
from medsr.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, **kw)


def strict_json(path):
    """The file parsed by a JSON reader that, like strict parsers, refuses NaN / Infinity."""
    def refuse(token):
        raise ValueError(f"{path}: non-standard JSON token {token}")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


# ---- medsr train: data as one folder --------------------------------------------------------

def test_data_as_one_folder_is_a_list_of_one(image_folder, tmp_path):
    assert load_config(None, [f"data={image_folder}"]).data == [str(image_folder)]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: some/folder\n")
    assert load_config(recipe).data == ["some/folder"]
    assert TrainConfig(data="some/folder").data == ["some/folder"]
    cfg = load_config(None, [f"data={image_folder}", f"out_dir={tmp_path}", "hr_size=48", "max_val_images=4", "precision=fp32",
                             "generator={channels: 8, num_blocks: 1}", "adversarial_weight=0"])
    assert len(Trainer(cfg).sampler) > 20  # the folder's images, not a walk over its characters


def test_an_hr_size_too_small_to_validate_is_refused_before_training(image_folder, tmp_path):
    cfg = load_config(None, [f"data={image_folder}", f"out_dir={tmp_path}", "hr_size=15", "scale=3"])
    with pytest.raises(MedsrError, match=r"^hr_size 15 leaves 9 px to score .* use hr_size 18 or more$"):
        Trainer(cfg)  # it used to train every step, then fail at the first validation with no model written
    assert not (tmp_path / cfg.name).exists()


@pytest.mark.parametrize("value", ["5", "[]", "[a, 3]", "{a: b}", "null"])
def test_data_of_another_type_is_refused(value):
    with pytest.raises(MedsrError, match=r"^--set data=.*: data must be a folder or a list of folders"):
        load_config(None, [f"data={value}"])


# ---- medsr train: one-line errors naming the recipe or --set option ---------------------------

@pytest.mark.parametrize("overrides, words", [
    (["name=["], ["--set name=[", "not valid YAML", "quote"]),
    (["generator=5", "generator.channels=3"], ["--set generator.channels=3", "generator is 5", "not a mapping"]),
    (["epochs=abc"], ["--set epochs=abc", "epochs must be a whole number", "'abc'"]),
    (["epochs=true"], ["--set epochs=true", "epochs must be a whole number"]),
    (["epochs=2.5"], ["--set epochs=2.5", "epochs must be a whole number"]),
    (["lr_generator=fast"], ["--set lr_generator=fast", "lr_generator must be a number"]),
    (["channels_last=1"], ["--set channels_last=1", "must be true or false"]),
    (["betas=0.9"], ["--set betas=0.9", "betas must be a list"]),
    (["augment=[hflip]"], ["--set augment=[hflip]", "augment must be a mapping"]),
    (["batch_size=0"], ["--set batch_size=0", "batch_size must be more than 0"]),
    (["epochs=0"], ["--set epochs=0", "epochs must be more than 0"]),
    (["checkpoint_every=0"], ["--set checkpoint_every=0", "must be more than 0"]),
    (["log_every=-1"], ["--set log_every=-1", "must be more than 0"]),
    (["steps_per_epoch=0"], ["--set steps_per_epoch=0", "must be more than 0"]),
    (["time_budget_minutes=0"], ["--set time_budget_minutes=0", "must be more than 0"]),
    (["warmup_epochs=-1"], ["--set warmup_epochs=-1", "warmup_epochs must be 0 or more"]),
    (["lr_generator=-1e-4"], ["--set lr_generator=-1e-4", "lr_generator must be more than 0"]),
    (["lr_generator=.nan"], ["--set lr_generator=.nan", "lr_generator must be a finite number"]),
    (["adversarial_weight=-0.001"], ["--set adversarial_weight=-0.001", "adversarial_weight must be 0 or more"]),
    (["ema_decay=1"], ["--set ema_decay=1", "ema_decay must be 0 or more and less than 1"]),
    (["val_fraction=-0.1"], ["--set val_fraction=-0.1", "val_fraction must be 0 or more and less than 1"]),
    (["betas=[0.9, 1.0]"], ["--set betas=[0.9, 1.0]", "betas must be two numbers"]),
    (["betas=[0.9]"], ["--set betas=[0.9]", "betas must be two numbers"]),
    (["val_fraction=0.5", "test_fraction=0.5"], ["--set val_fraction=0.5, --set test_fraction=0.5", "leaves no images to train on"]),
    (["epoks=3"], ["--set epoks=3", "unknown key(s) epoks"]),
])
def test_set_errors_name_the_option(overrides, words):
    with pytest.raises(MedsrError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_values_that_fit_their_fields_are_taken():
    cfg = load_config(None, ["adversarial_weight=0", "lr_generator=1e-4", "steps_per_epoch=null", "warmup_epochs=0",
                             "time_budget_minutes=0.05", "max_train_images=8"])
    assert cfg.adversarial_weight == 0 and cfg.lr_generator == pytest.approx(1e-4)  # YAML reads 1e-4 as text
    assert cfg.steps_per_epoch is None and cfg.time_budget_minutes == 0.05 and cfg.max_train_images == 8
    for recipe in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(recipe)


def test_recipe_errors_name_the_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("generator: 32\n")
    with pytest.raises(MedsrError, match=r"^--set generator.channels=8: generator is 32 \(from .*r.yaml\), not a mapping"):
        load_config(recipe, ["generator.channels=8"])
    recipe.write_text("epochs: abc\n")
    with pytest.raises(MedsrError, match=r"r.yaml: epochs must be a whole number, not 'abc'"):
        load_config(recipe)
    recipe.write_bytes(b"name: \xff\xfe run\n")
    with pytest.raises(MedsrError, match=r"r.yaml: not a UTF-8 text file"):
        load_config(recipe)


def test_train_errors_are_one_line_in_the_cli(medsr_cli, tmp_path):
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert_one_line_error(run(medsr_cli + ["train", str(recipe)]), "latin1.yaml", "UTF-8")
    assert_one_line_error(run(medsr_cli + ["train", "configs/paper.yaml", "--set", "name=["], cwd=ROOT), "--set name=[", "YAML")


def test_missing_default_data_folder_says_to_set_medsr_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the project root: ../shared/data is not there
    monkeypatch.setenv("MEDSR_DATA", DEFAULT_DATA)
    cfg = load_config(ROOT / "configs" / "mnist-baseline.yaml", [f"out_dir={tmp_path}"])
    with pytest.raises(MedsrError, match=r"^\.\./shared/data/mnist: data folder not found .*set the MEDSR_DATA environment variable"):
        Trainer(cfg)


# ---- medsr evaluate: blank and tiny images, strict JSON, --limit --------------------------------

@pytest.fixture
def folder_with_blank(tmp_path):
    """Four scan-like PNGs, a 200x200 all-black one and a 1x1 one."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(smooth_image(rng, 90, 110)).save(folder / f"scan_{i}.png")
    Image.fromarray(np.zeros((200, 200), np.uint8)).save(folder / "black.png")
    Image.fromarray(np.full((1, 1), 77, np.uint8)).save(folder / "dot.png")
    return folder


def test_blank_images_are_left_out_of_the_scores(folder_with_blank, tmp_path, caplog):
    methods = [quality.Method(name) for name in quality.BASELINES]
    with caplog.at_level(logging.WARNING):
        rows = quality.evaluate([str(folder_with_blank)], methods, 3, "paper", "all")
    assert {Path(r["file"]).name for r in rows} == {f"scan_{i}.png" for i in range(4)}
    notes = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(notes) == 1 and "2 of 6 images left out" in notes[0] and "1 blank" in notes[0] and "1 too small" in notes[0]
    summary = quality.summarize(rows)
    assert all(np.isfinite(s[key]) for s in summary for key in ("psnr", "ssim", "ms_ssim", "hf_ratio"))
    table = quality.markdown_table(summary)
    assert "inf" not in table and "nan" not in table
    report.write_reports(rows, summary, tmp_path / "out", {"data": [str(folder_with_blank)]})
    assert len(strict_json(tmp_path / "out" / "results.json")["per_image"]) == len(rows)


def test_small_images_are_left_out_under_the_native_protocol(tmp_path, caplog):
    rng = np.random.default_rng(2)
    images = [("big", "", rng.random((40, 40), dtype=np.float32), False), ("tiny", "", rng.random((12, 12), dtype=np.float32), False)]
    with caplog.at_level(logging.WARNING):
        rows = quality.evaluate_arrays(images, [quality.Method("bicubic")], 3, "native")
    assert [r["file"] for r in rows] == ["big"]
    assert any("1 too small" in r.getMessage() for r in caplog.records)
    with pytest.raises(MedsrError, match="tiny: no image can be scored"):
        quality.evaluate_arrays(images[1:], [quality.Method("bicubic")], 3, "native")


def test_reports_write_strict_json(tmp_path):
    rows = [{"file": "a", "method": "m", "psnr": float("inf"), "ssim": float("nan"), "hf_ratio": 0.5}]
    summary = [{"method": "m", "images": 1, "psnr": float("-inf"), "ssim": float("nan"), "extra": [float("nan"), 1.0]}]
    report.write_reports(rows, summary, tmp_path, {"data": ["x"]})
    result = strict_json(tmp_path / "results.json")
    assert result["per_image"][0]["psnr"] is None and result["per_image"][0]["hf_ratio"] == 0.5
    assert result["summary"][0]["psnr"] is None and result["summary"][0]["extra"] == [None, 1.0]


def test_means_and_tables_skip_values_that_are_not_finite():
    rows = [{"method": "m", **{key: 1.0 for key in quality.METRICS}} for _ in range(2)]
    rows[0].update(psnr=float("inf"), ms_ssim=float("nan"))  # an exact copy; a metric that does not apply
    rows[1].update(ms_ssim=float("nan"))
    summary = quality.summarize(rows)
    assert summary[0]["psnr"] == 1.0 and np.isnan(summary[0]["ms_ssim"])
    table = quality.markdown_table(summary)
    assert "| m | 2 | 1.00 | " in table and "n/a" in table and "nan" not in table


def test_compare_with_a_blank_image(folder_with_blank, tmp_path):
    from medsr.evaluation.compare import compare

    result = compare([str(folder_with_blank)], ["nearest", "bicubic"], tmp_path / "out", split="all", n_figures=6, timing=False)
    assert sorted(p.name for p in result["figures"]) == [f"image-scan_{i}.png" for i in range(4)]
    assert [s["images"] for s in strict_json(tmp_path / "out" / "results.json")["summary"]] == [4, 4]


def test_evaluate_cli_with_a_blank_image(folder_with_blank, tmp_path, medsr_cli):
    out = tmp_path / "out"
    result = run(medsr_cli + ["evaluate", "--data", str(folder_with_blank), "--split", "all", "--model", "default", "--out", str(out)])
    assert result.returncode == 0, result.stderr
    assert "2 of 6 images left out of the scores" in result.stderr
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 5 and not any(word in line for line in table for word in ("inf", "nan"))
    summary = strict_json(out / "results.json")["summary"]
    assert [s["images"] for s in summary] == [4, 4, 4, 4]


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_below_one_is_refused(folder_with_blank, limit):
    with pytest.raises(MedsrError, match=rf"^--limit {limit}: the number of images must be at least 1"):
        quality.evaluate([str(folder_with_blank)], [quality.Method("bicubic")], 3, "paper", "all", limit)
    with pytest.raises(MedsrError, match=rf"^--limit {limit}: "):  # before a classifier is trained or data is read
        diagnostic.run_classify(["no/such/folder"], [], 3, "unused", limit=limit)


def test_limit_zero_in_the_cli(folder_with_blank, medsr_cli, tmp_path):
    assert_one_line_error(run(medsr_cli + ["evaluate", "--data", str(folder_with_blank), "--split", "all", "--limit", "0",
                                           "--out", str(tmp_path / "out")]), "--limit 0", "at least 1")


def test_a_file_given_as_data_is_said_to_be_a_file(folder_with_blank, medsr_cli, tmp_path):
    image = next(p for p in folder_with_blank.rglob("*") if p.is_file())
    assert_one_line_error(run(medsr_cli + ["evaluate", "--data", str(image), "--out", str(tmp_path / "o")]),
                          f"{image}: a file, where a folder of images is wanted; pass the folder that holds it")


def test_models_of_two_scales_name_the_one_that_set_it(folder_with_blank, medsr_cli, tmp_path):
    result = run(medsr_cli + ["evaluate", "--data", str(folder_with_blank), "--model", "default,default-x2", "--out", str(tmp_path / "o")])
    assert_one_line_error(result, "model is x2 but default is x3")  # no --scale was given


def test_a_mix_under_another_protocol_is_said_to_be_unused(image_folder, tmp_path, caplog):
    cfg = load_config(None, [f"data={image_folder}", f"out_dir={tmp_path}", "hr_size=48", "protocol=paper", "mix={paper: 1}"])
    Trainer(cfg)
    assert "mix is set but protocol is paper: it is used only by protocol mixed" in caplog.text


def test_a_degradation_the_mixed_protocol_does_not_use_is_said_to_be_unused(image_folder, tmp_path, caplog):
    cfg = load_config(None, [f"data={image_folder}", f"out_dir={tmp_path}", "hr_size=48", "protocol=mixed", "mix={paper: 1}",
                             "degradation=realesrgan", "max_val_images=4"])
    Trainer(cfg)
    assert "degradation realesrgan is set but protocol mixed makes its own low-resolution inputs" in caplog.text


@pytest.mark.parametrize("item, names", [("lr_schedule=cosin", "constant, cosine"), ("pixel_loss=l3", "mse, l1, charbonnier"),
                                         ("gan_loss=wgan", "bce, ragan"), ("model=edrs", "edsr"),
                                         ("protocol=bogus", "mixed, through-plane"), ("degradation=realesrgn", "bicubic, realesrgan"),
                                         ("discriminator_model=srgann", "paper, srgan"), ("precision=bf61", "auto, fp32, bf16")])
def test_a_misspelt_name_is_said_when_the_recipe_loads_naming_its_source(item, names):
    key, value = item.split("=")
    with pytest.raises(MedsrError, match=rf"^--set {item}: {key} must be one of .*{names}.*, not '{value}'"):
        load_config(None, [item])  # before any image is read, as other values are


@pytest.mark.parametrize("items, words", [
    (["generator.chanels=32"], r"^--set generator.chanels=32: unknown option\(s\) \['chanels'\] for generator 'paper'"),
    (["model=edsr", "generator.channels=abc"], r"^--set generator.channels=abc, --set model=edsr: generator .* is not usable \(TypeError"),
    (["scale=5", "model=edsr"], r"^--set model=edsr, --set scale=5: generator 'edsr' does not support scale 5"),
    (["model=edsr", "adversarial_weight=0.1"], r"^--set model=edsr, --set adversarial_weight=0.1: model edsr has no discriminator .* discriminator_model"),
    (["discriminator.width=3"], r"^--set discriminator.width=3: unknown option\(s\) \['width'\] for discriminator 'paper'"),
    (["protocol=mixed", "mix.jpg=0.5"], r"^--set mix.jpg=0.5: unknown mix option\(s\) \['jpg'\]"),
    (["protocol=mixed", "mix.paper=x"], r"^--set mix.paper=x: mix.paper must be a share of 0 or more, not 'x'"),
    (["augment.flip=0.5"], r"^--set augment.flip=0.5: unknown augment option\(s\) \['flip'\]"),
    (["protocol=through-plane", "model=through-plane", "scale=1", "adversarial_weight=0", "through_plane.factor=[2, 4]"], r"^--set through_plane.factor=\[2, 4\]: unknown through_plane"),
])
def test_options_inside_a_recipes_mappings_are_checked_when_it_loads(items, words):
    """A typo in generator, discriminator, mix, augment or through_plane is said before any image is read, naming its --set."""
    with pytest.raises(MedsrError, match=words):
        load_config(None, items)
