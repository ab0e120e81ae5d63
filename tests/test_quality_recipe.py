"""The native-resolution recipe (issue 14): the artefact measures, the neighbourhood clamp, the light
degradation, the mixed sampler and partial initialisation."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from test_train import tiny_config

from medsr import metrics, zoo
from medsr.data import dataset, degrade
from medsr.data.dataset import LightDegradation, build_sampler, volume_slices
from medsr.errors import MedsrError
from medsr.evaluation import quality
from medsr.io import read_image
from medsr.models import create_generator
from medsr.training.trainer import Trainer
from medsr.zoo import save_model


def test_edge_overshoot_flags_ringing_not_faithful_edges():
    lr = torch.zeros(1, 1, 12, 12)
    lr[..., 6:] = 1.0  # a hard vertical edge
    faithful = degrade.upscale_baseline(lr, 3, "nearest")
    assert metrics.edge_overshoot(faithful, lr, 3).item() == 0
    ringing = faithful.clone()
    ringing[..., 16:20] = 1.3  # a bright line along the edge, beyond anything in the input
    ringing[..., 14:16] = -0.2  # and its dark twin
    share = metrics.edge_overshoot(ringing, lr, 3).item()
    assert share == pytest.approx(6 / 36)
    assert metrics.edge_overshoot(ringing, lr, 3, tolerance=0.5).item() == 0  # within half the range: tolerated


def test_zero_edge_profile_finds_a_rim_inside_a_zero_background_edge():
    hr = torch.zeros(40, 40)
    hr[10:30, 10:30] = 0.6  # tissue on a zero background
    assert torch.equal(metrics.zero_edge_profile(hr, hr, 4), torch.zeros(4))
    rim = hr.clone()
    rim[11:29, 11:29] = 0.8  # bright 2 px inside the edge (the edge pixel is 1 px in)...
    rim[12:28, 12:28] = 0.6  # ...only there: a one-pixel ring
    profile = metrics.zero_edge_profile(rim, hr, 4)
    assert profile[1] == pytest.approx(0.2 / 0.6) and profile[0] == 0 and profile[2] == 0 and profile[3] == 0
    assert torch.isnan(metrics.zero_edge_profile(hr + 0.1, hr + 0.1, 12)[10:]).all()  # nothing lies 11 px in


def test_block_grid_ratio_sees_jpeg_blocks():
    rng = np.random.default_rng(0)
    smooth = torch.from_numpy(rng.random((1, 1, 64, 64), dtype=np.float32)).cumsum(-1).cumsum(-2)
    smooth = smooth / smooth.max()
    assert metrics.block_grid_ratio(smooth, 8).item() == pytest.approx(1.0, abs=0.15)
    blocks = smooth.clone()
    blocks += torch.from_numpy(rng.random((8, 8), dtype=np.float32)).repeat_interleave(8, 0).repeat_interleave(8, 1) * 0.05
    assert metrics.block_grid_ratio(blocks, 8).item() > 2
    # an 8-pixel JPEG grid upscaled x3 is seen on the 24-pixel grid, not on the 8-pixel one
    up = degrade.upscale_baseline(blocks, 3, "nearest")
    assert metrics.block_grid_ratio(up, 24).item() > 2 * metrics.block_grid_ratio(up, 8).item()


def test_a_real_jpeg_has_a_grid_and_evaluate_reports_it(tmp_path):
    rng = np.random.default_rng(1)
    image = (np.clip(rng.random((64, 64)).cumsum(0).cumsum(1) / 1500, 0, 1) * 255).astype(np.uint8)
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(10):
            Image.fromarray(np.roll(image, 5 * i, axis=1)).save(tmp_path / label / f"s{i}.jpg", quality=20)
    rows = quality.evaluate([str(tmp_path)], [quality.Method("bicubic")], 3, "native", "all", limit=4)
    assert {r["label"] for r in rows} == {"a", "b"}  # --limit spreads over the classes
    assert all(r["input_block_grid"] > 1.2 and not np.isnan(r["block_grid"]) and r["overshoot"] >= 0 for r in rows)


def test_limit_counts_a_volumes_slices_as_images(tmp_path):
    import nibabel as nib

    volume = np.random.default_rng(2).random((32, 32, 12)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 3.0, 1.0])), tmp_path / "t1.nii.gz")
    rows = quality.evaluate([str(tmp_path)], [quality.Method("bicubic")], 3, "native", "all", limit=3)
    assert [r["file"] for r in rows] == [f"{tmp_path / 't1.nii.gz'}#{k}" for k in (0, 4, 8)]  # spread over the slices


def test_dicom_stored_as_lossy_jpeg_gets_the_block_grid_measure_too(tmp_path):
    from pydicom.data import get_testdata_file

    for name in ("JPGExtended.dcm", "CT_small.dcm"):  # lossy JPEG (12-bit extended); uncompressed
        (tmp_path / name).write_bytes(open(get_testdata_file(name), "rb").read())
    rows = quality.evaluate([str(tmp_path)], [quality.Method("bicubic")], 3, "native", "all")
    grid = {Path(r["file"]).name: r["input_block_grid"] for r in rows}
    assert not np.isnan(grid["JPGExtended.dcm"]) and np.isnan(grid["CT_small.dcm"]), grid


def test_neighbourhood_clamp_bounds_the_output_and_is_trained_through():
    torch.manual_seed(0)
    model = create_generator("edsr", scale=3, channels=8, num_blocks=1, clamp_margin=0.02).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # a wild network: its residual would ring far beyond the input
    lr = torch.zeros(1, 1, 16, 16) - 1
    lr[..., 8:] = 1
    sr = model(lr)
    high = torch.nn.functional.interpolate(torch.nn.functional.max_pool2d(lr, 3, 1, 1), scale_factor=3)
    low = -torch.nn.functional.interpolate(torch.nn.functional.max_pool2d(-lr, 3, 1, 1), scale_factor=3)
    assert (sr <= high + 0.04 + 1e-6).all() and (sr >= low - 0.04 - 1e-6).all()
    unclamped = create_generator("edsr", scale=3, channels=8, num_blocks=1).eval()
    unclamped.load_state_dict(model.state_dict())
    assert metrics.edge_overshoot(unclamped(lr), lr, 3).item() > 0.01  # the clamp is what removed it
    assert metrics.edge_overshoot(sr, lr, 3).item() == 0
    with torch.no_grad():
        torch.testing.assert_close(model.fused_for_inference()(lr), sr, atol=2e-5, rtol=0)
    sr.sum().backward()  # gradients reach the network where the clamp does not bite
    assert model.head.weight.grad.abs().sum() > 0
    assert model.config["clamp_margin"] == 0.02  # saved with the weights, so a loaded model clamps as trained
    assert "clamp_margin" not in unclamped.config  # older models' configs are unchanged


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_zero_background_stays_exactly_zero(precision):
    """A skull-stripped scan's background is 0, and a mask of `> 0` must still find the head after
    upscaling: where a pixel's whole 3x3 source neighbourhood is 0, the shipped default gives 0."""
    from scipy import ndimage

    import medsr

    y, x = np.mgrid[:96, :80]
    rng = np.random.default_rng(0)
    head = ((y - 48) ** 2 / 40**2 + (x - 40) ** 2 / 30**2) < 1
    image = np.where(head, rng.integers(3000, 40000, head.shape), 0).astype(np.uint16)
    out = medsr.upscale(image, model="default", scale=3, precision=precision)
    zero = ndimage.minimum_filter((image == 0).astype(np.uint8), size=3, mode="nearest").astype(bool).repeat(3, 0).repeat(3, 1)
    assert zero.sum() > 10000 and (out[zero] == 0).all(), np.unique(out[zero])
    saturated = np.full((40, 40), 65535, np.uint16)  # a flat bright area keeps its value too
    assert (medsr.upscale(saturated, model="default", scale=3, precision=precision) == 65535).all()


def test_light_degradation_is_seeded_and_does_what_it_says():
    lr = torch.rand(4, 1, 40, 40)
    none = LightDegradation(jpeg=0, noise=0).apply(lr, torch.Generator().manual_seed(0))
    assert torch.equal(none, lr)
    heavy = LightDegradation(jpeg=1, jpeg_quality=(10, 10), noise=1, noise_sigma=(5, 5))
    a = heavy.apply(lr, torch.Generator().manual_seed(0))
    b = heavy.apply(lr, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, lr)
    assert torch.equal(a, (a * 255).round() / 255)  # an 8-bit JPEG round trip


@pytest.fixture
def mixed_data(tmp_path, image_folder):
    """Synthetic NIfTI volumes: a bright ball on zero background, as a skull-stripped brain is."""
    volumes = tmp_path / "nifti"
    volumes.mkdir()
    zz, yy, xx = np.mgrid[0:20, 0:72, 0:72]
    for i in range(4):
        ball = ((yy - 36) ** 2 + (xx - 36) ** 2 + (3 * (zz - 10)) ** 2 < (28 + i) ** 2) * (500.0 + 100 * i)
        nib.save(nib.Nifti1Image(ball.astype(np.float32).T, np.eye(4)), str(volumes / f"vol-{i}.nii.gz"))
    mix = {"paper": 0.5, "native": 0.25, "volumes": 0.25, "volume_data": str(volumes), "volume_val": ["vol-2"], "volume_test": ["vol-3"]}
    return image_folder, mix


def test_mixed_sampler_batches_hold_out_volumes_and_resume(mixed_data):
    folder, mix = mixed_data
    sampler = build_sampler([str(folder)], "train", "mixed", 3, 48, seed=0, mix=mix)
    assert set(sampler.sources) == {"paper", "native", "volumes"}
    volumes = sorted(Path(mix["volume_data"]).glob("*.nii.gz"))
    counts = [len(volume_slices([v])) for v in volumes]
    assert 0 < counts[0] < 20  # the end slices, nearly empty, are left out
    assert len(sampler.sources["volumes"]) == counts[0] + counts[1]  # vol-2 is val, vol-3 test
    lr, hr = sampler.next_batch(8)
    assert lr.shape == (8, 1, 16, 16) and hr.shape == (8, 1, 48, 48)
    assert (hr[-2:] == -1).any()  # the volume crops carry the zero background (-1 in [-1, 1])
    state = sampler.state_dict()
    first = sampler.next_batch(8)
    sampler.load_state_dict(state)
    again = sampler.next_batch(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    val = build_sampler([str(folder)], "val", "mixed", 3, 48, mix=mix)
    assert len(val.sources["volumes"]) == counts[2]
    vlr, vhr = val.fixed_pairs(8)
    assert 4 <= len(vlr) <= 8 and torch.equal(vlr, val.fixed_pairs(8)[0])  # fewer where a source has fewer val images
    with pytest.raises(MedsrError, match="unknown mix option"):
        build_sampler([str(folder)], "train", "mixed", 3, 48, mix={**mix, "jpg": 0.5})
    with pytest.raises(MedsrError, match="no volume named vol-30 to hold out"):  # a typo would train on vol-3
        build_sampler([str(folder)], "train", "mixed", 3, 48, mix={**mix, "volume_test": ["vol-30"]})


def test_a_limit_caps_the_volumes_read_and_their_slices(mixed_data, monkeypatch):
    """max_train_images shrinks a mixed recipe's volume source too: a quick run does not decode every volume."""
    folder, mix = mixed_data
    read = []
    monkeypatch.setattr(dataset, "read_image", lambda path, *a, **k: read.append(Path(path).name) or read_image(path, *a, **k))
    sampler = build_sampler([str(folder)], "train", "mixed", 3, 48, limit=1, mix=mix)
    assert [name for name in read if name.startswith("vol-")] == ["vol-0.nii.gz"]
    assert len(sampler.sources["volumes"]) == 1 and len(sampler.sources["paper"]) == 1
    every = build_sampler([str(folder)], "train", "mixed", 3, 48, limit=5, mix=mix)
    assert len(every.sources["volumes"]) == 5  # spread over both training volumes' slices


def test_evaluate_splits_volumes_as_the_models_recipe_held_them_out(mixed_data):
    """The file-name hash would put any of the volumes in the test split, a training one too."""
    _, mix = mixed_data
    held_out = quality.held_out_volumes({"medsr_recipe": json.dumps({"mix": mix})})
    assert held_out == {"vol-2": "val", "vol-3": "test"}
    method = quality.Method("bicubic", held_out=held_out)
    scored = {}
    for split in ("train", "val", "test"):
        rows = quality.evaluate([mix["volume_data"]], [method], 3, "native", split)
        files = {row["file"].split("#")[0] for row in rows}
        scored[split] = sorted(Path(f).name for f in files)
        assert all("#" in row["file"] for row in rows) and len({row["file"] for row in rows}) == len(rows)  # one row per slice
    assert scored == {"train": ["vol-0.nii.gz", "vol-1.nii.gz"], "val": ["vol-2.nii.gz"], "test": ["vol-3.nii.gz"]}


def test_a_recipes_zero_background_cuts_reach_the_paper_and_native_pairs(mixed_data):
    from medsr.data.augment import Augment

    folder, mix = mixed_data
    batches = {share: build_sampler([str(folder)], "train", "mixed", 3, 48, seed=0, mix=mix,
                                    augment=Augment(zero_background=share)).next_batch(16)
               for share in (0.0, 1.0)}
    background = {share: (hr[:12] == -1).flatten(1).any(1) for share, (_, hr) in batches.items()}  # paper and native rows
    assert not background[0.0].any()  # the synthetic images have no zero background of their own
    assert background[1.0].sum() >= 8  # cut (an ellipse may also cover a whole crop)
    lr, hr = batches[1.0]
    # the paper pairs' LR is made again from the cut HR (the native crops' LR then gets noise and JPEG as well)
    assert torch.allclose(lr[:8], degrade.downscale((hr[:8] + 1) / 2, 3).clamp(0, 1) * 2 - 1, atol=1e-5)


def test_init_partial_starts_another_scale_from_a_trained_model(image_folder, tmp_path):
    x3 = Trainer(tiny_config(image_folder, tmp_path / "a", model="edsr", adversarial_weight=0, epochs=1)).fit()
    start, _ = zoo.load(x3)
    with pytest.raises(MedsrError, match="init_partial"):
        Trainer(tiny_config(image_folder, tmp_path / "b", model="edsr", adversarial_weight=0, scale=2, init_from=str(x3)))
    trainer = Trainer(tiny_config(image_folder, tmp_path / "c", model="edsr", adversarial_weight=0, scale=2, init_from=str(x3),
                                  init_partial="true"))
    own = trainer.generator.state_dict()
    assert torch.equal(own["head.weight"], start.state_dict()["head.weight"])
    assert own["upsample.0.weight"].shape != start.state_dict()["upsample.0.weight"].shape


def test_a_fused_upsampler_recipe_starts_from_a_convs_model(image_folder, tmp_path):
    source = Trainer(tiny_config(image_folder, tmp_path / "a", model="edsr", adversarial_weight=0, epochs=1)).fit()
    start, _ = zoo.load(source)
    trainer = Trainer(tiny_config(image_folder, tmp_path / "b", model="edsr", adversarial_weight=0, init_from=str(source),
                                  generator="{channels: 8, num_blocks: 1, upsampler: fused}"))
    expected = start.with_fused_upsampler().state_dict()
    own = trainer.generator.state_dict()
    assert set(own) == set(expected)
    for key in own:
        assert torch.equal(own[key], expected[key]), key


def test_a_deeper_recipe_starts_as_the_trained_model(image_folder, tmp_path):
    torch.manual_seed(0)
    start = create_generator("edsr", channels=8, num_blocks=1, clamp_margin=0.04, upsampler="fused").eval()
    with torch.no_grad():
        for p in start.parameters():
            p.normal_(0, 0.1)
    save_model(tmp_path / "start.safetensors", start.state_dict(), "edsr", start.config)
    trainer = Trainer(tiny_config(image_folder, tmp_path, model="edsr", adversarial_weight=0, init_from=str(tmp_path / "start.safetensors"),
                                  generator="{channels: 8, num_blocks: 3, clamp_margin: 0.04, upsampler: fused}"))
    deep = trainer.generator.eval()
    assert len(deep.body) == 4 and deep.config["num_blocks"] == 3
    assert torch.equal(deep.state_dict()["body.3.weight"], start.state_dict()["body.1.weight"])  # the closing conv moved
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(deep(x), start(x), atol=1e-6, rtol=0)
        assert (start(x) - create_generator("edsr", **deep.config).eval()(x)).abs().max() > 1e-3  # a fresh one differs
    with pytest.raises(ValueError, match="fewer"):
        deep.deepened(2)
