"""Training that cannot fail silently: the collapse guard rolls back and recovers (or gives up
clearly), Ctrl-C checkpoints and exits cleanly, and SIGKILL at random points loses at most the
work since the last checkpoint."""

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import read_log, tiny_config

from medsr.errors import MedsrError
from medsr.models.value_range import to_unit
from medsr.training.collapse import CollapseGuard
from medsr.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def healthy(**extra):
    return {"loss/g": 0.1, "sr/std": 0.4, "sr/mean": -0.2, **extra}


def test_guard_names_each_kind_of_collapse():
    guard = CollapseGuard(patience=3)
    assert guard.check(healthy()) is None
    assert "non-finite loss/g" in guard.check(healthy(**{"loss/g": float("nan")}))
    assert "non-finite loss/d" in guard.check(healthy(**{"loss/d": float("inf")}))
    assert "black" in guard.check(healthy(**{"sr/std": 0.0, "sr/mean": -1.0}))
    assert "constant" in guard.check(healthy(**{"sr/std": 0.001, "sr/mean": 0.3}))
    won = healthy(**{"d/real_prob": 0.999, "d/fake_prob": 0.001})
    assert guard.check(won) is None and guard.check(won) is None  # two steps are not a pattern yet
    assert guard.check(healthy(**{"d/real_prob": 0.8, "d/fake_prob": 0.3})) is None  # the streak breaks
    assert [guard.check(won) for _ in range(3)][-1].startswith("the discriminator won outright for 3")


def test_a_nan_collapse_is_rolled_back_and_training_recovers(image_folder, tmp_path):
    cfg = tiny_config(image_folder, tmp_path, model="edsr", adversarial_weight=0, epochs=3, warmup_epochs=0)
    trainer = Trainer(cfg)
    original = trainer.step

    def step_that_diverges_once():
        if trainer.step_count == 3 and trainer.collapses == 0:
            with torch.no_grad():
                trainer.generator.head.weight.fill_(float("nan"))  # what an exploding update leaves behind
        return original()

    trainer.step = step_that_diverges_once
    final = trainer.fit()
    events = [json.loads(line) for line in (tmp_path / "tiny" / "log.jsonl").read_text().splitlines() if "event" in line]
    assert events == [{"step": 4, "event": "collapse", "reason": "non-finite loss/g_pixel, loss/g", "rolled_back_to": 2,
                       "lr_scale": 0.5}]
    assert trainer.collapses == 1 and trainer.lr_scale == 0.5 and trainer.step_count == 6
    assert all(torch.isfinite(v).all() for v in load_file(str(final)).values())
    saved = torch.load(tmp_path / "tiny" / "checkpoints" / "step-00000006" / "state-rank0.pt", weights_only=False)
    assert saved["lr_scale"] == 0.5 and saved["collapses"] == 1  # a resumed run keeps the lowered rate


def test_output_that_stays_black_gives_up_with_a_clear_message(image_folder, tmp_path):
    cfg = tiny_config(image_folder, tmp_path, model="edsr", adversarial_weight=0, warmup_epochs=0, collapse_retries=2)
    trainer = Trainer(cfg)
    trainer.generator.forward = lambda lr: torch.full((len(lr), 1, lr.shape[-2] * 3, lr.shape[-1] * 3), -1.0, requires_grad=True)
    with pytest.raises(MedsrError, match=r"collapsed at step 1 \(generator output went black.*after 2 roll-back"):
        trainer.fit()


def train_cmd(out: Path, steps: int) -> list[str]:
    from test_cli import TINY

    return ["train", "configs/default.yaml", "--set", f"out_dir={out}", "--set", "epochs=1", "--set", f"steps_per_epoch={steps}",
            "--set", "checkpoint_every=3", "--set", "keep_checkpoints=2", *TINY]


def newest_step(run: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*[0-9]")]
    return max(steps, default=-1)


def psnr_on(model_file: Path, pairs) -> float:
    from medsr import metrics, zoo

    model, _ = zoo.load(model_file)
    lr, hr = pairs
    with torch.no_grad():
        return metrics.psnr(to_unit(model(lr)), to_unit(hr)).mean().item()


def test_sigkill_at_random_points_then_resume_matches_an_uninterrupted_run(image_folder, tmp_path, medsr_cli):
    data = ["--set", f"data=[{image_folder}]"]
    steps = 24
    whole = subprocess.run(medsr_cli + train_cmd(tmp_path / "whole", steps) + data, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]

    run = tmp_path / "killed" / "default"
    cmd = medsr_cli + train_cmd(tmp_path / "killed", steps) + data
    rng = random.Random(7)
    kills, progress = 0, -1
    while kills < 3:
        proc = subprocess.Popen(cmd + (["--resume"] if run.exists() else []), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and newest_step(run) <= progress:  # wait until it has made some progress
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))  # then kill it at a random point
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode != -signal.SIGKILL:  # finished before the kill landed
            break
        kills += 1
        assert newest_step(run) >= progress  # never lose a checkpoint
        progress = newest_step(run)
    if not (run / "model.safetensors").exists():
        done = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    assert kills >= 1
    log = read_log(run)
    assert sorted(log) == list(range(1, steps + 1))  # every step ended up done (repeated ones logged again)
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(4, 1, 48, 48, generator=g) * 2 - 1
    pairs = (torch.nn.functional.avg_pool2d(hr, 3), hr)
    assert abs(psnr_on(run / "model.safetensors", pairs) - psnr_on(tmp_path / "whole" / "default" / "model.safetensors", pairs)) < 0.1


def test_ctrl_c_writes_a_checkpoint_and_exits_cleanly(image_folder, tmp_path, medsr_cli):
    run = tmp_path / "default"
    cmd = medsr_cli + train_cmd(tmp_path, 400) + ["--set", f"data=[{image_folder}]", "--set", "checkpoint_every=1000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "log.jsonl").exists() and (run / "log.jsonl").stat().st_size > 0):
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "continue with --resume" in out + err
    step = newest_step(run)
    assert step > 0  # the checkpoint was written at the step it stopped, not only the one at step 0
    assert not (run / "model.safetensors").exists()
