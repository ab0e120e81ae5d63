"""The Python API: docs/API.md's examples run as written, and the API's own promises."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

import medsr


def test_the_examples_in_docs_api_md_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "API.md").read_text(), flags=re.S)
    assert len(blocks) >= 5
    # an example that shows an error must fail when the error is not raised (try/except alone passes either way)
    for block in blocks:
        if "except " in block:
            assert "else:\n    raise AssertionError" in block, block
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/API.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert (tmp_path / "mr-x3.dcm").is_file() and (tmp_path / "mr-x3.png").is_file()


def test_a_scale_the_model_cannot_make_is_an_error_that_says_what_to_do():
    lr = np.zeros((10, 12), np.uint8)
    with pytest.raises(medsr.MedsrError, match=r"model default upscales x3, not x2; drop --scale \(scale= in Python\).*default-x2"):
        medsr.upscale(lr, model="default", scale=2)
    assert medsr.upscale(lr, scale=2).shape == (20, 24)  # without a model, scale picks the shipped default for it
    with pytest.raises(medsr.MedsrError, match=r"^scale 5: no shipped model upscales x5 .*model= in Python"):
        medsr.upscale(lr, scale=5)  # said in the API's words too, not only the CLI's


def test_arrays_keep_their_dtype_and_range():
    rng = np.random.default_rng(1)
    for dtype in (np.uint8, np.uint16):
        lr = (rng.random((20, 24)) * np.iinfo(dtype).max).astype(dtype)
        sr = medsr.upscale(lr, precision="fp32")
        assert sr.dtype == dtype and sr.shape == (60, 72)
    unit = rng.random((3, 16, 16)).astype(np.float32)
    sr = medsr.upscale(unit, precision="fp32")
    assert sr.shape == (3, 48, 48) and sr.dtype == np.float32 and 0 <= sr.min() and sr.max() <= 1


def test_the_api_matches_the_upscaler_it_wraps():
    lr = np.random.default_rng(2).random((24, 24)).astype(np.float32)
    direct = medsr.load_model("default", precision="fp32").upscale(lr)
    np.testing.assert_allclose(medsr.upscale(lr, precision="fp32"), direct, atol=1e-6)
    assert medsr.load_model("default", precision="fp32") is medsr.load_model("default", precision="fp32")


def test_wide_integers_and_extreme_floats_come_back_in_their_own_range():
    """An int64 array (np.array of a list of ints) or int32 array is the same image as its uint16 copy;
    it was squeezed from the dtype's whole range into float32 and came back as garbage (1e16)."""
    lr = (np.random.default_rng(3).random((24, 20)) * 1000).astype(np.uint16)
    expected = medsr.upscale(lr.astype(np.float32), precision="fp32")
    for dtype in (np.int32, np.int64, np.uint64):
        sr = medsr.upscale(lr.astype(dtype), precision="fp32")
        assert sr.dtype == dtype and np.abs(sr.astype(np.float64) - expected).max() <= 0.5, dtype
    huge = np.array([[-3e38, 3e38], [3e38, -3e38]], dtype=np.float32).repeat(8, 0).repeat(8, 1)
    assert np.isfinite(medsr.upscale(huge, precision="fp32")).all()


@pytest.mark.parametrize("bad", [np.zeros((0, 5)), np.zeros((2, 2, 2, 2)), np.array([[np.nan, 1.0]]), np.array([["a"]]),
                                 np.zeros((4, 4), dtype=bool), np.zeros((32, 40, 3), np.uint8), np.zeros((32, 40, 2), np.uint8),
                                 [[1, 2], [3, 4]]])
def test_bad_arrays_raise_one_medsr_error(bad):
    with pytest.raises(medsr.MedsrError):
        medsr.upscale(bad)


def test_upscale_file_writes_the_format_asked_for_under_its_extension(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((10, 12), 80, np.uint8)).save(tmp_path / "scan.png")
    written = medsr.upscale_file(tmp_path / "scan.png", tmp_path / "out.png", format="tiff")
    assert written == tmp_path / "out.tif" and Image.open(written).format == "TIFF" and not (tmp_path / "out.png").exists()
    assert medsr.upscale_file(tmp_path / "scan.png", tmp_path / "kept.tiff", format="tiff") == tmp_path / "kept.tiff"  # its own


def test_upscale_volume_does_not_depend_on_the_integer_type():
    """An int16 volume (as the API example has) is the same volume as its float copy; its dtype's range
    put a zero background at mid-gray for the through-plane model, worse than cubic interpolation."""
    zz, yy, xx = np.mgrid[:12, :32, :32]
    head = ((zz - 6) ** 2 / 5**2 + (yy - 16) ** 2 / 12**2 + (xx - 16) ** 2 / 12**2) < 1
    volume = np.where(head, 600 + 300 * np.sin(xx / 3.0) * np.cos(yy / 4.0), 0).astype(np.int16)
    as_int = medsr.upscale_volume(volume, (4.0, 1.0, 1.0), precision="fp32")
    as_float = medsr.upscale_volume(volume.astype(np.float32), (4.0, 1.0, 1.0), precision="fp32")
    assert as_int.array.dtype == np.int16 and np.abs(as_int.array - as_float.array).max() <= 1
    four_slices = medsr.upscale_volume(np.moveaxis(volume[:4], 0, 2), (1.0, 1.0, 4.0), precision="fp32")  # (X, Y, 4): not colour
    assert four_slices.array.shape[:2] == (32, 32) and four_slices.array.shape[2] > 4


def test_uncertainty_map_of_a_jpeg_file_describes_the_output_upscale_gives(tmp_path):
    from PIL import Image

    pixels = (np.random.default_rng(4).random((30, 36)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "scan.jpg", quality=80)
    maps = medsr.uncertainty_map(tmp_path / "scan.jpg", precision="fp32")
    np.testing.assert_allclose(maps["sr"], medsr.upscale(tmp_path / "scan.jpg", precision="fp32"), atol=1e-6)  # default-jpeg's


@pytest.mark.parametrize("call", [lambda: medsr.upscale(""), lambda: medsr.upscale_file("", "x.png"),
                                  lambda: medsr.upscale_file(__file__, "")])
def test_an_empty_path_is_said_to_be_empty_not_taken_for_the_current_folder(call):
    with pytest.raises(medsr.MedsrError, match="is an empty path"):
        call()
    with pytest.raises(medsr.MedsrError, match="the name is 304 bytes, over the 255 that file systems allow"):
        medsr.upscale_file(__file__, "x" * 300 + ".png")  # not an OSError


def test_one_gray_channel_is_an_image_not_a_stack_of_columns():
    lr = (np.random.default_rng(1).random((20, 24)) * 255).astype(np.uint8)
    sr = medsr.upscale(lr[..., None], precision="fp32")
    assert sr.shape == (60, 72, 1) and np.array_equal(sr[..., 0], medsr.upscale(lr, precision="fp32"))


def test_upscale_file_names_a_folder_or_an_unknown_extension_as_the_problem(tmp_path):
    source = tmp_path / "scan.png"
    Image.fromarray(np.full((12, 16), 90, np.uint8)).save(source)
    (tmp_path / "out").mkdir()
    with pytest.raises(medsr.MedsrError, match=r"out: is a folder; name the file to write in it, e\.g\. .*out/scan\.png"):
        medsr.upscale_file(source, tmp_path / "out")
    with pytest.raises(medsr.MedsrError, match=r"x\.xyz: \.xyz is not a format medsr writes"):
        medsr.upscale_file(source, tmp_path / "x.xyz")  # it was a PNG under that name
    assert not (tmp_path / "x.xyz").exists()


def test_upscale_file_never_overwrites_its_source(tmp_path):
    from PIL import Image

    path = tmp_path / "scan.png"
    Image.fromarray(np.full((10, 10), 80, np.uint8)).save(path)
    before = path.read_bytes()
    with pytest.raises(medsr.MedsrError, match="overwrite"):
        medsr.upscale_file(path, path)
    assert path.read_bytes() == before


def test_list_models_survives_importing_the_models_package():
    """`medsr.models` is also the architectures' subpackage; the API's function must not be shadowed by it."""
    import medsr.models  # noqa: F401

    assert medsr.list_models()["default"] == 3


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_a_shipped_model_at_each_scale(scale):
    name = {2: "default-x2", 3: "default", 4: "default-x4"}[scale]
    assert medsr.list_models()[name] == scale
    lr = np.random.default_rng(scale).random((20, 18)).astype(np.float32)
    assert medsr.upscale(lr, model=name, scale=scale, precision="fp32").shape == (20 * scale, 18 * scale)
    maps = medsr.uncertainty_map(lr, model=name, precision="fp32")
    assert maps["combined"].shape == (20 * scale, 18 * scale)
    assert ("disagreement" in maps) == (scale == 3)  # no second shipped model at x2 and x4


@pytest.mark.parametrize("call", [
    lambda lr: medsr.upscale(lr, tile=7.5), lambda lr: medsr.upscale(lr, scale="3"), lambda lr: medsr.upscale(lr, device=None),
    lambda lr: medsr.upscale_volume(np.zeros((8, 8, 4)), spacing=4.0), lambda lr: medsr.upscale_volume(np.zeros((8, 8, 4)), spacing="abc"),
    lambda lr: medsr.upscale_volume(np.zeros((8, 8, 4)), spacing=(1, 1, 4), slice_axis=1.0),
    lambda lr: medsr.load_model("default", precision="fp32").upscale(lr),  # uint8 into the [0, 1] upscaler: all white before
    lambda lr: medsr.load_model("default", precision="fp32").upscale(lr.astype(np.float32)),  # 0..255 floats likewise
    lambda lr: medsr.load_model("default", precision="fp32").upscale(lr[0].astype(np.float32) / 255),  # 1-D
    lambda lr: medsr.upscale_file(lr, "x.png"), lambda lr: medsr.upscale_file(__file__, None),
    lambda lr: medsr.write_image("x.png", lr, scale=3), lambda lr: medsr.upscale_volume(__file__, spacing=(1, 1, 4)),
])
def test_wrong_argument_types_and_ranges_are_one_medsr_error(call):
    lr = (np.random.default_rng(0).random((20, 24)) * 255).astype(np.uint8)
    with pytest.raises(medsr.MedsrError) as err:
        call(lr)
    assert "\n" not in str(err.value)


def test_tile_auto_is_the_default_tile():
    assert medsr.load_model("default", tile="auto").tile == medsr.load_model("default").tile
