"""Hallucination maps: honest, texture-inventing and blob-inventing SR images on a small synthetic scan."""

import numpy as np
import pytest
import torch
from PIL import Image

from medsr.data import degrade
from medsr.errors import MedsrError
from medsr.figures import display_window, to_uint8, windowed
from medsr.inference import hallucination
from medsr.inference.upscaler import Upscaler
from medsr.models import create_generator

torch.set_num_threads(1)

SCALE = 3
BOX = (slice(18, 42), slice(18, 42))  # HR pixels, on LR block boundaries


def _box_mask(shape, box=BOX, margin=0):
    mask = np.zeros(shape, dtype=bool)
    mask[box[0].start - margin : box[0].stop + margin, box[1].start - margin : box[1].stop + margin] = True
    return mask


@pytest.fixture(scope="module")
def scan():
    """(hr, lr, honest): a smooth 60x60 image, its x3 LR and the bicubic upscale of that LR."""
    yy, xx = np.mgrid[0:60, 0:60] / 60.0
    hr = 0.4 + 0.2 * np.sin(3 * xx) * np.cos(2 * yy) + 0.2 * np.exp(-((xx - 0.6) ** 2 + (yy - 0.4) ** 2) / 0.05)
    hr = torch.from_numpy(hr.astype(np.float32))[None, None]
    lr = degrade.downscale(hr, SCALE)
    honest = degrade.upscale_baseline(lr, SCALE, "bicubic").clamp(0, 1)
    return hr[0, 0].numpy(), lr[0, 0].numpy(), honest[0, 0].numpy()


class Fixed:
    """An 'upscaler' that returns a given image: lets a test choose exactly what the model invented."""

    def __init__(self, sr, scale=SCALE):
        self.sr, self.scale = sr, scale

    def upscale(self, lr):
        return self.sr


def test_true_hr_is_perfectly_consistent_and_bicubic_nearly(scan):
    hr, lr, honest = scan
    assert hallucination.consistency_residual(hr, lr, SCALE).max() < 1e-5  # the same degradation as medsr's LR
    residual = hallucination.consistency_residual(honest, lr, SCALE)
    assert residual.shape == hr.shape and residual.dtype == np.float32
    assert residual.mean() < 0.002 and residual.max() < 0.005  # bicubic's own blur, on a smooth image


def test_invented_texture_shows_in_disagreement_not_in_consistency(scan):
    _, lr, honest = scan
    inside = _box_mask(honest.shape)
    checker = 0.1 * (-1.0) ** np.add.outer(np.arange(60), np.arange(60))
    faker = np.clip(honest + checker * inside, 0, 1).astype(np.float32)
    dis = hallucination.disagreement(faker, honest)
    assert dis[inside].mean() > 0.08
    assert dis[inside].mean() > 10 * dis[~inside].mean()
    # the blind spot: a zero-mean texture nearly vanishes in the downscale
    cons = hallucination.consistency_residual(faker, lr, SCALE)
    assert cons[inside].mean() < 0.3 * dis[inside].mean()
    maps = hallucination.hallucination_maps(lr, Fixed(faker), Fixed(honest))
    combined = maps["combined"]
    assert combined[inside].mean() > 10 * combined[~inside].mean()
    assert combined[inside].mean() > 1.0  # a 10 %-of-range texture is about 1 unit or more


def test_brightened_blob_lights_up_consistency(scan):
    _, lr, honest = scan
    inside = _box_mask(honest.shape)
    blob = np.clip(honest + 0.2 * inside, 0, 1).astype(np.float32)
    cons = hallucination.consistency_residual(blob, lr, SCALE)
    far = ~_box_mask(honest.shape, margin=2 * SCALE + 3)  # beyond the antialiased kernel's reach
    assert cons[inside].mean() > 0.1
    assert cons[inside].mean() > 10 * cons[far].mean()
    maps = hallucination.hallucination_maps(lr, Fixed(blob))  # no reference: combined is the residual alone
    assert set(maps) == {"sr", "consistency", "combined"}
    assert maps["combined"][inside].mean() > 10 * maps["combined"][far].mean()


def test_combined_is_in_units_of_ten_percent_of_the_image_range(scan):
    _, lr, honest = scan
    span = float(lr.max() - lr.min())
    maps = hallucination.hallucination_maps(lr, Fixed(honest), Fixed(np.clip(honest + 0.05 * span, 0, 1)))
    assert maps["disagreement"][20:40, 20:40] == pytest.approx(0.05 * span, abs=1e-3)
    assert maps["combined"][20:40, 20:40] == pytest.approx(0.5, abs=0.02)


def _tiny_upscaler(seed, random_tail):
    torch.manual_seed(seed)
    model = create_generator("edsr", scale=SCALE, channels=8, num_blocks=1)
    if random_tail:  # the tail starts at zero (= plain bicubic); make this one invent something
        torch.nn.init.normal_(model.tail.weight, std=0.05)
    return Upscaler(model, SCALE, torch.device("cpu"), "fp32", tile=0)


def test_real_upscalers_end_to_end(scan):
    _, lr, _ = scan
    model, reference = _tiny_upscaler(0, True), _tiny_upscaler(1, False)
    maps = hallucination.hallucination_maps(lr, model, reference)
    assert set(maps) == {"sr", "consistency", "disagreement", "combined"}
    for value in maps.values():
        assert value.shape == (60, 60) and value.dtype == np.float32 and np.isfinite(value).all()
        assert value.min() >= 0
    assert maps["disagreement"].mean() > 1e-3  # the random tail makes the two differ
    # a stack is mapped plane by plane; a given SR image is used as is
    stack = hallucination.hallucination_maps(np.stack([lr, lr[::-1]]), model, reference)
    assert stack["combined"].shape == (2, 60, 60)
    np.testing.assert_allclose(stack["combined"][0], maps["combined"], atol=1e-6)
    given = hallucination.hallucination_maps(lr, model, sr01=maps["sr"] * 0 + 0.5)
    assert np.all(given["sr"] == 0.5)


def test_mismatched_scales_and_shapes_are_one_line_errors(scan):
    _, lr, honest = scan
    with pytest.raises(MedsrError, match="same scale"):
        hallucination.hallucination_maps(lr, Fixed(honest), Fixed(honest, scale=2))
    with pytest.raises(MedsrError, match="not x3"):
        hallucination.consistency_residual(honest[:57], lr, SCALE)
    with pytest.raises(MedsrError, match="differ in shape"):
        hallucination.disagreement(honest, honest[:30])


def test_ensemble_spread():
    outputs = [np.full((4, 5), v, dtype=np.float32) for v in (0.2, 0.4, 0.6)]
    spread = hallucination.ensemble_spread(outputs)
    assert spread.shape == (4, 5) and spread.dtype == np.float32
    np.testing.assert_allclose(spread, np.std([0.2, 0.4, 0.6]), rtol=1e-5)
    with pytest.raises(MedsrError, match="at least 2"):
        hallucination.ensemble_spread(outputs[:1])


def test_overlay_colours_only_where_the_map_is_high(scan):
    _, _, honest = scan
    inside = _box_mask(honest.shape)
    picture = hallucination.overlay(honest, np.where(inside, 5.0, 0.0))
    assert picture.shape == (60, 60, 3) and picture.dtype == np.uint8
    r, g, b = (picture[..., i].astype(int) for i in range(3))
    assert np.all(r[inside] > b[inside] + 50)  # tinted
    gray = to_uint8(honest)
    for channel in (r, g, b):
        assert np.array_equal(channel[~inside], gray[~inside])  # untouched gray


def test_write_maps_round_trips(tmp_path, scan):
    _, lr, honest = scan
    faker = np.clip(honest + 0.1 * _box_mask(honest.shape), 0, 1).astype(np.float32)
    maps = hallucination.hallucination_maps(lr, Fixed(faker), Fixed(honest))
    png, tif = hallucination.write_maps(tmp_path / "out" / "scan", maps)
    assert png.name == "scan.uncertainty.png" and tif.name == "scan.uncertainty.tif"
    with Image.open(png) as img:
        picture = np.asarray(img)
        assert img.mode == "RGB" and img.size == (60, 60 + hallucination.legend(60).shape[0])  # the overlay, its legend below
    shown = windowed(maps["sr"], display_window(maps["sr"]))  # drawn from its 0.5th to its 99.5th percentile
    assert np.array_equal(picture[:60], hallucination.overlay(shown, maps["combined"]))
    legend = picture[60:].astype(int)
    assert (legend[..., 0] - legend[..., 2] > 100).any()  # the red-to-yellow colour bar is drawn
    with Image.open(tif) as img:
        assert np.array_equal(np.asarray(img), maps["combined"])  # float32, bit for bit
        description = img.tag_v2[270]
    assert "10% of the input image's intensity range" in description and "no colour below 0.2" in description.lower()
    assert [p.name for p in tmp_path.joinpath("out").iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_write_maps_stack_and_never_over_an_input(tmp_path, scan):
    _, lr, honest = scan
    stack = hallucination.hallucination_maps(np.stack([lr, lr]), Fixed(np.stack([honest, honest])))
    _, tif = hallucination.write_maps(tmp_path / "vol", stack)
    with Image.open(tif) as img:
        assert img.n_frames == 2
        img.seek(1)
        assert np.array_equal(np.asarray(img), stack["combined"][1])
    victim = tmp_path / "x.uncertainty.png"
    victim.write_bytes(b"input")
    with pytest.raises(MedsrError, match="overwrite this input"):
        hallucination.write_maps(tmp_path / "x", stack, protect=[victim])
    assert victim.read_bytes() == b"input"


def test_names():
    assert hallucination.stem_for("out/a/scan.dcm").as_posix() == "out/a/scan"
    assert hallucination.stem_for("out/brain.nii.gz").as_posix() == "out/brain"
    assert hallucination.reference_model_name("default") == "default-gan"
    assert hallucination.reference_model_name("default-gan") == "default"
    assert hallucination.reference_model_name("paper") == "default"
    assert hallucination.reference_model_name("default-x2", 2) is None and hallucination.reference_model_name("default-x4", 4) is None


def test_reference_is_chosen_by_the_weights_not_by_the_name(tmp_path, monkeypatch, scan):
    from medsr import api, zoo

    copy = tmp_path / "run" / "model.safetensors"  # the default's weights under another name: file and run folder
    copy.parent.mkdir()
    copy.write_bytes(zoo.resolve("default").read_bytes())
    assert hallucination.reference_model_name(copy) == "default-gan"
    assert hallucination.reference_model_name(copy.parent) == "default-gan"
    _, lr, _ = scan
    assert api.uncertainty_map(lr, model=str(copy))["disagreement"].max() > 0  # was compared with itself: all 0
    # a model is never its own reference: with default-gan holding the default's weights, there is none
    shipped = zoo.shipped_models()
    monkeypatch.setattr(zoo, "shipped_models", lambda: dict(shipped, **{"default-gan": shipped["default"]}))
    assert hallucination.reference_model_name("default") is None


def test_an_explicit_reference_holding_the_models_own_weights_is_refused(tmp_path, scan):
    from medsr import api, zoo

    copy = tmp_path / "mine.safetensors"
    copy.write_bytes(zoo.resolve("default").read_bytes())
    _, lr, _ = scan
    with pytest.raises(MedsrError, match="same weights"):
        api.uncertainty_map(lr, model="default", reference_model=str(copy))
    hallucination.check_reference("default", "default-gan")  # another model: fine


@pytest.mark.parametrize("width", [120, 192, 400])
def test_the_overlays_legend_fits_a_small_image(width):
    """Its text wraps and its labels stay inside: on a 192 px output it was cut at "% of the image"."""
    def white(strip):
        return int((strip.min(axis=-1) > 100).sum())  # the text and ticks (the bar runs red to yellow: no blue)

    strip = hallucination.legend(width)
    assert white(strip) == white(hallucination.legend(2000))  # every letter, tick and label drawn, none cut off
    assert strip.shape[0] == 58 or width < 400  # a wide image keeps the one-line legend


def test_maps_and_overlay_made_a_strip_at_a_time_are_the_whole_images(monkeypatch):
    """Strips of 7 LR rows (a last one short) with their margins give exactly the whole image's maps and overlay."""
    rng = np.random.default_rng(4)
    lr = rng.random((40, 33)).astype(np.float32)
    sr = np.clip(np.kron(lr, np.ones((3, 3), np.float32)) + rng.normal(0, 0.02, (120, 99)), 0, 1).astype(np.float32)
    reference = np.clip(sr + rng.normal(0, 0.05, sr.shape), 0, 1).astype(np.float32)
    whole = {"consistency": hallucination.consistency_residual(sr, lr, 3), "disagreement": hallucination.disagreement(sr, reference)}
    whole["combined"] = hallucination.combine(whole["consistency"], lr, whole["disagreement"])
    picture = hallucination.overlay(sr, whole["combined"])
    monkeypatch.setattr(hallucination, "STRIP_LR_PIXELS", 33 * 7)
    maps = hallucination._plane_maps(lr, sr, reference, 3)
    for key in whole:
        np.testing.assert_array_equal(maps[key], whole[key], err_msg=key)
    np.testing.assert_array_equal(hallucination.overlay(sr, maps["combined"]), picture)
    with pytest.raises(MedsrError, match="differ in shape"):
        hallucination._plane_maps(lr, sr, reference[:, :-3], 3)
