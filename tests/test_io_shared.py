"""Integration tests of medsr.io on the real files in ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medsr.io import Image, read_image, read_mnist, write_image

DATA = Path(os.environ.get("MEDSR_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")).resolve()
pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA}; set MEDSR_DATA"),
]

DICOM_FILES = sorted((DATA / "dicom").glob("*.dcm")) if DATA.is_dir() else []
NIFTI_FILES = sorted((DATA / "nifti").glob("*.nii*")) if DATA.is_dir() else []

# Declared (row, col) spacing in mm; None where the file has none or writes 0 for "unknown".
SPACING = {
    "chest-cr-RG1_J2KI.dcm": None,
    "leg-cr-RG3_J2KR.dcm": None,
    "chest-cr-siim.dcm": (0.168, 0.168),
    "chest-cr-siim-monochrome1.dcm": (0.168, 0.168),
    "shoulder-mr-MR2_UNCR.dcm": (0.195313, 0.195313),
    "head-mr-flair-implicit.dcm": (0.859375, 0.859375),
    "mr-multiframe.dcm": None,
    "ct-jpeg70.dcm": (1.0, 1.0),
}


@pytest.fixture(scope="module")
def dicom_reads():
    """Each DICOM decoded once for the whole module (the JPEG 2000 ones are slow-ish)."""
    cache = {}

    def get(path: Path) -> Image:
        if path not in cache:
            cache[path] = read_image(path)
        return cache[path]

    return get


@pytest.fixture(scope="module")
def nifti_reads():
    return {path: read_image(path) for path in NIFTI_FILES}


def _declared_shape(path: Path) -> tuple[int, ...]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return (frames, ds.Rows, ds.Columns) if frames > 1 else (ds.Rows, ds.Columns)


def _check_pixels(pixels: np.ndarray) -> None:
    assert pixels.dtype == np.float32
    assert np.isfinite(pixels).all()
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert pixels.max() > pixels.min()


def test_data_folder_has_files():
    assert len(DICOM_FILES) >= 8 and NIFTI_FILES


@pytest.mark.parametrize("path", DICOM_FILES, ids=lambda p: p.name)
def test_dicom_reads_as_declared(path, dicom_reads):
    img = dicom_reads(path)
    assert img.pixels.shape == _declared_shape(path)
    _check_pixels(img.pixels)
    assert img.meta.format == "dicom"
    if path.name in SPACING:
        expected = SPACING[path.name]
        assert img.meta.pixel_spacing == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize("path", DICOM_FILES, ids=lambda p: p.name)
def test_dicom_derived_x3(path, dicom_reads, tmp_path):
    img = dicom_reads(path)
    up = np.repeat(np.repeat(img.pixels, 3, axis=-2), 3, axis=-1)
    out = write_image(tmp_path / path.name, Image(up, img.meta), scale=3, model_name="nearest")
    back = read_image(out)
    assert back.pixels.shape == (*img.pixels.shape[:-2], img.pixels.shape[-2] * 3, img.pixels.shape[-1] * 3)
    # The stored values survive exactly: fixed per-file mapping, no re-fitting to content.
    np.testing.assert_array_equal(back.pixels[..., ::3, ::3], img.pixels)
    assert back.meta.photometric == img.meta.photometric
    if img.meta.pixel_spacing is None:
        assert back.meta.pixel_spacing is None
    else:
        assert back.meta.pixel_spacing == pytest.approx(tuple(s / 3 for s in img.meta.pixel_spacing), rel=1e-6)


def test_monochrome1_is_inverted(dicom_reads):
    normal = dicom_reads(DATA / "dicom" / "chest-cr-siim.dcm")
    inverted = dicom_reads(DATA / "dicom" / "chest-cr-siim-monochrome1.dcm")
    assert inverted.meta.photometric == "MONOCHROME1"
    assert np.abs(inverted.pixels - (1.0 - normal.pixels)).mean() < 1e-3


def test_ct_range_is_hounsfield(dicom_reads):
    img = dicom_reads(DATA / "dicom" / "ct-jpeg70.dcm")
    assert img.meta.value_range[0] < 0


@pytest.mark.parametrize("path", NIFTI_FILES, ids=lambda p: p.name)
def test_nifti_reads_as_declared(path, nifti_reads):
    img = nifti_reads[path]
    shape = nib.load(path).shape
    axis = img.meta.slice_axis
    assert img.pixels.shape == (shape[axis], *[n for a, n in enumerate(shape) if a != axis])
    _check_pixels(img.pixels)
    zooms = nib.load(path).header.get_zooms()
    assert img.meta.pixel_spacing == pytest.approx(tuple(z for a, z in enumerate(zooms[:3]) if a != axis))


def test_brain_t1_round_trip(nifti_reads, tmp_path):
    path = DATA / "nifti" / "brain-t1-sub-01.nii.gz"
    img = nifti_reads[path]
    assert img.pixels.shape == (181, 288, 288) and img.meta.slice_axis == 2
    out = write_image(tmp_path / "t1.nii.gz", img)
    original, written = nib.load(path), nib.load(out)
    lo, hi = img.meta.value_range
    np.testing.assert_allclose(written.get_fdata(), original.get_fdata(), atol=(hi - lo) * 1e-6)
    np.testing.assert_allclose(written.affine, original.affine, atol=1e-5)
    assert written.get_data_dtype() == original.get_data_dtype()


def test_mnist_t10k():
    images, labels = read_mnist(DATA / "mnist" / "t10k-images-idx3-ubyte.gz", DATA / "mnist" / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))


@pytest.mark.parametrize("folder", ["brain-mri/glioma", "chest-xray/NORMAL"])
def test_dataset_jpeg(folder):
    path = sorted((DATA / folder).glob("*.jp*g"))[0]
    img = read_image(path)
    assert img.pixels.ndim == 2 and img.meta.bit_depth == 8 and img.meta.format == "jpeg"
    _check_pixels(img.pixels)


def test_rgb_chest_xray_becomes_gray():
    path = DATA / "chest-xray" / "PNEUMONIA" / "person1_bacteria_1.jpeg"  # stored as RGB
    if not path.exists():
        pytest.skip(f"{path.name} not in this copy of the data")
    img = read_image(path)
    assert img.pixels.ndim == 2 and img.meta.bit_depth == 8
    _check_pixels(img.pixels)
