import json

import pytest
import torch
from safetensors import safe_open

from medsr import zoo
from medsr.errors import MedsrError
from medsr.training.config import load_config
from medsr.training.trainer import Trainer


def tiny_config(image_folder, tmp_path, **overrides):
    values = [
        f"data=[{image_folder}]", f"out_dir={tmp_path}", "name=tiny", "protocol=paper", "hr_size=48",
        "generator={channels: 8, num_blocks: 1}", "discriminator={channels: 4, dense: 16}",
        "epochs=2", "steps_per_epoch=2", "warmup_epochs=1", "batch_size=4", "checkpoint_every=2",
        "max_val_images=4", "grid_images=3", "precision=fp32", "log_every=1",
    ]
    values += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(None, values)


def read_log(run_dir):
    return {row["step"]: row for row in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())}


def test_training_writes_checkpoints_grids_logs(image_folder, tmp_path):
    cfg = tiny_config(image_folder, tmp_path)
    final = Trainer(cfg).fit()
    run = tmp_path / "tiny"
    assert final == run / "model.safetensors" and final.is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000000", "step-00000002", "step-00000004"]
    assert sorted(p.name for p in (run / "grids").iterdir()) == ["epoch-0001.png", "epoch-0002.png"]
    assert list((run / "tensorboard").iterdir())
    assert (run / ".medsr-output").is_file()  # a run folder inside a data folder is never read as training data
    log = read_log(run)
    assert "loss/d" not in log[2] and "loss/d" in log[3]  # warm-up epoch, then adversarial
    with safe_open(str(run / "checkpoints/step-00000004/model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert f.metadata()["medsr_arch"] == "paper"
    assert any(k.startswith("discriminator.") for k in keys)
    model, meta = zoo.load(run)
    assert meta["medsr_scale"] == "3"
    assert model(torch.zeros(1, 1, 10, 10)).shape == (1, 1, 30, 30)


def test_resume_gives_the_same_next_step_loss(image_folder, tmp_path):
    full = tiny_config(image_folder, tmp_path / "a")
    Trainer(full).fit()
    expected = read_log(tmp_path / "a" / "tiny")

    part = tiny_config(image_folder, tmp_path / "b")
    Trainer(part).fit(stop_after=2)
    assert not (tmp_path / "b" / "tiny" / "model.safetensors").exists()
    Trainer(part).fit(resume=True)
    got = read_log(tmp_path / "b" / "tiny")
    for step in (3, 4):
        assert got[step]["loss/g"] == pytest.approx(expected[step]["loss/g"], rel=1e-6, abs=1e-7)
        assert got[step]["loss/d"] == pytest.approx(expected[step]["loss/d"], rel=1e-6, abs=1e-7)


def test_resume_keeps_the_checkpoint_step_in_the_logs_and_every_step_once(image_folder, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(image_folder, tmp_path)
    Trainer(cfg).fit(stop_after=2)
    run = tmp_path / "tiny"
    with (run / "log.jsonl").open("a") as log:  # what a run killed after step 3 had written beyond its checkpoint
        log.write(json.dumps({"step": 3, "loss/g": 1.0}) + "\n" + '{"step": 4, "lo')  # the last line cut by the kill
    Trainer(cfg).fit(resume=True)
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 4
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("loss/g")] == [1, 2, 3, 4]  # step 2, the checkpoint's, kept


def test_resume_refuses_another_recipe_changed_data_and_damaged_checkpoints(image_folder, tmp_path):
    import shutil

    cfg = tiny_config(image_folder, tmp_path / "a")
    Trainer(cfg).fit(stop_after=2)
    with pytest.raises(MedsrError, match=r"started with another recipe \(lr_generator 0.0001 then, 0.5 now\)"):
        Trainer(tiny_config(image_folder, tmp_path / "a", lr_generator=0.5)).fit(resume=True)
    # how it writes, and on how many images it validates, may change
    Trainer(tiny_config(image_folder, tmp_path / "a", log_every=2, checkpoint_every=4, max_val_images=2)).fit(resume=True)

    fewer = tmp_path / "fewer"
    shutil.copytree(image_folder, fewer)
    part = tiny_config(fewer, tmp_path / "b")
    Trainer(part).fit(stop_after=2)
    for path in sorted((fewer / "alpha").glob("*.png"))[:10]:
        path.unlink()
    with pytest.raises(MedsrError, match=r"step-00000002: the training images changed since this checkpoint \(38 then, \d+ now\)"):
        Trainer(part).fit(resume=True)

    damaged = tmp_path / "b" / "tiny" / "checkpoints" / "step-00000002" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(MedsrError, match=r"step-00000002: damaged checkpoint .*delete this folder to resume from the checkpoint before it"):
        Trainer(part).fit(resume=True)


def test_resume_and_restart_guards(image_folder, tmp_path):
    cfg = tiny_config(image_folder, tmp_path)
    with pytest.raises(MedsrError, match="no checkpoint"):
        Trainer(cfg).fit(resume=True)
    Trainer(cfg).fit(stop_after=2)
    with pytest.raises(MedsrError, match="--resume"):
        Trainer(cfg).fit()


def test_a_half_written_checkpoint_is_ignored(image_folder, tmp_path):
    cfg = tiny_config(image_folder, tmp_path)
    Trainer(cfg).fit(stop_after=2)
    broken = tmp_path / "tiny" / "checkpoints" / "step-00000004.tmp"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"partial")
    assert Trainer(cfg).latest_checkpoint().name == "step-00000002"


def test_a_checkpoint_set_aside_by_a_kill_is_found(image_folder, tmp_path):
    """Saving a step again sets the first copy aside before the second takes its name: a kill in between leaves it aside."""
    cfg = tiny_config(image_folder, tmp_path, keep_checkpoints=1)
    Trainer(cfg).fit(stop_after=2)
    checkpoints = tmp_path / "tiny" / "checkpoints"
    (checkpoints / "step-00000002").rename(checkpoints / "step-00000002.old")
    (checkpoints / "step-00000002.tmp").mkdir()  # the second copy, half written
    assert Trainer(cfg).latest_checkpoint().name == "step-00000002"
    Trainer(cfg).fit(resume=True)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000004"]


def test_config_overrides_and_errors(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 3\ngenerator: {channels: 16}\n")
    cfg = load_config(recipe, ["generator.num_blocks=2", "lr_generator=0.01"])
    assert cfg.epochs == 3 and cfg.generator == {"channels": 16, "num_blocks": 2} and cfg.lr_generator == 0.01
    with pytest.raises(MedsrError, match="unknown key"):
        load_config(recipe, ["epoks=3"])
    with pytest.raises(MedsrError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(MedsrError, match="key=value"):
        load_config(recipe, ["epochs"])


def test_shipped_recipes_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    paper = load_config(root / "paper.yaml")
    assert (paper.model, paper.scale, paper.hr_size, paper.pixel_loss, paper.protocol) == ("paper", 3, 150, "mse", "paper")
    mnist = load_config(root / "mnist-baseline.yaml")
    assert (mnist.model, mnist.hr_size, mnist.protocol) == ("dcgan", 28, "mnist")


def test_ema_cosine_and_named_discriminator(image_folder, tmp_path):
    cfg = tiny_config(image_folder, tmp_path, model="edsr", discriminator_model="srgan", ema_decay=0.5, lr_schedule="cosine",
                      generator="{channels: 8, num_blocks: 1}", discriminator="{channels: 4}")
    trainer = Trainer(cfg)
    final = trainer.fit()
    log = read_log(tmp_path / "tiny")
    assert log[1]["lr_factor"] == pytest.approx(1.0) and log[4]["lr_factor"] < log[2]["lr_factor"] < 1.0
    with safe_open(str(tmp_path / "tiny/checkpoints/step-00000004/model.safetensors"), "pt") as f:
        ema = {k[4:]: f.get_tensor(k) for k in f.keys() if k.startswith("ema.")}
        raw = {k[10:]: f.get_tensor(k) for k in f.keys() if k.startswith("generator.")}
    assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in ema)
    shipped, _ = zoo.load(final)  # the final model is the EMA generator
    assert all(torch.equal(v, ema[k]) for k, v in shipped.state_dict().items())
    from_ckpt, _ = zoo.load(tmp_path / "tiny/checkpoints/step-00000004/model.safetensors")
    assert all(torch.equal(v, ema[k]) for k, v in from_ckpt.state_dict().items())


def test_init_from_must_match_the_recipe(image_folder, tmp_path):
    first = tiny_config(image_folder, tmp_path / "a", adversarial_weight=0, epochs=1)
    start = Trainer(first).fit()
    same = tiny_config(image_folder, tmp_path / "b", init_from=str(start), adversarial_weight=0, epochs=1)
    trainer = Trainer(same)
    loaded, _ = zoo.load(start)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in trainer.generator.state_dict().items())
    other = tiny_config(image_folder, tmp_path / "c", init_from=str(start), generator="{channels: 16, num_blocks: 1}")
    with pytest.raises(MedsrError, match="init_from"):
        Trainer(other)


def test_same_recipe_same_weights(image_folder, tmp_path):
    """The reproducibility that lets `medsr train configs/X.yaml` re-make a shipped model."""
    from safetensors.torch import load_file

    weights = []
    for run in ("a", "b"):
        cfg = tiny_config(image_folder, tmp_path / run, model="edsr", adversarial_weight=0, ema_decay=0.9,
                          lr_schedule="cosine", warmup_epochs=0, precision="auto")
        weights.append(load_file(str(Trainer(cfg).fit())))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not torch.equal(weights[0]["tail.weight"], torch.zeros_like(weights[0]["tail.weight"]))  # it did train


def test_discriminator_judges_real_and_fake_together_in_both_steps(image_folder, tmp_path):
    # batch norm must see the same real + fake mix when it judges the generator as when it learns
    trainer = Trainer(tiny_config(image_folder, tmp_path, warmup_epochs=0))
    batches = []
    trainer.discriminator.register_forward_hook(lambda mod, inp, out: batches.append(len(inp[0])))
    trainer.step()
    assert batches == [8, 8]  # batch_size 4: 4 real + 4 fake, in the discriminator's step and the generator's


def test_cutblur_and_flips_train_and_resume_exactly(image_folder, tmp_path):
    options = dict(model="edsr", generator="{channels: 8, num_blocks: 1, hr_input: true}", adversarial_weight=0,
                   augment="{hflip: 0.5, vflip: 0.5, rot90: 0.5, cutblur: 0.5}", warmup_epochs=0)
    Trainer(tiny_config(image_folder, tmp_path / "a", **options)).fit()
    part = tiny_config(image_folder, tmp_path / "b", **options)
    Trainer(part).fit(stop_after=2)
    Trainer(part).fit(resume=True)
    expected, got = read_log(tmp_path / "a" / "tiny"), read_log(tmp_path / "b" / "tiny")
    assert got[4]["loss/g"] == pytest.approx(expected[4]["loss/g"], rel=1e-6)
    with pytest.raises(MedsrError, match="hr_input"):
        Trainer(tiny_config(image_folder, tmp_path / "c", model="edsr", adversarial_weight=0, augment="{cutblur: 0.5}"))


def test_time_budget_ends_the_run_with_a_final_model(image_folder, tmp_path):
    cfg = tiny_config(image_folder, tmp_path, epochs=10000, time_budget_minutes=0.05)
    final = Trainer(cfg).fit()
    assert final.is_file()
    _, meta = zoo.load(final)
    assert 0 < int(meta["medsr_step"]) < 20000  # 3 s stop the 20000 steps the schedule asked for (a fast CPU did 200 in 3 s)


def test_ragan_with_the_weight_free_perceptual_loss(image_folder, tmp_path):
    cfg = tiny_config(image_folder, tmp_path, model="edsr", discriminator_model="esrgan", gan_loss="ragan",
                      perceptual_loss="ssim-grad", perceptual_weight=0.5, pixel_weight=0.1, warmup_epochs=0,
                      discriminator="{channels: 4}")
    Trainer(cfg).fit()
    log = read_log(tmp_path / "tiny")
    assert all(k in log[1] for k in ("loss/d", "loss/g_adv", "loss/g_perceptual"))
    row = log[4]
    assert row["loss/g"] == pytest.approx(0.1 * row["loss/g_pixel"] + 0.5 * row["loss/g_perceptual"] + 1e-3 * row["loss/g_adv"], rel=1e-4)
    with pytest.raises(MedsrError, match="gan_loss"):
        Trainer(tiny_config(image_folder, tmp_path / "x", gan_loss="wgan"))
    with pytest.raises(MedsrError, match="vgg_weights"):
        Trainer(tiny_config(image_folder, tmp_path / "y", perceptual_loss="vgg19"))


def test_distillation_adds_the_teachers_output_as_a_target(image_folder, tmp_path):
    options = dict(model="edsr", adversarial_weight=0, warmup_epochs=0, epochs=1)
    teacher = Trainer(tiny_config(image_folder, tmp_path / "t", lr_generator=0.01, **options)).fit()  # far from bicubic
    student = Trainer(tiny_config(image_folder, tmp_path / "s", init_from=str(teacher), teacher=str(teacher), teacher_weight=0.5,
                                  **options))
    logs = student.step()
    assert logs["loss/g_teacher"] < 1e-7  # it starts as the teacher, so nothing to learn from it
    fresh = Trainer(tiny_config(image_folder, tmp_path / "f", teacher=str(teacher), teacher_weight=0.5, **options))
    logs = fresh.step()
    assert logs["loss/g_teacher"] > 1e-5
    assert logs["loss/g"] == pytest.approx(logs["loss/g_pixel"] + 0.5 * logs["loss/g_teacher"], rel=1e-5)
    assert "loss/g_teacher" not in Trainer(tiny_config(image_folder, tmp_path / "n", **options)).step()
    with pytest.raises(MedsrError, match="cannot teach"):
        Trainer(tiny_config(image_folder, tmp_path / "x", teacher="default-x2", teacher_weight=0.5, **options))


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_no_half(image_folder, tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(image_folder, tmp_path))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zoo, "save_checkpoint_model", disk_full)
    with pytest.raises(MedsrError, match=r"cannot write the checkpoint \(.*\); free space or fix the folder, then rerun with --resume"):
        trainer.save_checkpoint()
    assert not list((tmp_path / "tiny" / "checkpoints").glob("*.tmp"))  # not left to fill the disk further
