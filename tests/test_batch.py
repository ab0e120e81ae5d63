"""Batch runs (medsr.inference.batch): parallel == serial, resume from the ledger, summary CSV, progress, kill -9."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medsr import zoo
from medsr.inference import batch
from medsr.inference.upscaler import load_upscaler
from medsr.io import raster
from medsr.models import create_generator


def save_tiny_model(path: Path, seed: int = 0, channels: int = 4, num_blocks: int = 1, scale: int = 3, noise: float = 0.0) -> Path:
    """A tiny EDSR; it starts as bicubic (its last conv zero) unless `noise` is added to every weight."""
    torch.manual_seed(seed)
    model = create_generator("edsr", scale=scale, channels=channels, num_blocks=num_blocks)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(noise * torch.randn_like(weight))
    zoo.save_model(path, model.state_dict(), "edsr", model.config)
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def make_inputs(folder: Path, count: int = 16, size: tuple[int, int] = (30, 40), seed: int = 0) -> Path:
    """`count` random 8-bit PNGs, every third in a subfolder (the structure is mirrored)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        path = folder / ("sub" if i % 3 == 0 else "") / f"img_{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(path)
    return folder


def jobs_for(src: Path, out: Path) -> list[batch.Job]:
    return [batch.Job(p, out / p.relative_to(src)) for p in sorted(src.rglob("*.png"))]


def run(src: Path, out: Path, model: Path, **kw) -> batch.BatchSummary:
    upscaler, _ = load_upscaler(model, precision="fp32")
    settings = {"model": str(model)}
    return batch.run_batch(jobs_for(src, out), upscaler, settings=settings, ledger=out / batch.LEDGER_NAME, **kw)


def outputs(out: Path) -> dict[Path, bytes]:
    """The image files under `out` (not the ledger, summary or .medsr-output marker), by path relative to `out`."""
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and not p.name.startswith(("medsr-", ".medsr-"))}


@pytest.mark.parametrize("streams", [1, 2, 3])
def test_parallel_equals_serial_bit_for_bit(tmp_path, tiny_model, streams):
    src = make_inputs(tmp_path / "in", 20)
    (src / "img_05.png").write_bytes(b"not a png")  # a bad file fails alone, in its place
    threads = torch.get_num_threads()
    serial = run(src, tmp_path / "serial", tiny_model, workers=0, streams=1)
    parallel = run(src, tmp_path / "parallel", tiny_model, workers=3, streams=streams)
    assert torch.get_num_threads() == threads  # the streams' share of the threads is given back
    assert serial.done == parallel.done == 19
    assert [r.job.input.name for r in parallel.failed] == ["img_05.png"]
    assert [r.job.input for r in parallel.results] == [j.input for j in jobs_for(src, tmp_path)]  # job order kept
    assert outputs(tmp_path / "serial") == outputs(tmp_path / "parallel")
    assert len(outputs(tmp_path / "serial")) == 19


def test_streams_default_to_two_on_a_multi_threaded_cpu(tiny_model):
    upscaler, _ = load_upscaler(tiny_model, precision="fp32", device="cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert batch.auto_streams(upscaler) == 2
        assert batch.auto_streams(upscaler, batch.volume_sr.ThroughPlane()) == 1  # volumes keep all threads
        torch.set_num_threads(1)
        assert batch.auto_streams(upscaler) == 1
    finally:
        torch.set_num_threads(threads)
    assert batch.auto_streams(None) == 1  # no in-plane model (through-plane alone)
    with pytest.raises(batch.MedsrError, match="--streams"):
        batch.run_batch([], upscaler, streams=0)


@pytest.mark.parametrize("streams", [1, 2])
def test_a_jpeg_model_does_the_jpeg_files_and_only_them(tmp_path, tiny_model, streams):
    """run_batch's `jpeg`: JPEG files get that model (as a run of their own would), the rest the other,
    and each ledger record holds the settings of the model that made it, so a rerun skips them all."""
    src = make_inputs(tmp_path / "in", 6)
    for path in list(src.rglob("img_0[03].png")):
        Image.open(path).save(path.with_suffix(".jpg"), quality=80)
        path.unlink()
    tiny = load_upscaler(tiny_model, precision="fp32")[0]
    jpeg = batch.BatchModel(load_upscaler(save_tiny_model(tmp_path / "other.safetensors", seed=1, noise=0.1), precision="fp32")[0],
                            "jpeg model", {"model": "other"})

    def upscale(folder: str, pattern: str, upscaler, **kw) -> dict[Path, bytes]:
        jobs = [batch.Job(p, tmp_path / folder / p.relative_to(src)) for p in sorted(src.rglob(pattern))]
        batch.run_batch(jobs, upscaler, **kw)
        return outputs(tmp_path / folder)

    mixed = dict(settings={"model": "tiny"}, ledger=tmp_path / "out" / batch.LEDGER_NAME, jpeg=jpeg, streams=streams)
    upscale("alone", "*.jpg", jpeg.upscaler)  # each file in a run of one model: the JPEG files with that model,
    alone = upscale("alone", "*.png", tiny)  # the rest with the other
    assert sorted(p.suffix for p in alone) == [".jpg", ".jpg", ".png", ".png", ".png", ".png"]
    assert upscale("out", "*.*", tiny, **mixed) == alone
    jobs = [batch.Job(p, tmp_path / "out" / p.relative_to(src)) for p in sorted(src.rglob("*.*"))]
    models = {r.job.input.suffix: r.model for r in batch.run_batch(jobs, tiny, model_name="tiny model", force=True, **mixed).results}
    assert models == {".jpg": "jpeg model", ".png": "tiny model"}  # the summary CSV's model column
    assert upscale("all-tiny", "*.*", tiny) != alone  # the two models differ
    records = [json.loads(line) for line in (tmp_path / "out" / batch.LEDGER_NAME).read_text().splitlines()]
    assert {r["output"]: r["settings"]["model"] for r in records} == {
        p.as_posix(): "other" if p.suffix == ".jpg" else "tiny" for p in alone}
    assert batch.run_batch(jobs, tiny, **mixed).skipped == 6
    x2 = load_upscaler(save_tiny_model(tmp_path / "x2.safetensors", scale=2), precision="fp32")[0]
    with pytest.raises(batch.MedsrError, match="both must have one scale"):
        batch.run_batch(jobs, tiny, jpeg=batch.BatchModel(x2, "x2", {}))


def test_rerun_skips_complete_outputs_without_rewriting_them(tmp_path, tiny_model):
    src, out = make_inputs(tmp_path / "in", 12), tmp_path / "out"
    assert run(src, out, tiny_model).done == 12
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = run(src, out, tiny_model)
    assert (again.done, again.skipped, len(again.failed)) == (0, 12, 0)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == mtimes
    forced = run(src, out, tiny_model, force=True)
    assert forced.done == 12
    assert len((out / batch.LEDGER_NAME).read_text().splitlines()) == 12  # the very same records: none booked twice
    with open(out / batch.LEDGER_NAME, "a") as fh:
        fh.write('{"output": "img_01.png", "inp')  # a line cut short by kill -9
    assert run(src, out, tiny_model).skipped == 12
    assert len((out / batch.LEDGER_NAME).read_text().splitlines()) == 12


def test_damaged_outputs_changed_inputs_and_temp_files_are_redone(tmp_path, tiny_model):
    src, out = make_inputs(tmp_path / "in", 12), tmp_path / "out"
    run(src, out, tiny_model)
    whole = outputs(out)
    names = sorted(whole)
    truncated, modified, deleted, changed_input = (out / n for n in names[:4])
    truncated.write_bytes(truncated.read_bytes()[:100])
    data = bytearray(modified.read_bytes())
    data[-20] ^= 0xFF  # same size, other bytes: only the sha256 can tell
    modified.write_bytes(bytes(data))
    deleted.unlink()
    stray = deleted.with_name(f".{deleted.name}.0123abcd.tmp")  # what a write killed mid-way leaves
    stray.write_bytes(b"partial")
    other_stray = out / ".unrelated.png.0123abcd.tmp"  # not ours: left alone
    other_stray.write_bytes(b"x")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(src / names[3])

    again = run(src, out, tiny_model)
    redone = {r.job.output for r in again.results if r.status == "done"}
    assert redone == {truncated, modified, deleted, changed_input}
    assert again.skipped == 8 and again.temp_files_removed == 1
    assert not stray.exists() and other_stray.exists()
    now = outputs(out)
    assert {n: now[n] for n in names[:3]} == {n: whole[n] for n in names[:3]}  # the same bytes as before
    assert now[names[3]] != whole[names[3]]  # from the new input

    other_model = save_tiny_model(tmp_path / "other.safetensors", seed=1)
    assert run(src, out, other_model).done == 12  # another model: all redone


def test_model_identity_is_the_weights_not_the_name(tmp_path, tiny_model):
    copy = tmp_path / "renamed.safetensors"
    copy.write_bytes(tiny_model.read_bytes())
    other = save_tiny_model(tmp_path / "other.safetensors", seed=1, noise=0.1)
    same = [batch.model_identity(p.name, {"path": str(p)}) for p in (tiny_model, copy)]
    assert same[0] == same[1] != batch.model_identity("other", {"path": str(other)})


def test_uncertainty_maps_are_part_of_complete(tmp_path, tiny_model):
    src, out = make_inputs(tmp_path / "in", 4), tmp_path / "out"
    reference, _ = load_upscaler(save_tiny_model(tmp_path / "ref.safetensors", seed=2), precision="fp32")
    assert run(src, out, tiny_model).done == 4
    with_maps = run(src, out, tiny_model, uncertainty=True, reference=reference)
    assert with_maps.done == 4  # outputs without maps are not complete for --uncertainty
    assert len(list(out.rglob("*.uncertainty.tif"))) == 4
    next(out.rglob("*.uncertainty.tif")).unlink()
    again = run(src, out, tiny_model, uncertainty=True, reference=reference)
    assert (again.done, again.skipped) == (1, 3)


def test_outputs_whose_maps_would_overwrite_others_are_refused(tmp_path, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (20, 24), dtype=np.uint8)
    for name in ("scan.png", "scan.tif", "b.png", "b.uncertainty.png"):  # scan.* share maps; b's map is the 4th's output
        Image.fromarray(pixels).save(src / name)
    jobs = [batch.Job(p, out / p.name) for p in sorted(src.iterdir())]
    upscaler, _ = load_upscaler(tiny_model, precision="fp32")
    summary = batch.run_batch(jobs, upscaler, uncertainty=True, ledger=out / batch.LEDGER_NAME)
    assert sorted(r.job.input.name for r in summary.failed) == ["b.uncertainty.png", "scan.tif"]
    assert all("was already written from" in r.reason and "--format" not in r.reason for r in summary.failed)
    same_png = [batch.Job(src / name, out / "png" / "scan.png") for name in ("scan.png", "scan.tif")]  # as --format png names them
    refused = batch.run_batch(same_png, upscaler, format="png").failed
    assert len(refused) == 1 and refused[0].reason.endswith("rename one of them or drop --format")
    again = batch.run_batch(jobs, upscaler, uncertainty=True, ledger=out / batch.LEDGER_NAME)
    assert (again.done, again.skipped) == (0, 2)  # what ran is complete: no map was overwritten after it


def test_library_reports_bad_files_and_goes_on(tmp_path, tiny_model):
    src, out = make_inputs(tmp_path / "in", 6), tmp_path / "out"
    (src / "broken.png").write_bytes(b"not a png")
    summary = run(src, out, tiny_model)
    assert summary.done == 6 and [r.job.input.name for r in summary.failed] == ["broken.png"]
    assert "broken.png" in summary.failed[0].reason
    assert "1 failed" in summary.describe(out, 3) and "broken.png" in summary.describe(out, 3)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unexpected_error_fails_its_file_and_the_batch_goes_on(tmp_path, tiny_model, monkeypatch, workers):
    src, out = make_inputs(tmp_path / "in", 6), tmp_path / "out"
    upscaler, _ = load_upscaler(tiny_model, precision="fp32")
    real = upscaler.upscale

    def upscale(pixels):  # a bug that only one image's size meets
        if pixels.shape[-2:] == (31, 40):
            raise ValueError("could not broadcast")
        return real(pixels)

    monkeypatch.setattr(upscaler, "upscale", upscale)
    Image.fromarray(np.zeros((31, 40), np.uint8)).save(src / "odd.png")
    summary = batch.run_batch(jobs_for(src, out), upscaler, workers=workers)
    assert summary.done == 6 and [r.job.input.name for r in summary.failed] == ["odd.png"]
    assert "unexpected ValueError (could not broadcast); this is a medsr bug" in summary.failed[0].reason


def test_tiff_pages_left_out_are_said_so(tmp_path, tiny_model):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    page = Image.fromarray(np.zeros((40, 40), np.uint8))
    page.save(src / "with-thumbnail.tif", save_all=True, append_images=[page.resize((10, 10))])
    page.save(src / "stack.tif", save_all=True, append_images=[page])  # equal pages: a stack, nothing left out
    upscaler, _ = load_upscaler(tiny_model, precision="fp32")
    reasons = {r.job.input.name: r.reason for r in batch.run_batch([batch.Job(p, out / p.name) for p in sorted(src.iterdir())],
                                                                   upscaler).results}
    assert reasons == {"stack.tif": "", "with-thumbnail.tif": reasons["with-thumbnail.tif"]}
    assert reasons["with-thumbnail.tif"].startswith("1 more page(s) of another size or depth left out")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_colour_inputs_are_said_to_become_gray_and_gray_saved_as_rgb_is_not(tmp_path, tiny_model, medsr_cli):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    gray = np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8)
    Image.fromarray(np.stack([gray, gray, gray], -1)).save(src / "gray-as-rgb.jpg", quality=90)  # how X-rays are often exported
    tinted = np.stack([gray, gray // 2, 255 - gray], -1).astype(np.uint8)
    Image.fromarray(tinted).save(src / "colour.png")
    result = subprocess.run(medsr_cli + ["upscale", str(src), "-o", str(out), "--model", str(tiny_model)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    reasons = {Path(r["input"]).name: r["reason"] for r in read_csv(out / batch.SUMMARY_NAME)}
    assert reasons == {"colour.png": raster.COLOUR_NOTE, "gray-as-rgb.jpg": ""}
    assert f"colour.png: {raster.COLOUR_NOTE}" in result.stderr and "gray-as-rgb.jpg: in colour" not in result.stderr


def test_progress_rate_and_eta_leave_out_files_skipped_as_complete():
    """A resumed run: 20 of 22 files were complete; after 10 s one more is done: 0.10 files/s, ETA 10 s (not 0)."""
    import io

    progress = batch.Progress(22, stream=io.StringIO())
    progress.counts, progress.start = {"done": 1, "skipped": 20, "failed": 0}, 0.0
    assert progress.line(21, 10.0) == "upscale: 21/22 files (1 done, 20 skipped, 0 failed), 0.10 files/s, ETA 00:10"
    progress.counts = {"done": 0, "skipped": 20, "failed": 0}
    assert progress.line(20, 10.0).endswith("0.00 files/s, ETA ?")


def test_cli_summary_csv_progress_and_exit_code(tmp_path, tiny_model, medsr_cli):
    src, out = make_inputs(tmp_path / "in", 12), tmp_path / "out"
    (src / "broken.png").write_bytes(b"not a png")
    result = subprocess.run(medsr_cli + ["upscale", str(src), "-o", str(out), "--model", str(tiny_model)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("upscale:")]
    assert progress and "files/s" in progress[0] and "ETA" in progress[0], result.stderr  # not a tty: plain lines
    rows = read_csv(out / batch.SUMMARY_NAME)
    assert len(rows) == 13 and set(rows[0]) == {"input", "output", "status", "reason", "seconds", "model", "series"}
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["input"].endswith("broken.png") and "not a readable image" in failed[0]["reason"]
    assert sum(r["status"] == "done" for r in rows) == 12
    assert "upscaled 12 of 13 file(s) x3" in result.stdout and "1 failed" in result.stdout

    (src / "broken.png").unlink()
    result = subprocess.run(medsr_cli + ["upscale", str(src), "-o", str(out), "--model", str(tiny_model),
                                         "--summary", str(tmp_path / "again.csv")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "12 skipped (complete)" in result.stdout
    assert {r["status"] for r in read_csv(tmp_path / "again.csv")} == {"skipped"}


def test_a_file_of_the_users_where_an_output_goes_is_kept_until_force(tmp_path, tiny_model, medsr_cli):
    src, out = make_inputs(tmp_path / "in", 3), tmp_path / "out"
    theirs = out / "img_01.png"  # the user's own file, in a folder they point -o at
    theirs.parent.mkdir()
    theirs.write_bytes(b"my notes")
    command = medsr_cli + ["upscale", str(src), "-o", str(out), "--model", str(tiny_model)]
    for _ in range(2):  # the second run too: the folder is medsr's now, the file still is not
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert result.returncode == 1 and "1 failed" in result.stdout
        assert f"{theirs} is already there and no run of medsr wrote it; move that file, choose another -o folder, or pass --force" \
            in result.stdout
        assert theirs.read_bytes() == b"my notes"
    assert subprocess.run([*command, "--force"], capture_output=True, timeout=300).returncode == 0
    assert Image.open(theirs).size == (120, 90)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "3 skipped (complete)" in result.stdout  # medsr's now: recorded, and kept


def test_the_library_keeps_a_users_file_in_a_folder_medsr_has_not_marked(tmp_path, tiny_model):
    src, out = make_inputs(tmp_path / "in", 2), tmp_path / "out"
    (out / "img_01.png").parent.mkdir()
    (out / "img_01.png").write_bytes(b"my notes")  # no .medsr-output marker: run_batch called directly, not by the CLI
    summary = run(src, out, tiny_model)
    [failed] = summary.failed
    assert summary.done == 1 and failed.job.output == out / "img_01.png" and "no run of medsr wrote it" in failed.reason
    assert (out / "img_01.png").read_bytes() == b"my notes"


def test_several_input_folders_each_land_under_their_own_name(tmp_path, tiny_model, medsr_cli):
    first, second = make_inputs(tmp_path / "ward-a", 2), make_inputs(tmp_path / "ward-b", 2, seed=1)  # the same file names
    out = tmp_path / "out"
    result = subprocess.run(medsr_cli + ["upscale", str(first), str(second), "-o", str(out), "--model", str(tiny_model)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "upscaled 4 of 4 file(s)" in result.stdout, result.stdout
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "ward-a/img_01.png", "ward-a/sub/img_00.png", "ward-b/img_01.png", "ward-b/sub/img_00.png"]
    alone = subprocess.run(medsr_cli + ["upscale", str(first), "-o", str(tmp_path / "one"), "--model", str(tiny_model)],
                           capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0 and (tmp_path / "one" / "img_01.png").is_file()  # one folder: its structure as it is


def test_sigkill_mid_batch_then_rerun_matches_an_uninterrupted_run(tmp_path, medsr_cli):
    # A model big enough that 80 images take a few seconds, so the kill lands mid-run.
    model = save_tiny_model(tmp_path / "slow.safetensors", channels=32, num_blocks=4)
    src, out = make_inputs(tmp_path / "in", 80, size=(64, 64)), tmp_path / "out"
    cmd = medsr_cli + ["upscale", str(src), "-o", str(out), "--model", str(model), "--precision", "fp32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.rglob("img_*.png"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed; make it slower"
    before = len(list(out.rglob("img_*.png")))
    assert 3 <= before < 80

    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_csv(out / batch.SUMMARY_NAME)
    skipped = sum(r["status"] == "skipped" for r in rows)
    assert 1 <= skipped <= before  # outputs written but not yet in the ledger when killed are redone
    assert skipped + sum(r["status"] == "done" for r in rows) == 80
    assert not [p for p in out.rglob(".*") if ".tmp" in p.name]  # no temp files left behind
    reference = run(src, tmp_path / "whole", model, workers=0)
    assert reference.done == 80
    assert outputs(out) == outputs(tmp_path / "whole")


def test_ctrl_c_mid_batch_writes_the_summary_and_exits_130(tmp_path, medsr_cli):
    model = save_tiny_model(tmp_path / "slow.safetensors", channels=32, num_blocks=4)
    src, out = make_inputs(tmp_path / "in", 200, size=(64, 64)), tmp_path / "out"  # several seconds of work
    proc = subprocess.Popen(medsr_cli + ["upscale", str(src), "-o", str(out), "--model", str(model), "--precision", "fp32"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(out.rglob("img_*.png"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    rows = read_csv(out / batch.SUMMARY_NAME)
    statuses = [r["status"] for r in rows]
    assert len(rows) == 200 and "not done" in statuses and statuses.count("done") >= 3
    assert "interrupted" in stdout and "Traceback" not in stderr
    ledger = [json.loads(line) for line in (out / batch.LEDGER_NAME).read_text().splitlines()]
    assert len(ledger) == statuses.count("done")  # every finished output was recorded, so a rerun resumes


class HeldUpscaler:
    """x2 by repeating pixels; an image `held` rows tall waits for `release` (a slow file), up to 10 s."""

    scale = 2

    def __init__(self, held: set[int]):
        self.held, self.release, self.holding = held, threading.Event(), []

    def upscale(self, pixels):
        if pixels.shape[-2] in self.held:
            self.holding.append(pixels.shape[-2])  # list.append: thread-safe
            self.release.wait(10)
        return np.repeat(np.repeat(pixels, 2, -2), 2, -1)


def test_ctrl_c_says_so_at_once_and_ctrl_c_again_stops_without_waiting(tmp_path, monkeypatch):
    """The first Ctrl-C says at once that the files under way will finish; the second stops waiting
    for them and still returns the summary, with the file that finished behind them recorded."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("Ctrl-C is delivered to the main thread")
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name, rows in [("a", 20), ("b", 21), ("c", 22), ("d", 23)]:  # b and d are slow: held until released
        Image.fromarray(np.full((rows, 30), 100, np.uint8)).save(src / f"{name}.png")
    jobs = [batch.Job(p, out / p.name) for p in sorted(src.iterdir())]
    upscaler = HeldUpscaler(held={21, 23})
    said = threading.Event()

    class Stderr(io.StringIO):
        def write(self, text: str) -> int:
            written = super().write(text)
            if "Ctrl-C again" in self.getvalue():
                said.set()
            return written

    stderr = Stderr()
    monkeypatch.setattr(sys, "stderr", stderr)
    pressed, returned = [], threading.Event()

    def ctrl_c() -> None:
        if not returned.is_set():
            pressed.append(time.monotonic())
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def press_twice() -> None:
        deadline = time.monotonic() + 10
        while not (len(upscaler.holding) == 2 and (out / "c.png").exists()) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # c is written (and hashed) behind b, which holds it back from the report
        ctrl_c()
        said.wait(5)
        ctrl_c()

    presser = threading.Thread(target=press_twice)
    presser.start()
    try:
        summary = batch.run_batch(jobs, upscaler, workers=1, streams=3, ledger=out / batch.LEDGER_NAME)
    except KeyboardInterrupt:
        pytest.fail(f"the second Ctrl-C escaped run_batch (no summary); stderr: {stderr.getvalue()!r}")
    finally:
        returned.set()
        end, left = time.monotonic(), sorted(path.name for path in out.glob("*.png"))
        upscaler.release.set()
        presser.join(10)
        for thread in threading.enumerate():  # the jobs it left finish now, so none runs when pytest exits
            if thread.name.startswith("medsr-"):
                thread.join(10)
    assert len(pressed) == 2 and left == ["a.png", "c.png"]  # b and d, still held, wrote no output
    assert said.is_set() and "medsr: stopping after the 2 file(s) under way (Ctrl-C again to stop now); rerun to resume" in stderr.getvalue()
    assert end - pressed[1] < 2, "the second Ctrl-C waited for the files under way"
    assert summary.interrupted
    assert [(r.job.input.name, r.status) for r in summary.results] == [
        ("a.png", "done"), ("b.png", "not done"), ("c.png", "done"), ("d.png", "not done")]
    ledger = [json.loads(line)["output"] for line in (out / batch.LEDGER_NAME).read_text().splitlines()]
    assert sorted(ledger) == ["a.png", "c.png"]  # c, finished behind b, is recorded: a rerun skips it
    assert "2 not done" in summary.describe(out, 2)


def test_a_volume_to_a_one_image_format_fails_before_the_model_runs(tmp_path, tiny_model):
    """A NIfTI volume to PNG (or to DICOM) cannot be written: said before the volume's minutes of upscaling, not after."""
    import nibabel as nib

    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 16, 6)).astype(np.float32), np.diag([1.0, 1.0, 4.0, 1.0])),
             tmp_path / "in" / "vol.nii.gz")
    upscaler, _ = load_upscaler(tiny_model, precision="fp32")
    calls = []
    upscale = upscaler.upscale
    upscaler.upscale = lambda pixels: calls.append(pixels.shape) or upscale(pixels)
    for fmt, words in (("png", "use --format tiff or nii"), ("dcm", "use --format nii or tiff")):
        job = batch.Job(tmp_path / "in" / "vol.nii.gz", tmp_path / "out" / f"vol.{fmt}")
        summary = batch.run_batch([job], upscaler, format=fmt, settings={}, ledger=None)
        assert summary.results[0].status == "failed" and words in summary.results[0].reason, summary.results[0].reason
    assert calls == []


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_writes(tmp_path, tiny_model, medsr_cli):
    """It would remove the first run's temporary files (its outputs failed) and redo its work."""
    from medsr.files import output_folder_lock

    src = make_inputs(tmp_path / "in", 2)
    command = [*medsr_cli, "upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_model), "--tile", "0"]
    with output_folder_lock(tmp_path / "out"):
        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode != 0 and "another medsr run is writing into this folder" in second.stderr
    assert second.stderr.count("\n") == 1 and not outputs(tmp_path / "out")
    with output_folder_lock(tmp_path / "out"):  # refused before the model loads: a model file that is not there is not reached
        early = subprocess.run([*command[:-4], "--model", str(tmp_path / "missing.safetensors")], capture_output=True, text=True)
    assert "another medsr run is writing into this folder" in early.stderr and "missing" not in early.stderr
    assert subprocess.run(command, capture_output=True, text=True, timeout=300).returncode == 0  # free again


def test_a_ledger_that_cannot_be_written_fails_its_jobs_and_the_run_goes_on(tmp_path, tiny_model, monkeypatch):
    src = make_inputs(tmp_path / "in", 4)

    def full(self, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(batch.Ledger, "append", full)
    summary = run(src, tmp_path / "out", tiny_model, workers=0, streams=1)
    assert [r.status for r in summary.results] == ["failed"] * 4  # each output written, none recorded: a rerun redoes them
    assert all("resume ledger" in r.reason and "No space left" in r.reason for r in summary.results)
    assert len(outputs(tmp_path / "out")) == 4


def test_a_ledger_cut_before_its_last_newline_keeps_every_record(tmp_path, tiny_model):
    src = make_inputs(tmp_path / "in", 4)
    run(src, tmp_path / "out", tiny_model)
    ledger = tmp_path / "out" / batch.LEDGER_NAME
    ledger.write_bytes(ledger.read_bytes()[:-1])  # the last line loses its newline
    (src / "img_01.png").touch()  # redone, so its record is appended after the cut line
    assert run(src, tmp_path / "out", tiny_model).done == 1
    assert run(src, tmp_path / "out", tiny_model).done == 0  # the next record did not spoil the cut one


def test_a_folder_in_the_ledgers_place_is_one_line(tmp_path, tiny_model):
    (tmp_path / "out" / batch.LEDGER_NAME).mkdir(parents=True)
    with pytest.raises(batch.MedsrError, match="the resume ledger's name is taken by a folder"):
        run(make_inputs(tmp_path / "in", 1), tmp_path / "out", tiny_model)


def test_dicom_files_named_by_their_uid_keep_their_whole_name(tmp_path, medsr_cli):
    """PACS exports name files 1.2.840....5: the last number is not an extension to replace."""
    from test_io import make_dicom

    source = tmp_path / "pacs"
    source.mkdir()
    names = ["1.2.840.113619.2.55.3.1234.5", "1.2.840.113619.2.55.3.1234.6"]
    for k, name in enumerate(names):
        make_dicom(source / name, np.full((12, 16), 300 + 100 * k, np.uint16))
    result = subprocess.run([*medsr_cli, "upscale", str(source), "-o", str(tmp_path / "out"), "--format", "png", "--uncertainty",
                             "--tile", "0"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(("medsr-", ".")))
    assert written == sorted(f"{name}{end}" for name in names for end in (".png", ".uncertainty.png", ".uncertainty.tif"))


def test_names_near_the_file_systems_limit(tmp_path, medsr_cli):
    """A legal 249-byte name is written (its temp file is named by a hash, which a rerun cleans up);
    one whose uncertainty map's name would pass 255 bytes is refused in one line before any work."""
    from medsr.files import atomic_write, temp_stem

    long = "E" * 245 + ".png"
    atomic_write(tmp_path / long, lambda tmp: tmp.write_bytes(b"x"))
    assert (tmp_path / long).read_bytes() == b"x"
    left = tmp_path / f".{temp_stem(long)}.0123abcd.tmp"  # what a killed run leaves
    left.write_bytes(b"half")
    assert batch.remove_temp_files([batch.Job(tmp_path / "in.png", tmp_path / long)]) == 1 and not left.exists()
    source = tmp_path / "in"
    source.mkdir()
    for name in (long, "ok.png"):
        Image.fromarray(np.full((12, 16), 90, np.uint8)).save(source / name)
    result = subprocess.run([*medsr_cli, "upscale", str(source), "-o", str(tmp_path / "out"), "--uncertainty", "--tile", "0"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "over the 255 that file systems allow; rename the input shorter" in result.stdout, result.stdout
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["ok.png", "ok.uncertainty.png"]  # nothing of the refused one


def test_running_out_of_memory_is_said_so_not_blamed_on_the_file(tmp_path, monkeypatch):
    """A MemoryError while writing a DICOM is not 'the source is damaged'; the batch's line names what helps."""
    from medsr.io import dicom

    def no_memory(*args):
        raise MemoryError("Unable to allocate 1.07 GiB")

    monkeypatch.setattr(dicom, "_write_dicom", no_memory)
    with pytest.raises(MemoryError):
        dicom.write_dicom(tmp_path / "x.dcm", None, scale=3, model_name="m")
    result = batch._failure(batch.Job(tmp_path / "big.dcm", tmp_path / "out" / "big.dcm"), MemoryError(), 1.0)
    assert result.status == "failed" and result.reason.startswith(f"{tmp_path / 'big.dcm'}: not enough memory")
    assert "--streams 1" in result.reason and "damaged" not in result.reason
