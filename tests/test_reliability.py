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


def train_cmd(out: Path, steps: int, checkpoint_every: int = 3) -> list[str]:
    from test_cli import TINY

    return ["train", "configs/default.yaml", "--set", f"out_dir={out}", "--set", "epochs=1", "--set", f"steps_per_epoch={steps}",
            "--set", f"checkpoint_every={checkpoint_every}", "--set", "keep_checkpoints=2", *TINY,
            # the default recipe's mixed batches with their random noise and JPEG (no volumes: the data is synthetic)
            "--set", "init_from=null", "--set", "mix={paper: 0.5, native: 0.5, jpeg: 0.5, noise: 0.5}"]


def newest_step(run: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*[0-9]")]
    return max(steps, default=-1)


def all_tensors_equal(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_training_is_deterministic_in_process(image_folder, tmp_path):
    """What makes a bit-for-bit comparison below meaningful: two identical runs give identical weights."""
    finals = [Trainer(tiny_config(image_folder, tmp_path / name, model="edsr", adversarial_weight=0, epochs=1, steps_per_epoch=6)).fit()
              for name in ("a", "b")]
    assert all_tensors_equal(*finals)


def test_three_sigkills_then_resume_give_the_uninterrupted_run_bit_for_bit(image_folder, tmp_path, medsr_cli):
    """docs/RELIABILITY.md: three SIGKILLs at seeded points spread over the run, `--resume` after each,
    and the final weights equal an uninterrupted run's exactly (the trainer is deterministic)."""
    data = ["--set", f"data=[{image_folder}]"]
    steps, every = 300, 7  # ~20 ms a step here: a kill after a checkpoint lands well before the end
    whole = subprocess.run(medsr_cli + train_cmd(tmp_path / "whole", steps, every) + data, cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]

    run = tmp_path / "killed" / "default"
    cmd = medsr_cli + train_cmd(tmp_path / "killed", steps, every) + data
    rng = random.Random(7)
    kept = []  # the newest checkpoint after each kill
    for target in (40, 130, 220):  # early, middle, late: three different points of the schedule
        proc = subprocess.Popen(cmd + (["--resume"] if run.exists() else []), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        goal = max(target, max(kept, default=-1) + 1)  # and past the previous kill's checkpoint: a new point each time
        while time.time() < deadline and newest_step(run) < goal and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.15))  # then a seeded random moment: between checkpoints or inside one
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill at step {target} landed"
        assert target <= newest_step(run) < steps and newest_step(run) >= max(kept, default=0)  # never lose a checkpoint
        kept.append(newest_step(run))
    assert len(set(kept)) == 3
    done = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    log, whole_log = read_log(run), read_log(tmp_path / "whole" / "default")
    assert sorted(log) == list(range(1, steps + 1))  # every step ended up done (repeated ones logged again)
    assert [log[s]["loss/g"] for s in log] == [whole_log[s]["loss/g"] for s in log]  # the same losses, step by step
    assert all_tensors_equal(run / "model.safetensors", tmp_path / "whole" / "default" / "model.safetensors")
    last = f"checkpoints/step-{steps:08d}/model.safetensors"  # generator, EMA and all: the same to the last bit
    assert all_tensors_equal(run / last, tmp_path / "whole" / "default" / last)
    adam, whole_adam = (torch.load(r / f"checkpoints/step-{steps:08d}/state-rank0.pt", weights_only=False)["opt_g"]["state"]
                        for r in (run, tmp_path / "whole" / "default"))
    assert adam.keys() == whole_adam.keys() and all(torch.equal(adam[i][k], whole_adam[i][k]) for i in adam for k in adam[i])


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
