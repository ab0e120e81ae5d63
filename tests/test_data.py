import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, needs_data
from PIL import Image

from medsr import metrics
from medsr.data import PairSampler, degrade, load_arrays, scan, select, split_of, spread
from medsr.errors import MedsrError


def test_paper_pair_shapes_and_range():
    image = np.random.default_rng(0).random((97, 130), dtype=np.float32)
    lr, hr = degrade.paper_pair(image)
    assert hr.shape == (1, 1, 150, 150) and lr.shape == (1, 1, 50, 50)
    for t in (hr, lr):
        assert t.min() >= 0 and t.max() <= 1


def test_native_jpeg_protocol_is_the_native_pair_with_a_jpeg_input():
    yy, xx = np.mgrid[0:240, 0:300]
    image = (0.5 + 0.3 * np.sin(xx / 7.0) * np.cos(yy / 11.0)).astype(np.float32)  # smooth: no grid of its own
    lr, hr = degrade.make_pair(image, "native", 3)
    lr_jpeg, hr_jpeg = degrade.make_pair(image, "native-jpeg", 3)
    assert np.array_equal(hr, hr_jpeg) and lr.shape == lr_jpeg.shape == (80, 100)
    assert 0 < np.abs(lr - lr_jpeg).max() < 0.05  # quality 90: close, not equal
    buffer = io.BytesIO()  # what a scan exported to JPEG at quality 90 holds
    Image.fromarray(np.round(lr * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    assert np.array_equal(lr_jpeg * 255, np.asarray(Image.open(buffer), dtype=np.float32))
    grid = lambda a: metrics.block_grid_ratio(torch.from_numpy(a)[None, None], 8).item()
    assert grid(lr_jpeg) > grid(lr)  # the 8x8 block grid is in the input
    with pytest.raises(MedsrError, match="native-jpeg"):
        degrade.make_pair(image, "jpeg", 3)


def test_center_square_takes_the_middle():
    a = np.arange(6 * 10).reshape(6, 10)
    sq = degrade.center_square(a)
    assert sq.shape == (6, 6)
    assert sq[0, 0] == a[0, 2]


def test_downscale_of_constant_is_constant_and_sizes_must_divide():
    hr = torch.full((1, 1, 30, 36), 0.25)
    lr = degrade.downscale(hr, 3)
    assert lr.shape == (1, 1, 10, 12)
    assert torch.allclose(lr, torch.full_like(lr, 0.25), atol=1e-5)
    with pytest.raises(ValueError):
        degrade.downscale(torch.zeros(1, 1, 31, 30), 3)


@pytest.mark.parametrize("method", ["nearest", "bicubic", "lanczos"])
def test_baselines_upscale_by_scale(method):
    lr = torch.rand(1, 1, 10, 12)
    assert degrade.upscale_baseline(lr, 3, method).shape == (1, 1, 30, 36)


def test_native_hr_caps_and_divides():
    assert degrade.native_hr(np.zeros((2001, 1603), np.float32), 3).shape == (1500, 1500)
    assert degrade.native_hr(np.zeros((1000, 803), np.float32), 3).shape == (999, 801)


# Pinned: a key's split must never change (docs/RESULTS.md is measured on today's test split), so
# these are literal values, not recomputed with split_of.
EXPECTED_TEST = [0, 1, 10, 11, 16, 31, 38, 46, 51, 57, 58, 65, 73, 83, 87, 103, 106, 111, 113, 134, 141, 147, 167, 182, 191, 193]
EXPECTED_VAL = [5, 23, 36, 40, 75, 102, 107, 112, 116, 130, 132, 159, 189, 198]


def test_split_of_fixed_keys_never_changes():
    splits = [split_of(f"cls/img_{i}.png") for i in range(200)]
    assert [i for i, s in enumerate(splits) if s == "test"] == EXPECTED_TEST
    assert [i for i, s in enumerate(splits) if s == "val"] == EXPECTED_VAL
    assert split_of("glioma/Te-glTr_0000.jpg") == "test" and split_of("glioma/Te-gl_0010.jpg") == "train"
    assert split_of("NORMAL/IM-0201-0001.jpeg") == "test" and split_of("PNEUMONIA/person1_bacteria_1.jpeg") == "train"


def test_split_follows_the_fractions_and_nests():
    keys = [f"cls/img_{i}.png" for i in range(4000)]
    splits = [split_of(k) for k in keys]
    frac = {s: splits.count(s) / len(keys) for s in ("train", "val", "test")}
    assert 0.77 < frac["train"] < 0.83 and 0.08 < frac["val"] < 0.12 and 0.08 < frac["test"] < 0.12
    wide = [split_of(k, val_fraction=0.2, test_fraction=0.3) for k in keys]
    assert 0.27 < wide.count("test") / len(keys) < 0.33 and 0.17 < wide.count("val") / len(keys) < 0.23
    # a larger test fraction only moves files into test: today's test images stay test images
    assert all(w == "test" for s, w in zip(splits, wide) if s == "test")
    assert {split_of(k, 0.0, 0.0) for k in keys} == {"train"}


def test_adding_files_does_not_move_existing_ones(image_folder, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    before = {it.key: s for s in ("train", "val", "test") for it in select(scan(root), s)}
    assert len(before) == 48 and set(before.values()) == {"train", "val", "test"}
    (root / "gamma").mkdir()
    for i in range(30):  # new files, in an old class folder and in a new one
        shutil.copy(root / "alpha" / "img_000.png", root / ("alpha" if i % 2 else "gamma") / f"new_{i:03d}.png")
    after = {it.key: s for s in ("train", "val", "test") for it in select(scan(root), s)}
    assert len(after) == 78
    assert {k: after[k] for k in before} == before


def test_scan_labels_and_split_independent_of_root(image_folder):
    items = scan(image_folder)
    assert len(items) == 48
    assert {it.label for it in items} == {"alpha", "beta"}
    sub = scan(image_folder / "alpha")
    by_key = {it.key: split_of(it.key) for it in items}
    assert all(by_key[it.key] == split_of(it.key) for it in sub)
    parts = [select(items, s) for s in ("train", "val", "test")]
    assert sum(map(len, parts)) == 48 and not set(map(id, parts[0])) & set(map(id, parts[2]))


def test_scan_errors_name_the_folder(tmp_path):
    with pytest.raises(MedsrError, match="not found"):
        scan(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsrError, match="no image files"):
        scan(tmp_path / "empty")


def test_scan_says_which_folders_it_could_not_read_or_did_not_follow(tmp_path, monkeypatch, caplog):
    for folder in ("scans/locked", "elsewhere"):
        (tmp_path / folder).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / folder / "x.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "scans" / "y.png")
    (tmp_path / "scans" / "link").symlink_to(tmp_path / "elsewhere")
    real_scandir = os.scandir

    def scandir(path="."):  # as an unreadable folder answers (root reads any folder, so chmod cannot show it)
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level("WARNING"):
        assert [item.path.name for item in scan(tmp_path / "scans")] == ["y.png"]
    said = caplog.text
    assert "locked: cannot read this folder (Permission denied)" in said and "link: a link to a folder, not followed" in said


def test_medsr_outputs_inside_a_data_folder_are_left_out(tmp_path, image_folder, caplog):
    import shutil

    from medsr.evaluation import report
    from medsr.files import LEDGER_NAME

    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    before = [item.path for item in scan(data)]
    row = {"file": "a.png", "method": "bicubic", "psnr": 30.0}
    report.write_reports([row], [row], data / "alpha" / "evaluation", {})  # an evaluation written into the data
    (data / "alpha" / "evaluation" / "figures").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / "alpha" / "evaluation" / "figures" / "grid.png")
    (data / "upscaled").mkdir()  # an upscale run from before outputs were marked: its ledger tells
    (data / "upscaled" / LEDGER_NAME).write_text("")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / "upscaled" / "x.png")
    with caplog.at_level("WARNING"):
        assert [item.path for item in scan(data)] == before
    assert caplog.text.count("left out, it holds medsr's outputs") == 1  # the old run's folder, by its ledger
    assert caplog.text.count("medsr's outputs there are left out") == 1  # the evaluation's, by its marker
    assert len(scan(data / "upscaled")) == 1  # passed itself, an output folder is read


def test_the_users_own_files_in_a_folder_medsr_wrote_into_are_still_read(tmp_path, image_folder):
    """`-o archive` into a folder of the user's scans marks it; its scans from before stay inputs of later runs."""
    import os
    import shutil

    from medsr.files import mark_output_folder

    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    before = sorted(item.path for item in scan(data))
    archive = data / "archive"
    archive.mkdir()
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(archive / "old.png")
    os.utime(archive / "old.png", (1e9, 1e9))  # the user's scan, from 2001
    mark_output_folder(archive)
    (archive / "sub").mkdir()
    for output in (archive / "new.png", archive / "sub" / "new.png"):  # medsr's outputs, written since
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(output)
    assert sorted(item.path for item in scan(data)) == sorted(before + [archive / "old.png"])


def test_load_arrays_skips_bad_files(tmp_path, image_folder):
    items = scan(image_folder)[:3]
    bad = tmp_path / "cls" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    arrays, kept = load_arrays(items + scan(tmp_path))
    assert len(arrays) == 3 and all(a.dtype == np.uint8 for a in arrays)


def test_paper_sampler_precomputes_pairs(image_folder):
    arrays, _ = load_arrays(scan(image_folder))
    sampler = PairSampler(arrays, "paper", scale=3, hr_size=150, seed=1)
    lr, hr = sampler.next_batch(5)
    assert lr.shape == (5, 1, 50, 50) and hr.shape == (5, 1, 150, 150)
    assert hr.min() >= -1 and hr.max() <= 1
    # a fresh epoch draws every image exactly once
    fresh = PairSampler(arrays, "paper", scale=3, hr_size=150, seed=2)
    assert sorted(fresh._next_indices(48).tolist()) == list(range(48))


def test_patch_sampler_is_resumable(image_folder):
    arrays, _ = load_arrays(scan(image_folder))
    a = PairSampler(arrays, "patch", scale=3, hr_size=48, seed=7)
    a.next_batch(4)
    state = a.state_dict()
    expected = a.next_batch(4)
    b = PairSampler(arrays, "patch", scale=3, hr_size=48, seed=123)
    b.load_state_dict(state)
    got = b.next_batch(4)
    assert got[0].shape == (4, 1, 16, 16) and got[1].shape == (4, 1, 48, 48)
    assert torch.equal(expected[1], got[1]) and torch.equal(expected[0], got[0])


def test_sampler_rejects_bad_sizes(image_folder):
    arrays, _ = load_arrays(scan(image_folder))
    with pytest.raises(MedsrError, match="divisible"):
        PairSampler(arrays, "patch", scale=3, hr_size=50)
    with pytest.raises(MedsrError, match="smaller"):
        PairSampler(arrays, "patch", scale=3, hr_size=300)


@needs_data
def test_kaggle_layouts_work_as_they_are():
    items = scan([DATA / "brain-mri", DATA / "chest-xray"])
    labels = {it.label for it in items}
    assert {"glioma", "meningioma", "notumor", "pituitary", "NORMAL", "PNEUMONIA"} <= labels
    test = select(items, "test")
    assert 0.07 < len(test) / len(items) < 0.13
    # the test split that docs/RESULTS.md reports on (107 brain MRI, 106 chest X-ray images)
    assert len(select(scan(DATA / "brain-mri"), "test")) == 107 and len(select(scan(DATA / "chest-xray"), "test")) == 106


@pytest.mark.parametrize("side", [30, 100, 144, 161, 170, 176, 300])
def test_ms_ssim_works_at_every_size(side):
    from medsr import metrics

    hr = torch.rand(1, 1, side, side)
    assert 0 < metrics.ms_ssim(hr.clamp(0, 0.8), hr).item() < 1
    assert metrics.ms_ssim(hr, hr).item() == pytest.approx(1.0, abs=1e-4)


def test_hf_energy_ratio_separates_blur_from_detail():
    from medsr import metrics
    from medsr.data import degrade

    g = torch.Generator().manual_seed(0)
    hr = (degrade.resize(torch.rand(4, 1, 40, 40, generator=g), (120, 120)) + 0.2 * torch.rand(4, 1, 120, 120, generator=g)).clamp(0, 1)
    lr = degrade.downscale(hr, 3)
    bicubic = degrade.upscale_baseline(lr, 3, "bicubic").clamp(0, 1)
    noisy = (hr + 0.1 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    assert torch.allclose(metrics.hf_energy_ratio(hr, hr, 3), torch.ones(4))
    assert (metrics.hf_energy_ratio(bicubic, hr, 3) < 0.5).all()
    assert (metrics.hf_energy_ratio(noisy, hr, 3) > 1.5).all()
    assert metrics.hf_energy_ratio(bicubic, hr, 3, border=3).shape == (4,)


def test_spread_takes_evenly_spaced_items_so_every_class_is_in():
    items = [f"a/{i}" for i in range(5)] + [f"b/{i}" for i in range(5)]  # a sorted list: class a first
    assert spread(items, 4) == ["a/0", "a/2", "b/0", "b/2"]  # items 10 * i // 4
    assert {item[0] for item in spread(items, 2)} == {"a", "b"}  # the first 2 would both be class a
    assert spread(items, None) == spread(items, 10) == spread(items, 99) == items
    assert spread([], 3) == []


@pytest.mark.parametrize("protocol, extra", [("patch", {}), ("mixed", {"mix": {"paper": 0.5, "native": 0.5}})])
def test_a_limit_on_training_or_validation_images_spreads_over_the_classes(image_folder, monkeypatch, protocol, extra):
    """max_train_images / max_val_images: the first N sorted files would all be of the first class folder."""
    from medsr.data import dataset

    decoded = []
    real = dataset.load_arrays
    monkeypatch.setattr(dataset, "load_arrays", lambda items, limit=None: decoded.extend(items) or real(items, limit))
    dataset.build_sampler([str(image_folder)], "train", protocol, 3, 48, limit=6, **extra)
    assert len(decoded) == 6 and {item.label for item in decoded} == {"alpha", "beta"}


def test_a_split_with_no_file_says_why(tmp_path):
    from medsr.data import build_sampler

    (tmp_path / "cls").mkdir()
    Image.fromarray(np.full((64, 64), 100, np.uint8)).save(tmp_path / "cls" / "only.png")
    empty = next(s for s in ("train", "val", "test") if s != split_of("cls/only.png"))
    with pytest.raises(MedsrError, match=rf"none of its 1 image file\(s\) falls in the '{empty}' split .*add images"):
        build_sampler([str(tmp_path)], empty, "paper", 3, 48)


def test_a_file_named_as_pacs_name_dicom_but_without_its_preamble_is_said_left_out(tmp_path, image_folder, caplog):
    import shutil

    from test_io import make_dicom

    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    whole = make_dicom(tmp_path / "whole.dcm", np.zeros((8, 8), np.uint16)).read_bytes()
    (data / "IM0003").write_bytes(whole[132:])  # no 128-byte preamble, no "DICM": nothing tells it is DICOM
    (data / "notes.txt").write_text("not an image, and plainly so")
    with caplog.at_level("WARNING"):
        scan(data)
    notes = [r.getMessage() for r in caplog.records if "no DICOM preamble" in r.getMessage()]
    assert len(notes) == 1 and f"{data / 'IM0003'} in {data}" in notes[0] and "notes.txt" not in notes[0]
