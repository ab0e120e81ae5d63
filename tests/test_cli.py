"""The command line, run through the installed console script as a user would."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, ROOT, assert_one_line_error, free_port, needs_data
from PIL import Image

TINY = ["--set", "hr_size=48", "--set", "generator={channels: 8, num_blocks: 1}", "--set", "discriminator={channels: 4, dense: 16}",
        "--set", "batch_size=4", "--set", "max_val_images=4", "--set", "precision=fp32"]


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, image_folder, medsr_cli):
    out = tmp_path_factory.mktemp("runs")
    result = run(medsr_cli + ["train", "configs/paper.yaml", "--set", f"data=[{image_folder}]", "--set", f"out_dir={out}",
                              "--set", "epochs=1", "--set", "steps_per_epoch=2", *TINY], cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    return out / "paper"


def test_help_lists_commands(medsr_cli):
    out = run(medsr_cli + ["--help"]).stdout
    for command in ("train", "upscale", "evaluate"):
        assert command in out


def test_upscale_mirrors_folders_and_reports_bad_files(tmp_path, trained_run, image_folder, medsr_cli):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(np.full((20, 30), 128, np.uint8)).save(src / "sub" / "a.png")
    Image.fromarray(np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 100).save(src / "b16.png")
    (src / "broken.png").write_bytes(b"not a png")
    (src / "gone.dcm").symlink_to(tmp_path / "moved-away.dcm")  # a link whose file has gone: a failure, not a silence
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    result = run(medsr_cli + ["upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(trained_run)])
    assert result.returncode == 1  # two files failed, the rest went on
    assert "broken.png" in result.stderr and "Traceback" not in result.stderr
    assert f"{src / 'gone.dcm'}: file not found" in result.stderr and "upscaled 2 of 4 file(s)" in result.stdout
    a = Image.open(tmp_path / "out" / "sub" / "a.png")
    assert a.size == (90, 60) and a.mode == "L"
    b = Image.open(tmp_path / "out" / "b16.png")
    assert b.size == (72, 60) and b.mode in ("I;16", "I")  # 16-bit in, 16-bit out
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before  # inputs untouched


def test_upscale_refuses_to_overwrite_inputs(tmp_path, trained_run, medsr_cli):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    original = (tmp_path / "x.png").read_bytes()
    result = run(medsr_cli + ["upscale", str(tmp_path / "x.png"), "-o", str(tmp_path), "--model", str(trained_run)])
    assert_one_line_error(result, "overwrite", "x.png")
    assert (tmp_path / "x.png").read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]  # nothing written: the scan folder is not marked as output


def test_output_folders_that_are_files_are_refused_before_any_work(tmp_path, trained_run, image_folder, medsr_cli):
    (tmp_path / "t.png").write_bytes(b"a file, not a folder")
    data = ["--data", str(image_folder)]
    assert_one_line_error(run(medsr_cli + ["evaluate", *data, "--model", str(trained_run), "--out", str(tmp_path / "t.png")]), "--out")
    assert_one_line_error(run(medsr_cli + ["compare", *data, "--models", "bicubic", "--out", str(tmp_path / "t.png")]), "--out")
    assert_one_line_error(run(medsr_cli + ["demo", "-o", str(tmp_path / "t.png")]), "-o")
    assert_one_line_error(run(medsr_cli + ["train", str(ROOT / "configs" / "paper.yaml"), "--set", f"out_dir={tmp_path / 't.png'}"]), "out_dir")


def test_a_file_named_twice_is_one_input_and_inputs_inside_o_get_a_note(tmp_path, trained_run, medsr_cli):
    (tmp_path / "scans" / "out").mkdir(parents=True)
    for name in ("a.png", "out/b.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "scans" / name)
    both = run(medsr_cli + ["upscale", str(tmp_path / "scans"), str(tmp_path / "scans" / "a.png"), "-o", str(tmp_path / "o"),
                            "--model", str(trained_run)])
    assert both.returncode == 0 and "upscaled 2 of 2" in both.stdout, both.stdout + both.stderr
    (tmp_path / "scans" / "latest.png").symlink_to(tmp_path / "scans" / "a.png")  # two names of one file: two outputs
    linked = run(medsr_cli + ["upscale", str(tmp_path / "scans"), "-o", str(tmp_path / "o2"), "--model", str(trained_run)])
    assert linked.returncode == 0 and (tmp_path / "o2" / "a.png").is_file() and (tmp_path / "o2" / "latest.png").is_file(), linked.stderr
    (tmp_path / "scans" / "latest.png").unlink()
    inside = run(medsr_cli + ["upscale", str(tmp_path / "scans"), "-o", str(tmp_path / "scans" / "out"), "--model", str(trained_run)])
    assert inside.returncode == 0 and "upscaled 1 of 1" in inside.stdout, inside.stdout + inside.stderr
    assert "1 file(s) in" in inside.stderr and "left out" in inside.stderr


def test_user_errors_are_one_line(tmp_path, trained_run, medsr_cli):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    assert_one_line_error(run(medsr_cli + ["upscale", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "none.safetensors")]), "none.safetensors")
    assert_one_line_error(run(medsr_cli + ["upscale", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--model", str(trained_run), "--scale", "4"]), "x3", "--scale")
    assert_one_line_error(run(medsr_cli + ["upscale", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o"), "--model", str(trained_run)]), "nope.png")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    assert_one_line_error(run(medsr_cli + ["upscale", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "junk.safetensors")]), "junk.safetensors")
    assert_one_line_error(run(medsr_cli + ["train", str(tmp_path / "missing.yaml")]), "missing.yaml")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run(medsr_cli + ["evaluate", "--data", str(tmp_path / "empty")]), "empty")


def test_an_empty_path_a_reference_of_another_scale_and_an_onnx_file_to_compare_are_said_so(tmp_path, medsr_cli):
    Image.fromarray(np.full((12, 16), 90, np.uint8)).save(tmp_path / "x.png")
    for args in (["upscale", "", "-o", str(tmp_path / "o")], ["upscale", str(tmp_path / "x.png"), "-o", ""]):
        result = run(medsr_cli + args)  # (an unset shell variable: not the current folder)
        assert result.returncode == 2 and "an empty path" in result.stderr and not (tmp_path / "o").exists(), result.stderr
    assert_one_line_error(run(medsr_cli + ["upscale", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--scale", "2", "--uncertainty",
                                           "--reference-model", "default"]), "--reference-model default upscales x3, the model x2")
    assert_one_line_error(run(medsr_cli + ["compare", "--data", str(tmp_path), "--models", f"m={tmp_path / 'm.onnx'}"]),
                          "compare runs PyTorch models", "medsr evaluate --runtime onnx")


def test_evaluate_prints_table_and_writes_files(tmp_path, trained_run, image_folder, medsr_cli):
    result = run(medsr_cli + ["evaluate", "--data", str(image_folder), "--model", str(trained_run), "--split", "all",
                              "--limit", "4", "--out", str(tmp_path / "ev")])
    assert result.returncode == 0, result.stderr[-2000:]
    for method in ("nearest", "bicubic", "lanczos", str(trained_run)):
        assert f"| {method} |" in result.stdout
    summary = json.loads((tmp_path / "ev" / "results.json").read_text())["summary"]
    assert [s["images"] for s in summary] == [4, 4, 4, 4]
    bicubic = next(s for s in summary if s["method"] == "bicubic")
    nearest = next(s for s in summary if s["method"] == "nearest")
    assert bicubic["psnr"] > nearest["psnr"] > 10
    assert (tmp_path / "ev" / "per_image.csv").read_text().count("\n") == 1 + 16


def test_torchrun_two_cpu_processes(tmp_path, image_folder):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", "-m", "medsr", "train",
           "configs/paper.yaml", "--set", f"data=[{image_folder}]", "--set", f"out_dir={tmp_path}", "--set", "epochs=1",
           "--set", "steps_per_epoch=3", "--set", "checkpoint_every=3", *TINY]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = run(cmd, cwd=Path(__file__).parents[1], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = tmp_path / "paper" / "checkpoints" / "step-00000003"
    assert (ckpt / "state-rank0.pt").is_file() and (ckpt / "state-rank1.pt").is_file()
    assert (tmp_path / "paper" / "model.safetensors").is_file()
    again = run(cmd, cwd=Path(__file__).parents[1], env=env)  # the same run again, without --resume: each process says why
    assert again.returncode != 0 and again.stderr.count("this run already has checkpoints; add --resume") == 2, again.stderr[-3000:]
    assert "RuntimeError" not in again.stderr  # rank 1 crashed on its peer's exit before


# Run under torchrun by the test below: medsr's Trainer as `medsr train` runs it, saving each rank's
# final weights just before the Trainer's own teardown (which drops the models, then leaves gloo).
RANK_WEIGHTS_SCRIPT = """
import sys
import torch
from medsr.training.config import load_config
from medsr.training.trainer import Trainer, _unwrap

out, overrides = sys.argv[1], sys.argv[2:]
trainer = Trainer(load_config("configs/paper.yaml", overrides))
initial = {k: v.detach().clone() for k, v in trainer.generator.named_parameters()}
teardown = trainer._teardown

def save_then_teardown():
    nets = {"generator": _unwrap(trainer.generator), "discriminator": _unwrap(trainer.discriminator)}
    # parameters, not buffers: batch-norm running statistics are each rank's own after its last
    # forward (DDP broadcasts rank 0's at the start of every forward; checkpoints hold rank 0's)
    state = {name: {k: v.detach().clone() for k, v in net.named_parameters()} for name, net in nets.items()}
    torch.save({**state, "initial_generator": initial, "steps": trainer.step_count}, f"{out}/rank{trainer.rank}.pt")
    teardown()

trainer._teardown = save_then_teardown
trainer.fit()
"""


def test_torchrun_ranks_stay_in_sync(tmp_path, image_folder):
    """Every rank draws its own batches (seed + rank), so only DDP's gradient averaging keeps their
    weights equal: after training, rank 1's generator and discriminator parameters are rank 0's, bit for bit."""
    from safetensors.torch import load_file

    from medsr import zoo

    script = tmp_path / "train_and_save_ranks.py"
    script.write_text(RANK_WEIGHTS_SCRIPT)
    args = [f"data=[{image_folder}]", f"out_dir={tmp_path}", "epochs=1", "steps_per_epoch=4", "checkpoint_every=4",
            *[v for v in TINY if v != "--set"]]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519", str(script), str(tmp_path), *args]
    result = run(cmd, cwd=Path(__file__).parents[1], env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["steps"] == rank1["steps"] == 4
    for net in ("generator", "discriminator"):
        assert rank0[net].keys() == rank1[net].keys()
        unequal = [k for k in rank0[net] if not torch.equal(rank0[net][k], rank1[net][k])]
        assert rank0[net] and not unequal, f"{net} weights differ between the ranks: {unequal[:5]}"
    assert any(not torch.equal(rank0["generator"][k], rank0["initial_generator"][k]) for k in rank0["generator"])  # it trained
    # the checkpoint (written by rank 0) holds these weights
    saved = zoo.checkpoint_part(load_file(str(tmp_path / "paper" / "checkpoints" / "step-00000004" / "model.safetensors")),
                                zoo.GENERATOR_PREFIX)
    assert all(torch.equal(saved[k], rank0["generator"][k]) for k in rank0["generator"])


def test_torchrun_two_nodes_on_localhost(tmp_path, image_folder):
    """Multi-node training as README gives it: two `torchrun --nnodes 2` launches (here both on 127.0.0.1,
    one process each) meet at a c10d rendezvous address and train as one job, their weights equal."""
    script = tmp_path / "train_and_save_ranks.py"
    script.write_text(RANK_WEIGHTS_SCRIPT)
    args = [f"data=[{image_folder}]", f"out_dir={tmp_path}", "epochs=1", "steps_per_epoch=3", "checkpoint_every=3",
            *[v for v in TINY if v != "--set"]]
    launches = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1",
                                  "--rdzv_backend=c10d", "--rdzv_endpoint=127.0.0.1:29523", "--rdzv_id=medsr-two-nodes",
                                  str(script), str(tmp_path), *args],
                                 cwd=Path(__file__).parents[1], env=dict(os.environ, OMP_NUM_THREADS="1"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for rank in (0, 1)]
    outputs = [launch.communicate(timeout=600) for launch in launches]
    assert [launch.returncode for launch in launches] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["steps"] == rank1["steps"] == 3
    assert all(torch.equal(rank0["generator"][k], rank1["generator"][k]) for k in rank0["generator"])


@needs_data
def test_paper_recipe_on_brain_mri_then_upscale_a_real_dicom(tmp_path, medsr_cli):
    """The issue's acceptance path, shortened: train on real MRI, upscale a real CR DICOM."""
    import pydicom

    root = Path(__file__).parents[1]
    result = run(medsr_cli + ["train", "configs/paper.yaml", "--set", f"data=[{DATA / 'brain-mri'}]", "--set", f"out_dir={tmp_path}",
                              "--set", "epochs=1", "--set", "steps_per_epoch=2", "--set", "max_train_images=16",
                              "--set", "generator={channels: 8, num_blocks: 1}", "--set", "discriminator={channels: 4, dense: 16}",
                              "--set", "max_val_images=4"], cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "paper" / "grids" / "epoch-0001.png").is_file()
    src = DATA / "dicom" / "chest-cr-siim.dcm"
    result = run(medsr_cli + ["upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "paper")])
    assert result.returncode == 0, result.stderr[-2000:]
    before, after = pydicom.dcmread(src), pydicom.dcmread(tmp_path / "out" / src.name)
    assert (after.Rows, after.Columns) == (3 * before.Rows, 3 * before.Columns)
    assert after.SOPInstanceUID != before.SOPInstanceUID and after.ImageType[0] == "DERIVED"
    assert "medsr" in after.DerivationDescription and "paper model" in after.DerivationDescription
    assert [float(v) for v in after.PixelSpacing] == pytest.approx([float(v) / 3 for v in before.PixelSpacing])
    assert after.pixel_array.shape == (3 * before.Rows, 3 * before.Columns)


def test_demo_writes_figures(tmp_path, trained_run, medsr_cli):
    pytest.importorskip("nilearn", reason="demo images not installed; pip install -e '.[demo]'")
    pytest.importorskip("data_store", reason="pydicom-data not installed; pip install -e '.[demo]'")
    demo = tmp_path / "project" / "medsr-demo"
    result = run(medsr_cli + ["demo", "-o", str(demo), "--model", str(trained_run)])
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("chest-cr", "brain-mri"):
        assert f"{name}:" in result.stdout and "bicubic" in result.stdout
        figure = Image.open(demo / f"{name}-comparison.png")
        sr = Image.open(demo / f"{name}-x3.png")
        assert figure.width > 3 * 500 and sr.width > 150
    # the demo's folder is medsr's output: a later run over the folder holding it leaves it out
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "project" / "scan.png")
    later = run(medsr_cli + ["upscale", str(tmp_path / "project"), "-o", str(tmp_path / "out"), "--model", str(trained_run)])
    assert later.returncode == 0, later.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.png")) == ["scan.png"]


def test_evaluate_classify_takes_one_data_set(tmp_path, image_folder, medsr_cli):
    result = run(medsr_cli + ["evaluate", "--task", "classify", "--data", str(image_folder), str(image_folder),
                              "--model", "default", "--out", str(tmp_path / "f")])
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "medsr: error: --task classify tells apart the classes of one data set; give one --data folder at a time, not 2"]


def test_models_lists_shipped(medsr_cli):
    from medsr import zoo

    result = run(medsr_cli + ["models"])
    assert result.returncode == 0
    rows = [line.split("|")[1].strip() for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows == sorted(zoo.shipped_models())  # by name: default before default-gan
    assert f"{zoo.JPEG_MODEL} on JPEG files" in result.stdout


def test_upscale_uses_the_shipped_default(tmp_path, medsr_cli):
    from medsr import zoo

    if "default" not in zoo.shipped_models():
        pytest.skip("no default model shipped")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8)).save(tmp_path / "x.png")
    result = run(medsr_cli + ["upscale", str(tmp_path / "x.png"), "-o", str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(tmp_path / "out" / "x.png").size == (150, 120)


def test_jpeg_files_get_the_model_trained_for_them(tmp_path, medsr_cli):
    from medsr import api, zoo
    from medsr.inference import batch

    assert zoo.default_model(3, [tmp_path / "a.JPG", "b.jpeg"]) == zoo.JPEG_MODEL == "default-jpeg"
    assert zoo.default_model(None, ["a.jpg", "b.png"]) == zoo.default_model(3) == "default"
    assert zoo.default_model(2, ["a.jpg"]) == "default-x2"
    assert zoo.jpeg_default(3, ["a.jpg", "b.png"]) == zoo.jpeg_default(None, ["b.png", "a.JPEG"]) == "default-jpeg"
    assert zoo.jpeg_default(3, ["a.jpg"]) is zoo.jpeg_default(3, ["b.png"]) is zoo.jpeg_default(2, ["a.jpg", "b.png"]) is None
    pixels = np.random.default_rng(0).integers(0, 255, (40, 48), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.jpg", quality=90)
    Image.fromarray(pixels).save(tmp_path / "y.png")
    # DICOM stored as lossy JPEG has the same 8x8 blocks: it is JPEG-coded too (pydicom's 8-bit baseline sample)
    from pydicom.data import get_testdata_file

    (tmp_path / "z.dcm").write_bytes(open(get_testdata_file("SC_jpeg_no_color_transform.dcm"), "rb").read())
    assert zoo.default_model(3, [tmp_path / "z.dcm"]) == "default-jpeg" and zoo.jpeg_default(3, [tmp_path / "z.dcm", "y.png"])
    used, notes = {}, {}
    for name, inputs in (("jpeg", ["x.jpg"]), ("png", ["y.png"]), ("mixed", ["x.jpg", "y.png"]), ("dicom", ["z.dcm", "y.png"])):
        result = run(medsr_cli + ["upscale", *(str(tmp_path / i) for i in inputs), "-o", str(tmp_path / name)])
        assert result.returncode == 0, result.stderr[-2000:]
        notes[name] = result.stderr
        for line in (tmp_path / name / batch.LEDGER_NAME).read_text().splitlines():
            record = json.loads(line)
            used[name, record["output"]] = record["settings"]["model"]["sha256"]
    sha = {model: batch.sha256_file(zoo.shipped_models()[model]) for model in ("default", "default-jpeg")}
    assert "JPEG-coded" in notes["jpeg"] and "default-jpeg upscales them" in notes["jpeg"]
    assert "1 of the 2 input files is JPEG-coded" in notes["mixed"] and "default-jpeg upscales it" in notes["mixed"], notes["mixed"]
    assert used["dicom", "z.dcm"] == sha["default-jpeg"] and used["dicom", "y.png"] == sha["default"]
    # in a mixed run each file gets the model it would get in a run of its own, with the same bytes out
    assert used["jpeg", "x.jpg"] == used["mixed", "x.jpg"] == sha["default-jpeg"]
    assert used["png", "y.png"] == used["mixed", "y.png"] == sha["default"]
    for name, output in (("jpeg", "x.jpg"), ("png", "y.png")):
        assert (tmp_path / name / output).read_bytes() == (tmp_path / "mixed" / output).read_bytes()
    again = run(medsr_cli + ["upscale", str(tmp_path / "x.jpg"), str(tmp_path / "y.png"), "-o", str(tmp_path / "mixed")])
    assert "2 skipped (complete)" in again.stdout, again.stdout  # each file's record holds its own model
    with open(tmp_path / "mixed" / batch.SUMMARY_NAME, newline="") as fh:
        assert {Path(r["input"]).name: r["model"] for r in csv.DictReader(fh)} == {
            "x.jpg": "edsr model default-jpeg", "y.png": "edsr model default"}
    one = run(medsr_cli + ["upscale", str(tmp_path / "x.jpg"), str(tmp_path / "y.png"), "-o", str(tmp_path / "one"),
                           "--model", "default"])
    assert one.returncode == 0 and "JPEG" not in one.stderr, one.stderr
    records = [json.loads(line) for line in (tmp_path / "one" / batch.LEDGER_NAME).read_text().splitlines()]
    assert {r["settings"]["model"]["sha256"] for r in records} == {sha["default"]}  # --model: one model for all
    picked = []
    original = api.load_model
    api.load_model = lambda model, **kw: picked.append(model) or original(model, **kw)
    try:
        api.upscale_file(tmp_path / "x.jpg", tmp_path / "api.png")
        api.upscale(tmp_path / "y.png")
    finally:
        api.load_model = original
    assert picked == ["default-jpeg", "default"]


def test_every_shipped_model_has_a_card_and_they_stay_small():
    from medsr import zoo

    shipped = zoo.shipped_models()
    assert {"default", "default-gan", "paper"} <= set(shipped)
    assert sum(path.stat().st_size for path in shipped.values()) <= 25e6  # the package's weight budget (22 MB with large)
    for name, path in shipped.items():
        card = path.with_suffix(".md").read_text()
        assert "trained with: `medsr train configs/" in card and "Test-split figures" in card, name
        model, meta = zoo.load(name)
        scale = int(meta["medsr_scale"])
        assert scale == (1 if name == "through-plane" else int(name[-1]) if name.startswith("default-x") else 3)
        assert model(torch.zeros(1, 1, 6, 6)).shape == (1, 1, 6 * scale, 6 * scale), name


def legend_height(width: int) -> int:
    from medsr.inference.hallucination import legend

    return legend(width).shape[0]


def test_upscale_with_uncertainty_writes_an_overlay_and_a_float_map(tmp_path, trained_run, medsr_cli):
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 40), dtype=np.uint8)).save(tmp_path / "scan.png")
    result = run(medsr_cli + ["upscale", str(tmp_path / "scan.png"), "-o", str(tmp_path / "out"), "--model", str(trained_run),
                              "--uncertainty"])
    assert result.returncode == 0, result.stderr[-2000:]
    overlay = Image.open(tmp_path / "out" / "scan.uncertainty.png")
    values = np.asarray(Image.open(tmp_path / "out" / "scan.uncertainty.tif"), dtype=np.float32)
    assert overlay.size == (120, 90 + legend_height(120)) and overlay.mode == "RGB"  # the legend strip below the image
    assert values.shape == (90, 120) and np.isfinite(values).all() and values.max() > 0


def test_reference_model_without_uncertainty_and_verbose_after_the_command(tmp_path, medsr_cli):
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "x.png")
    alone = run(medsr_cli + ["upscale", str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), "--reference-model", "default-gan"])
    assert alone.returncode == 2 and alone.stderr.strip().splitlines() == [
        "medsr: error: --reference-model is what --uncertainty compares with; add --uncertainty"]
    assert not (tmp_path / "out").exists()
    late = run(medsr_cli + ["upscale", "-v", str(tmp_path / "missing.png"), "-o", str(tmp_path / "out")])
    assert late.returncode == 1 and "Traceback" in late.stderr  # -v after the command: tracebacks, as before it
    assert run(medsr_cli + ["-v", "models"]).returncode == 0 and run(medsr_cli + ["models"]).returncode == 0


def test_the_uncertainty_overlay_of_12_bit_data_is_drawn_in_its_own_range(tmp_path, medsr_cli):
    """A 12-bit scan in a 16-bit file (as most MR and CT are): the overlay's gray image spans black to white,
    not the bottom 6 % of the 16-bit range (nearly black)."""
    y, x = np.mgrid[0:30, 0:40]
    Image.fromarray((100 * x + 20 * y).astype(np.uint16)).save(tmp_path / "mr12.png")  # 0 to 4480
    result = run(medsr_cli + ["upscale", str(tmp_path / "mr12.png"), "-o", str(tmp_path / "out"), "--uncertainty", "--tile", "0"])
    assert result.returncode == 0, result.stderr[-2000:]
    gray = np.asarray(Image.open(tmp_path / "out" / "mr12.uncertainty.png").convert("L"))[:90]  # the image, above its legend
    assert gray.min() <= 5 and gray.max() >= 250


def test_uncertainty_at_x4_uses_the_consistency_residual_alone(tmp_path, medsr_cli):
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (20, 24), dtype=np.uint8)).save(tmp_path / "scan.png")
    result = run(medsr_cli + ["upscale", str(tmp_path / "scan.png"), "-o", str(tmp_path / "out"), "--model", "default-x4",
                              "--uncertainty"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no shipped x4 reference model" in result.stderr
    assert Image.open(tmp_path / "out" / "scan.png").size == (96, 80)
    assert Image.open(tmp_path / "out" / "scan.uncertainty.png").size == (96, 80 + legend_height(96))


def test_evaluate_classify_trains_a_classifier_and_reports_accuracy(tmp_path, trained_run, image_folder, medsr_cli):
    out = tmp_path / "fidelity"
    result = run(medsr_cli + ["evaluate", "--task", "classify", "--data", str(image_folder), "--model", str(trained_run),
                              "--classifier-epochs", "1", "--split", "all", "--limit", "6", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| HR |" in result.stdout and "| bicubic |" in result.stdout and "accuracy" in result.stdout
    assert (out / "classifier.safetensors").is_file() and (out / "fidelity_summary.csv").is_file()
    again = run(medsr_cli + ["evaluate", "--task", "classify", "--data", str(image_folder), "--classifier", str(out / "nope.safetensors"),
                             "--out", str(out)])
    assert_one_line_error(again, "nope.safetensors")


def test_ray_address_goes_with_the_ray_engine(tmp_path, medsr_cli):
    image = tmp_path / "scan.png"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(image)
    result = run(medsr_cli + ["upscale", str(image), "-o", str(tmp_path / "out"), "--ray-address", "127.0.0.1:6379"])
    assert result.returncode == 2 and "--ray-address goes with --engine ray" in result.stderr
    assert not (tmp_path / "out").exists()
    nobody = run(medsr_cli + ["upscale", str(image), "-o", str(tmp_path / "out"), "--engine", "ray", "--ray-address", f"127.0.0.1:{free_port()}"])
    assert_one_line_error(nobody, "--ray-address", "no Ray cluster there")  # at once: Ray itself waited minutes


def test_an_output_made_from_another_input_is_not_replaced_in_silence(tmp_path, trained_run, medsr_cli):
    for folder, value in (("a", 10), ("b", 200)):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((8, 8), value, np.uint8)).save(tmp_path / folder / "x.png")
    command = medsr_cli + ["upscale", "-o", str(tmp_path / "out"), "--model", str(trained_run)]
    assert run(command + [str(tmp_path / "a")]).returncode == 0
    second = run(command + [str(tmp_path / "b")])
    assert second.returncode == 0 and "medsr: note:" in second.stderr and str(tmp_path / "a" / "x.png") in second.stderr, second.stderr
    assert "was made from" not in run(command + [str(tmp_path / "b")]).stderr  # its own output now: skipped, nothing to say


def test_a_negative_figure_count_is_a_usage_error(capsys):
    from medsr.cli import build_parser

    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["compare", "--data", "scans", "--figures", "-1"])
    assert stop.value.code == 2 and "argument --figures: '-1' is not a count; give 0 or more" in capsys.readouterr().err
    assert build_parser().parse_args(["compare", "--data", "scans", "--figures", "0"]).figures == 0
