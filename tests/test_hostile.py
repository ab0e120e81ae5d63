"""Hostile and broken inputs: every reader, and `medsr upscale`, must give a correct result or a
one-line error naming the file; never a traceback, a hang or unbounded memory.

Truncations and byte corruptions are chosen by hypothesis (derandomized, so CI sees the same
examples every run); the case generators and the pass/fail judge live in hostile_cases.py, which
benchmarks/fuzz_report.py runs with larger counts. Everything is built in tmp_path from images of
a few dozen pixels; the upscale tests use an untrained 4-channel EDSR (nothing is trained).
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import hostile_cases as hc
import numpy as np
import pydicom
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

import medsr.io.dispatch as dispatch
from medsr.errors import MedsrError
from medsr.io import read_image
from medsr.io.types import MAX_PIXELS

torch.set_num_threads(1)

FUZZ = settings(max_examples=30, deadline=10_000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
CUTS = st.integers(min_value=0, max_value=10**6)  # taken modulo the file length
EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One folder for the fuzz cases (hypothesis cannot use the function-scoped tmp_path)."""
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained x3 EDSR with 4 channels and one block, saved like a shipped model."""
    from medsr import zoo
    from medsr.models import create_generator

    torch.manual_seed(0)
    model = create_generator("edsr", scale=3, channels=4, num_blocks=1)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    zoo.save_model(path, model.state_dict(), "edsr", model.config)
    return path


def upscaler(model_name: str | Path):
    from medsr import zoo
    from medsr.inference.upscaler import Upscaler

    model, meta = zoo.load(model_name, "cpu")
    return Upscaler(model, int(meta["medsr_scale"]), torch.device("cpu"), "fp32", 256, 16)


def refused(path: Path, *words: str) -> str:
    """read_image(path) must raise a one-line MedsrError naming the file and containing `words`."""
    with pytest.raises(MedsrError) as info:
        read_image(path)
    message = hc.check_error(info.value, path)
    for word in words:
        assert word in message, message
    return message


# ------------------------------------------------------------------ fuzzing: cuts and corruption


@pytest.mark.parametrize("fmt", hc.FORMATS)
def test_fuzz_starting_points_are_good_files(scratch, fmt):
    assert hc.judge_bytes(scratch, "good" + hc.SUFFIX[fmt], hc.good_bytes(fmt), hc.good_shape(fmt)) == "read"


@pytest.mark.parametrize("fmt", hc.FORMATS)
@FUZZ
@given(cut=CUTS)
def test_truncated_files(scratch, fmt, cut):
    data = hc.truncated(fmt, cut)
    # A file that still reads after the cut must be the whole image (judge checks the shape) ...
    outcome = hc.judge_bytes(scratch, "cut" + hc.SUFFIX[fmt], data, hc.good_shape(fmt))
    # ... and losing half of it always loses pixels.
    if len(data) <= len(hc.good_bytes(fmt)) // 2:
        assert outcome == "refused"


@pytest.mark.parametrize("fmt", hc.FORMATS)
@FUZZ
@given(edits=EDITS)
def test_corrupted_files(scratch, fmt, edits):
    # A corrupted file that still reads is also written back, as upscale would: damaged headers
    # are copied into derived DICOM and NIfTI files.
    hc.judge_bytes(scratch, "bad" + hc.SUFFIX[fmt], hc.corrupted(fmt, edits), write_back=True)


# Found by the fuzzers above: each once raised something other than MedsrError, or gave NaN pixels.
REGRESSIONS = {  # name -> (bytes, outcome judge must give)
    "bad-vr.dcm": (hc.dicom_bad_vr, "refused"),  # NotImplementedError where the element was first touched
    "low-offset.nii": (lambda: hc.nifti_patched(vox_offset=209.0), "refused"),  # nibabel HeaderDataError
    "negative-dim.nii": (lambda: hc.nifti_patched(dim=(3, 6, -17147, 4, 1, 1, 1, 1)), "refused"),  # OverflowError from mmap
    "huge-intercept.nii": (lambda: hc.nifti_patched(scl_slope=1.0, scl_inter=1e30), "read"),  # was NaN; all voxels equal in float64
    "wide-range.nii": (lambda: hc.nifti_bytes(np.array([-1.7e308, 1.7e308]).reshape(2, 1, 1)), "refused"),  # span overflows
}


@pytest.mark.parametrize("name", REGRESSIONS)
def test_fuzz_regressions(tmp_path, name):
    make, outcome = REGRESSIONS[name]
    assert hc.judge_bytes(tmp_path, name, make()) == outcome


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".dcm", ".nii", ".nii.gz"])
def test_empty_and_text_files_with_image_extensions(tmp_path, suffix):
    empty = hc.write(tmp_path, "empty" + suffix, b"")
    refused(empty, "empty")
    text = hc.write(tmp_path, "notes" + suffix, b"Patient notes, not an image.\nSecond line.\n")
    refused(text)


# ------------------------------------------------------------------ decompression bombs


def test_decompression_bombs_refused_fast_in_bounded_memory(tmp_path):
    """Each bomb is refused from its header in well under a second, and the reading process's
    peak memory grows by less than 64 MiB (the 480^3 .nii.gz once took 14 s and 2.4 GB)."""
    result = subprocess.run([sys.executable, "-c", hc.BOMB_SCRIPT, str(tmp_path), str(Path(__file__).parent)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    for name, (outcome, seconds) in report["files"].items():
        assert outcome != "read" and str(tmp_path / name) in outcome and "\n" not in outcome
        assert f"limit {MAX_PIXELS}" in outcome, outcome
        assert seconds < 1.0, (name, seconds)
    assert report["rss_growth_mib"] < 64, report


# ------------------------------------------------------------------ tiny images


@pytest.mark.parametrize("fmt", ["png", "jpeg", "tiff", "dicom", "nii.gz"])
@pytest.mark.parametrize("size", [(1, 1), (2, 2), (1, 3)])
def test_tiny_images_read_and_upscale(tmp_path, tiny_model, fmt, size):
    path = hc.write(tmp_path, "tiny" + hc.SUFFIX[fmt], hc.tiny_bytes(fmt, *size))
    image = read_image(path)
    expected = size if not fmt.startswith("nii") else (1, *size)
    assert image.pixels.shape == expected
    out = upscaler(tiny_model).upscale(image.pixels)
    assert out.shape == (*expected[:-2], size[0] * 3, size[1] * 3)
    assert np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("size", [(1, 1), (2, 2)])
def test_shipped_default_keeps_tiny_constant_images(size):
    """A constant image has one right answer; the shipped default model gives it within 0.03."""
    up = upscaler("default")
    for value in (0.0, 0.5, 1.0):
        out = up.upscale(np.full(size, value, np.float32))
        assert out.shape == (size[0] * 3, size[1] * 3)
        np.testing.assert_allclose(out, value, atol=0.03)


# ------------------------------------------------------------------ raster modes and depths


def test_png_modes_read_as_one_gray_channel(tmp_path):
    rng = np.random.default_rng(3)
    gray16 = rng.integers(0, 65536, (5, 6)).astype(np.uint16)
    image = read_image(hc.write(tmp_path, "g16.png", hc.raster_bytes(gray16, "png")))
    assert image.meta.bit_depth == 16
    np.testing.assert_array_equal(np.rint(image.pixels * 65535), gray16)

    rgba = rng.integers(0, 256, (5, 6, 4)).astype(np.uint8)
    luma = rgba[..., :3].astype(float) @ [0.299, 0.587, 0.114]  # ITU-R 601 luma, as Pillow's "L"
    image = read_image(hc.write(tmp_path, "rgba.png", hc.raster_bytes(rgba, "png")))
    assert image.meta.bit_depth == 8 and image.pixels.shape == (5, 6)
    assert np.abs(image.pixels * 255 - luma).max() <= 1

    la = rng.integers(0, 256, (5, 6, 2)).astype(np.uint8)
    image = read_image(hc.write(tmp_path, "la.png", hc.raster_bytes(la, "png")))
    np.testing.assert_array_equal(np.rint(image.pixels * 255), la[..., 0])  # alpha dropped, gray kept

    palette = PILImage.fromarray(rgba[..., :3]).quantize(colors=8)
    colours = np.array(palette.getpalette()[: 8 * 3]).reshape(8, 3)
    palette.save(tmp_path / "p.png")
    image = read_image(tmp_path / "p.png")
    expected = colours[np.array(palette)] @ [0.299, 0.587, 0.114]  # palette colours, not indices
    assert image.meta.bit_depth == 8 and np.abs(image.pixels * 255 - expected).max() <= 1


@pytest.mark.parametrize("name, data", [
    ("la16.png", lambda a: hc.png_raw(np.stack([a, a], -1), 4, 16)),
    ("rgb16.png", lambda a: hc.png_raw(np.stack([a, a, a], -1), 2, 16)),
    ("rgb16.tif", lambda a: hc.tiff_raw(np.stack([a, a, a], -1), 16)),
])
def test_sixteen_bit_colour_refused_not_cut_to_8_bits(tmp_path, name, data):
    """Pillow hands these over as 8 bits per sample; reading them so would lose 8 bits silently."""
    ramp = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    refused(hc.write(tmp_path, name, data(ramp)), "16-bit", "grayscale")


def test_sixteen_bit_gray_tiff_by_hand_reads_exactly(tmp_path):
    ramp = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    image = read_image(hc.write(tmp_path, "g16.tif", hc.tiff_raw(ramp, 16)))
    assert image.meta.bit_depth == 16
    np.testing.assert_array_equal(np.rint(image.pixels * 65535), ramp)


# ------------------------------------------------------------------ DICOM and NIfTI specials


def test_dicom_without_pixel_data_and_with_float_pixels(tmp_path):
    ds = hc.dicom_dataset(np.ones((4, 4)))
    del ds.PixelData
    refused(hc.write(tmp_path, "nopix.dcm", hc.dicom_bytes(ds)), "no pixel data")
    ds = hc.dicom_dataset(np.ones((4, 4)), bits_allocated=32, bits_stored=32)
    del ds.PixelData
    ds.FloatPixelData = np.ones(16, "<f4").tobytes()
    refused(hc.write(tmp_path, "float.dcm", hc.dicom_bytes(ds)), "float")


def test_dicom_32bit_integers_read_exactly(tmp_path):
    stored = np.arange(16).reshape(4, 4) * 100_000
    image = read_image(hc.write(tmp_path, "i32.dcm", hc.dicom_bytes(hc.dicom_dataset(stored, 32, 32))))
    assert image.meta.bit_depth == 32
    np.testing.assert_allclose(image.pixels * (2**32 - 1), stored, atol=1)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns while the test writes the bad value
@pytest.mark.parametrize("element, value, words", [
    ("RescaleSlope", "nan", ["RescaleSlope", "finite"]),
    ("RescaleSlope", ["1", "2"], ["RescaleSlope", "finite"]),
    ("Rows", 0, []),
])
def test_dicom_bad_header_values(tmp_path, element, value, words):
    ds = hc.dicom_dataset(np.ones((4, 4), np.uint16))
    setattr(ds, element, value)
    refused(hc.write(tmp_path, "bad.dcm", hc.dicom_bytes(ds)), *words)


def test_dicom_unknown_transfer_syntax(tmp_path):
    explicit_le = b"1.2.840.10008.1.2.1\x00"
    data = hc.good_bytes("dicom").replace(explicit_le, b"1.2.840.10008.9.9.9\x00")  # same length, no such syntax
    refused(hc.write(tmp_path, "syntax.dcm", data), "transfer syntax")


def test_damaged_dicom_header_that_reads_still_writes_or_refuses(tmp_path):
    """PixelSpacing '0.5B0.5' and a lost SOPClassUID once crashed write_dicom (a traceback in upscale)."""
    from medsr.io import write_image
    from medsr.io.dicom import SECONDARY_CAPTURE

    data = hc.dicom_bytes(hc.dicom_dataset(np.ones((4, 4), np.uint16) * 7))
    sop_class = struct.pack("<HH", 0x0008, 0x0016) + b"UI"
    data = data.replace(b"0.5\\0.5 ", b"0.5B0.5 ").replace(sop_class, struct.pack("<HH", 0x0009, 0x0016) + b"UI")
    path = hc.write(tmp_path, "damaged.dcm", data)
    image = read_image(path)
    assert image.meta.pixel_spacing is None  # unreadable spacing is unknown, not guessed
    tripled = type(image)(np.repeat(np.repeat(image.pixels, 3, axis=-1), 3, axis=-2), image.meta)
    out = write_image(tmp_path / "out.dcm", tripled, scale=3, model_name="m")
    written = pydicom.dcmread(out)
    assert "PixelSpacing" not in written and written.SOPClassUID == SECONDARY_CAPTURE


def test_nifti_5d_refused_clearly(tmp_path):
    data = np.arange(8 * 8 * 4 * 2 * 3, dtype=np.int16).reshape(8, 8, 4, 2, 3)
    refused(hc.write(tmp_path, "field.nii.gz", hc.nifti_bytes(data, compress=True)), "5-D", "4-D")


# ------------------------------------------------------------------ permissions


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode, so chmod 000 cannot be tested")
def test_unreadable_file(tmp_path):
    path = hc.write(tmp_path, "locked.png", hc.good_bytes("png"))
    path.chmod(0)
    try:
        refused(path, "permission denied")
    finally:
        path.chmod(0o644)


def test_unreadable_file_as_any_user(tmp_path, monkeypatch):
    """The same refusal where chmod cannot make a file unreadable (CI runs as root): the reader's
    open raises the PermissionError the operating system would."""
    path = hc.write(tmp_path, "locked.png", hc.good_bytes("png"))

    def locked_open(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return open(file, *args, **kwargs)

    monkeypatch.setattr(dispatch, "open", locked_open, raising=False)
    refused(path, "permission denied", "chmod u+r")


# ------------------------------------------------------------------ the command line


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def stderr_lines(result) -> list[str]:
    """stderr lines without tqdm's progress-bar redraws (split on \\r as well as \\n)."""
    return [line.strip() for line in result.stderr.splitlines() if line.strip() and not line.lstrip().startswith("upscale:")]


def snapshot(folder: Path) -> dict[Path, bytes]:
    """Every file below `folder` but upscale's own records (its resume ledger and summary CSV)."""
    records = ("medsr-ledger.jsonl", "medsr-summary.csv")
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in records}


GOOD = {  # name -> (bytes, (height, width) of the image read)
    "g.png": (hc.good_bytes("png"), (12, 16)),
    "g.jpg": (hc.good_bytes("jpeg"), (12, 16)),
    "sub/g.tif": (hc.good_bytes("tiff"), (12, 16)),
    "g.dcm": (hc.good_bytes("dicom"), (12, 16)),
    "g.nii.gz": (hc.good_bytes("nii.gz"), (6, 5)),
    "one.png": (hc.tiny_bytes("png", 1, 1), (1, 1)),
    "two.png": (hc.tiny_bytes("png", 2, 2), (2, 2)),
}
BAD = {
    "cut.png": hc.truncated("png", 60),
    "sub/text.jpg": b"not a jpeg\n",
    "empty.dcm": b"",
    "bomb.png": hc.png_bomb(),
    "bomb.dcm": hc.dicom_bomb(),
    "bomb.nii.gz": hc.gzip_bomb_nifti(),
    "field.nii": hc.nifti_bytes(np.zeros((8, 8, 4, 2, 3), np.int16)),
    "corrupt.nii": hc.nifti_patched(dim=(3, 6, -17147, 4, 1, 1, 1, 1)),
    "la16.png": hc.png_raw(np.zeros((3, 4, 2)), 4, 16),
}


def test_batch_with_good_and_bad_files(tmp_path, tiny_model, medsr_cli):
    src = tmp_path / "in"
    for name, (data, _) in GOOD.items():
        hc.write(src, name, data)
    for name, data in BAD.items():
        hc.write(src, name, data)
    before = snapshot(src)
    result = run(medsr_cli + ["upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_model)])
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = stderr_lines(result)
    for name in BAD:
        mine = [line for line in lines if str(src / name) in line]
        assert len(mine) == 1 and mine[0].startswith(f"medsr: skipped: {src / name}:"), (name, lines)
    assert len(lines) == len(BAD), lines  # nothing else: no warnings, no library chatter
    for name, (_, (height, width)) in GOOD.items():
        out = read_image(tmp_path / "out" / name)
        assert out.pixels.shape[-2:] == (height * 3, width * 3), name
    assert f"upscaled {len(GOOD)} of {len(GOOD) + len(BAD)}" in result.stdout
    assert snapshot(src) == before


def test_output_folder_equal_to_input_folder_loses_nothing(tmp_path, tiny_model, medsr_cli):
    """`upscale in/ -o in/` is refused before anything is read or written (outputs, ledger and
    summary would mix with the inputs), with or without --format: exit 2, one line, nothing written."""
    src = tmp_path / "in"
    hc.write(src, "a.png", hc.good_bytes("png"))
    hc.write(src, "a.dcm", hc.good_bytes("dicom"))
    hc.write(src, "b.jpg", hc.good_bytes("jpeg"))
    before = snapshot(src)
    for extra in ([], ["--format", "png"]):
        result = run(medsr_cli + ["upscale", str(src), "-o", str(src), "--model", str(tiny_model), *extra])
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert len(stderr_lines(result)) == 1 and "-o is this input folder" in result.stderr
        assert snapshot(src) == before


def test_single_bad_file_is_one_line(tmp_path, tiny_model, medsr_cli):
    bad = hc.write(tmp_path, "cut.dcm", hc.truncated("dicom", 500))
    result = run(medsr_cli + ["upscale", str(bad), "-o", str(tmp_path / "out"), "--model", str(tiny_model)])
    # a bad file inside a run is skipped, and the run ends with status 1 (README: status 2 is for errors that stop a run)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1 and str(bad) in lines[0] and lines[0].startswith("medsr: "), lines


def test_two_inputs_never_share_an_output(tmp_path, tiny_model, medsr_cli):
    src = tmp_path / "in"
    hc.write(src, "a.jpg", hc.good_bytes("jpeg"))
    hc.write(src, "a.png", hc.good_bytes("png"))
    result = run(medsr_cli + ["upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_model), "--format", "tiff"])
    assert result.returncode == 1 and sum("a.tif" in line for line in stderr_lines(result)) == 1


def test_output_path_that_is_a_file(tmp_path, tiny_model, medsr_cli):
    hc.write(tmp_path, "g.png", hc.good_bytes("png"))
    hc.write(tmp_path, "taken", b"x")
    result = run(medsr_cli + ["upscale", str(tmp_path / "g.png"), "-o", str(tmp_path / "taken"), "--model", str(tiny_model)])
    assert result.returncode == 2 and "Traceback" not in result.stderr and "must name a folder" in result.stderr


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("color_type, bits, channels", [(0, 8, 1), (0, 16, 1), (2, 8, 3), (6, 8, 4)])
def test_png_whose_image_data_ends_early_is_refused(tmp_path, interlace, color_type, bits, channels):
    """Pillow reads the rows a PNG's zlib stream lacks as zeros: the image would be upscaled half black."""
    array = np.random.default_rng(5).integers(1, 2**bits, size=(37, 53, channels)).squeeze()
    whole = hc.write(tmp_path, "whole.png", hc.png_raw(array, color_type, bits, interlace))
    if channels == 1:  # Pillow decodes the bytes to the array: they are what the header declares
        np.testing.assert_array_equal(np.rint(read_image(whole).pixels * (2**bits - 1)), array)
    else:
        assert read_image(whole).pixels.shape == (37, 53)
    short = hc.write(tmp_path, "short.png", hc.png_raw(array, color_type, bits, interlace, cut=10))
    with pytest.raises(MedsrError, match=r"short\.png: PNG image data ends early .*; re-export the image$"):
        read_image(short)


@pytest.mark.parametrize("syntax, fix", [
    ("1.2.840.10008.1.2.4.55", "no decoder medsr uses (pydicom's) reads it; re-export the file uncompressed"),  # retired progressive JPEG
    ("1.2.840.10008.1.2.4.50", "the compressed data is damaged, re-export the file"),  # baseline JPEG, its decoders installed
])
def test_compressed_dicom_that_does_not_decode_names_the_right_fix(tmp_path, syntax, fix):
    """Not 'install the pylibjpeg plugins' when they are installed or would not help."""
    from pydicom.encaps import encapsulate

    ds = hc.dicom_dataset(np.zeros((8, 8), np.uint16), bits_allocated=16, bits_stored=12)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + b"\x00" * 28])
    ds["PixelData"].VR = "OB"
    path = hc.write(tmp_path, "x.dcm", hc.dicom_bytes(ds))
    with pytest.raises(MedsrError, match=re.escape(fix)) as err:
        read_image(path)
    assert "\n" not in str(err.value) and "install" not in str(err.value)
