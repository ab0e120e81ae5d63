"""The Python API: docs/API.md's examples run as written, and the API's own promises."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import ROOT

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


@pytest.mark.parametrize("bad", [np.zeros((0, 5)), np.zeros((2, 2, 2, 2)), np.array([[np.nan, 1.0]]), np.array([["a"]]),
                                 np.zeros((4, 4), dtype=bool)])
def test_bad_arrays_raise_one_medsr_error(bad):
    with pytest.raises(medsr.MedsrError):
        medsr.upscale(bad)


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
