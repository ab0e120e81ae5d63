"""DICOM series in, series out (medsr.io.series): grouping, volumes, exact geometry of derived series.

Real series from ../shared/data/dicom-series (skipped when absent) are checked against dcm2niix
and dciodvfy; small synthetic series built here with pydicom cover the cases that must fall back
to slice-by-slice processing, enhanced multi-frame files and bad input.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import DATA
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medsr.errors import MedsrError
from medsr.io import dicom, read_image, write_image
from medsr.io import series as S

SERIES = DATA / "dicom-series"
SIEMENS, PHILIPS = SERIES / "siemens-sag-gre-fieldmap", SERIES / "philips-epi-fmri"
_missing = pytest.mark.skipif(not SERIES.is_dir(), reason=f"real DICOM series not found at {SERIES}; set MEDSR_DATA")


def needs_series(test):
    return pytest.mark.shared(_missing(test))
needs_dcm2niix = pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix is not installed (apt-get install dcm2niix)")
needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy is not installed (apt-get install dicom3tools)")

MR, ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1"
STUDY, FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.8.498.10", "1.2.826.0.1.3680043.8.498.11"
# An oblique orientation, so that a mix-up of rows and columns or of a sign shows.
_A, _B = np.radians(20), np.radians(-35)
ROW = np.array([np.cos(_A), np.sin(_A), 0.0])
COL = np.array([-np.sin(_A) * np.cos(_B), np.cos(_A) * np.cos(_B), np.sin(_B)])
NORMAL = np.cross(ROW, COL)
ORIGIN = np.array([-40.0, 12.5, 30.0])


# ----------------------------------------------------------------------------- helpers


def _base(sop_class: str, series: str, shape, spacing=(0.8, 0.7)) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID, ds.FrameOfReferenceUID, ds.SeriesInstanceUID = STUDY, FRAME_OF_REFERENCE, series
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "MR", 7, "synthetic"
    ds.PatientName, ds.PatientID = "Test^Series", "medsr-test"
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def _pattern(shape, value: int) -> np.ndarray:
    """Distinct stored integers per slice (value) and per pixel."""
    rows, cols = shape
    return (np.arange(rows * cols).reshape(rows, cols) * 7 + value * 311) % 4096


def synthetic_slice(path: Path, z: float, *, series="1.2.826.0.1.3680043.8.498.20", shape=(12, 10), spacing=(0.8, 0.7),
                    row=ROW, col=COL, instance=1, value=0, shift=(0.0, 0.0), **extra) -> Path:
    """One classic MR slice at `z` mm along the normal (plus an optional in-plane `shift`)."""
    ds = _base(MR, series, shape)
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[series, str(z), str(instance), str(value), path.name])
    position = ORIGIN + z * np.cross(row, col) + shift[0] * np.asarray(row) + shift[1] * np.asarray(col)
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 2.0
    ds.InstanceNumber = instance
    for keyword, setting in extra.items():
        setattr(ds, keyword, setting)
    ds.PixelData = _pattern(shape, value).astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def synthetic_series(folder: Path, positions=(0, 2, 4, 6, 8, 10), seed=0, **kwargs) -> Path:
    """A series with shuffled file names and InstanceNumbers that do not follow the position."""
    rng = np.random.default_rng(seed)
    names = rng.permutation(len(positions))
    instances = rng.permutation(len(positions)) + 1
    for i, z in enumerate(positions):
        synthetic_slice(folder / f"IMG{names[i]:04d}.dcm", z, instance=int(instances[i]), value=i, **kwargs)
    return folder


def synthetic_enhanced(path: Path, slices=4, times=2, spacing_z=3.0, shape=(8, 6)) -> Path:
    """An Enhanced MR file: `times` time points of `slices` slices, frames stored shuffled."""
    ds = _base(ENHANCED_MR, "1.2.826.0.1.3680043.8.498.30", shape)
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.31"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.MRAcquisitionType, ds.PulseSequenceName = "2D", "GRE"  # allowed in an ORIGINAL image only
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [f"{v:.8f}" for v in (*ROW, *COL)]
    measures.PixelSpacing, measures.SliceThickness, measures.SpacingBetweenSlices = [0.8, 0.7], spacing_z, spacing_z
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orientation], [measures]
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    shared.MRImageFrameTypeSequence = [frame_type]
    ds.SharedFunctionalGroupsSequence = [shared]
    organisation = Dataset()
    organisation.DimensionOrganizationUID = "1.2.826.0.1.3680043.8.498.32"
    ds.DimensionOrganizationSequence = [organisation]
    dimensions = []
    for pointer in (0x00209128, 0x00209057):  # TemporalPositionIndex, InStackPositionNumber
        dimension = Dataset()
        dimension.DimensionOrganizationUID = organisation.DimensionOrganizationUID
        dimension.DimensionIndexPointer, dimension.FunctionalGroupPointer = pointer, 0x00209111
        dimensions.append(dimension)
    ds.DimensionIndexSequence = dimensions
    order = np.random.default_rng(1).permutation(slices * times)
    frames, pixels = [], []
    for n in order:
        t, z = divmod(int(n), slices)
        item, plane, content = Dataset(), Dataset(), Dataset()
        plane.ImagePositionPatient = [f"{v:.6f}" for v in ORIGIN + z * spacing_z * NORMAL]
        content.TemporalPositionIndex, content.InStackPositionNumber, content.StackID = t + 1, z + 1, "1"
        content.DimensionIndexValues = [t + 1, z + 1]
        item.PlanePositionSequence, item.FrameContentSequence = [plane], [content]
        frames.append(item)
        pixels.append(_pattern(shape, 10 * t + z))
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.NumberOfFrames = len(frames)
    ds.PixelData = np.stack(pixels).astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def only(found: list[S.Series]) -> S.Series:
    assert len(found) == 1, [s.message() for s in found]
    return found[0]


def upscale(volume: S.Volume, s: int = 3) -> np.ndarray:
    """A stand-in for a model: each pixel becomes s x s copies (stored integers survive exactly)."""
    return np.kron(volume.pixels, np.ones((1, s, s), dtype=np.float32))


def in_plane(s: float, k_scale: float = 1.0, k_shift: float = 0.0) -> np.ndarray:
    """Index map new grid -> old grid: centres aligned, field of view kept (i_old = (i + 1/2)/s - 1/2)."""
    shift = (1 / s - 1) / 2
    return np.array([[1 / s, 0, 0, shift], [0, 1 / s, 0, shift], [0, 0, k_scale, k_shift], [0, 0, 0, 1.0]])


def dcm2niix(folder: Path, out: Path) -> tuple[list[Path], list[str]]:
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["dcm2niix", "-b", "n", "-z", "n", "-f", "%s_%p", "-o", str(out), str(folder)],
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    # Everything but the usual progress lines is a complaint (warnings, "images may be missing", ...).
    usual = ("Chris Rorden's dcm2niiX", "Found ", "Convert ", "Conversion required", "Philips Scaling Values")
    complaints = [re.sub(r"\S*/\S*", "PATH", line) for line in lines if line.strip() and not line.startswith(usual)]
    return sorted(out.glob("*.nii")), complaints


def dciodvfy_errors(path: Path) -> set[str]:
    result = subprocess.run(["dciodvfy", str(path)], check=False, capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return {re.sub(r"[-+]?\d[\d.eE+-]*", "#", line) for line in lines if line.startswith("Error")}


def flip_rows(rows: int) -> np.ndarray:
    """dcm2niix stores rows bottom-up: its j index is (rows - 1 - row)."""
    return np.array([[1, 0, 0, 0], [0, -1, 0, rows - 1], [0, 0, 1, 0], [0, 0, 0, 1.0]])


# ----------------------------------------------------------------------------- real series


@pytest.mark.parametrize("folder, volumes, slices, spacing", [("siemens", 1, 5, 5.0), ("philips", 3, 9, 8.0)])
@needs_series
@needs_dcm2niix
def test_real_series_group_into_the_volumes_dcm2niix_sees(folder, volumes, slices, spacing, tmp_path):
    source = {"siemens": SIEMENS, "philips": PHILIPS}[folder]
    series = only(S.scan_series(source))
    assert series.reason is None and len(series.paths) == volumes * slices
    assert [v.shape[0] for v in series.volumes] == [slices] * volumes
    niis, _ = dcm2niix(source, tmp_path / "nii")
    image = nib.load(niis[0])
    assert image.shape[2] == slices and (image.shape[3] if image.ndim == 4 else 1) == volumes
    for n, volume in enumerate(series.volumes):
        assert np.all(np.diff(volume.positions) > 0) and volume.slice_spacing == pytest.approx(spacing, abs=1e-4)
        # Same geometry as dcm2niix: ordering along the normal (not by name), directions, origin.
        np.testing.assert_allclose(image.affine, volume.affine("RAS") @ flip_rows(volume.shape[1]), atol=0.01)
        # Same pixels in the same order: each dcm2niix slice k is our slice k (rows flipped).
        stored = image.dataobj.get_unscaled()  # the stored integers (Philips files carry extra scaling)
        stored = stored[..., n] if image.ndim == 4 else stored
        ours = np.stack([pydicom.dcmread(volume.paths[k]).pixel_array for k in range(slices)])
        np.testing.assert_array_equal(stored.transpose(2, 1, 0)[:, ::-1, :], ours)
    if folder == "philips":
        assert [v.label for v in series.volumes] == ["time point 1", "time point 2", "time point 3"]
    else:  # file names 1..5 run against the normal: ordering by name would be backwards
        assert [p.name for p in series.volumes[0].paths] == ["5.dcm", "4.dcm", "3.dcm", "2.dcm", "1.dcm"]


def test_philips_precise_float_factor_only_for_one_scaling_across_the_series():
    def philips(rescale_slope: str, scale_slope: float) -> Dataset:
        ds = Dataset()
        ds.RescaleSlope = rescale_slope
        ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True).add_new(0x0E, "FL", scale_slope)
        return ds

    assert S.philips_float_factor([philips("2", 0.25), philips("2", 0.25)]) == pytest.approx(2.0)  # 1 / (RS * SS)
    assert S.philips_float_factor([philips("2", 0.25), philips("4", 0.25)]) == 1.0  # varies: display values kept
    assert S.philips_float_factor([philips("2", 0.0)]) == 1.0
    assert S.philips_float_factor([philips("2", 0.25), Dataset()]) == 1.0  # not every file is Philips


@pytest.mark.parametrize("folder", ["siemens", "philips"])
@needs_series
@needs_dcm2niix
@needs_dciodvfy
def test_derived_real_series_converts_like_the_source_on_the_finer_grid(folder, tmp_path):
    source = {"siemens": SIEMENS, "philips": PHILIPS}[folder]
    series = only(S.scan_series(source))
    out = tmp_path / "derived"
    written = S.write_derived_series(series, [upscale(v, 3) for v in series.volumes], out, model_name="kron")
    assert len(written) == len(series.paths) == len(set(written))

    src_niis, src_complaints = dcm2niix(source, tmp_path / "src-nii")
    out_niis, out_complaints = dcm2niix(out, tmp_path / "out-nii")
    assert len(out_niis) == len(src_niis) == 1, out_niis  # one NIfTI holding every volume: no clashes
    assert set(out_complaints) <= set(src_complaints), out_complaints
    src, new = nib.load(src_niis[0]), nib.load(out_niis[0])
    assert new.shape == (src.shape[0] * 3, src.shape[1] * 3, *src.shape[2:])
    np.testing.assert_allclose(new.affine, src.affine @ in_plane(3), atol=0.01)
    np.testing.assert_array_equal(new.dataobj.get_unscaled(), np.kron(src.dataobj.get_unscaled(), np.ones((3, 3) + (1,) * (src.ndim - 2))))
    assert (new.dataobj.slope, new.dataobj.inter) == (src.dataobj.slope, src.dataobj.inter)

    # dciodvfy: no error on a derived file that its source did not already have.
    for path in written:
        derived = pydicom.dcmread(path)
        ref = derived.SourceImageSequence[0].ReferencedSOPInstanceUID
        origin = next(p for p in series.paths if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == ref)
        assert dciodvfy_errors(path) <= dciodvfy_errors(origin), path


@pytest.mark.parametrize("folder", ["siemens", "philips"])
@needs_series
def test_derived_series_uids_are_new_deterministic_and_keep_study_and_frame(folder, tmp_path):
    series = only(S.scan_series({"siemens": SIEMENS, "philips": PHILIPS}[folder]))
    runs = []
    for run, model in (("a", "kron"), ("b", "kron"), ("c", "other")):
        runs.append(S.write_derived_series(series, [upscale(v, 2) for v in series.volumes], tmp_path / run, model_name=model))
    # Byte for byte identical across runs (same names, same UIDs, same everything).
    assert [p.name for p in runs[0]] == [p.name for p in runs[1]]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(runs[0], runs[1]))
    first = pydicom.dcmread(series.paths[0], stop_before_pixels=True)
    derived = [pydicom.dcmread(p, stop_before_pixels=True) for p in runs[0]]
    assert len({d.SeriesInstanceUID for d in derived}) == 1  # every volume in one derived series
    assert derived[0].SeriesInstanceUID != first.SeriesInstanceUID
    assert len({d.SOPInstanceUID for d in derived}) == len(derived)
    assert not {d.SOPInstanceUID for d in derived} & {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series.paths}
    assert {(d.StudyInstanceUID, d.FrameOfReferenceUID) for d in derived} == {(first.StudyInstanceUID, first.FrameOfReferenceUID)}
    assert {int(d.SeriesNumber) for d in derived} == {int(first.SeriesNumber) + dicom.SERIES_NUMBER_OFFSET}
    assert all("medsr" in d.SeriesDescription and d.ImageType[0] == "DERIVED" for d in derived)
    other = pydicom.dcmread(runs[2][0], stop_before_pixels=True)
    assert other.SeriesInstanceUID != derived[0].SeriesInstanceUID  # another model: another series


@pytest.mark.parametrize("folder", ["siemens", "philips"])
@needs_series
@needs_dcm2niix
def test_through_plane_slices_get_their_positions_spacing_and_affine(folder, tmp_path):
    source = {"siemens": SIEMENS, "philips": PHILIPS}[folder]
    series = only(S.scan_series(source))
    volume = series.volumes[0]
    old_step, count = volume.slice_spacing, 2 * volume.shape[0] - 1
    positions = volume.positions[0] + np.arange(count) * old_step / 2  # N slices -> 2N-1, same first and last centre
    nearest = np.rint(np.arange(count) / 2).astype(int)
    pixels = [np.kron(v.pixels[nearest], np.ones((1, 2, 2), dtype=np.float32)) for v in series.volumes]
    written = S.write_derived_series(series, pixels, tmp_path / "out", model_name="kron", positions=positions)
    assert len(written) == count * len(series.volumes)
    derived = [pydicom.dcmread(p) for p in written[:count]]  # the first volume's slices
    shift = -(1 - 1 / 2) / 2 * (volume.row_dir * volume.pixel_spacing[1] + volume.col_dir * volume.pixel_spacing[0])
    sources = {ds.SOPInstanceUID: (ds, p) for ds, p in zip(volume.datasets, volume.positions)}
    ascending = int(volume.datasets[-1].InstanceNumber) > int(volume.datasets[0].InstanceNumber)
    for k, ds in enumerate(derived):
        np.testing.assert_allclose(np.array(ds.ImagePositionPatient, float), volume.origin + shift + (positions[k] - positions[0]) * volume.normal, atol=1e-4)
        assert float(ds.SliceThickness) == pytest.approx(old_step / 2) and float(ds.SpacingBetweenSlices) == pytest.approx(old_step / 2)
        assert int(ds.InstanceNumber) == (k + 1 if ascending else count - k)  # 1..M, in the source's direction
        # Each points back at a nearest source slice, and SliceLocation follows the source's own relation.
        near, where = sources[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert abs(where - positions[k]) <= old_step / 2 + 1e-6
        step_location = float(volume.datasets[1].SliceLocation) - float(volume.datasets[0].SliceLocation)
        assert float(ds.SliceLocation) == pytest.approx(float(near.SliceLocation) + (positions[k] - where) * step_location / old_step, abs=1e-3)
        if folder == "philips":  # its private slice count and number (SliceNumberMR) follow the new slices
            block = ds.private_block(0x2001, "Philips Imaging DD 001")
            assert (int(block[0x18].value), int(block[0x0A].value)) == (count, int(ds.InstanceNumber))
        if shutil.which("dciodvfy"):
            assert dciodvfy_errors(written[k]) <= dciodvfy_errors(volume.paths[volume.datasets.index(near)])
    src_niis, src_complaints = dcm2niix(source, tmp_path / "src-nii")
    out_niis, out_complaints = dcm2niix(tmp_path / "out", tmp_path / "out-nii")
    assert len(out_niis) == 1 and set(out_complaints) <= set(src_complaints), out_complaints
    src, new = nib.load(src_niis[0]), nib.load(out_niis[0])
    assert new.shape == (src.shape[0] * 2, src.shape[1] * 2, count, *src.shape[3:])
    np.testing.assert_allclose(new.affine, src.affine @ in_plane(2, k_scale=0.5), atol=0.01)


def test_single_file_path_moves_the_position_and_derives_uids(tmp_path):
    """write_image of one loose slice: IPP on the finer grid, UIDs fixed by source + model + scale."""
    source = synthetic_slice(tmp_path / "one.dcm", 4.0)
    image = read_image(source)
    pixels = np.kron(image.pixels, np.ones((4, 4), dtype=np.float32))
    for name in ("a.dcm", "b.dcm"):
        write_image(tmp_path / name, type(image)(pixels, image.meta), scale=4, model_name="m")
    a, b = pydicom.dcmread(tmp_path / "a.dcm"), pydicom.dcmread(tmp_path / "b.dcm")
    expected = ORIGIN + 4.0 * NORMAL - (1 - 1 / 4) / 2 * (ROW * 0.7 + COL * 0.8)
    np.testing.assert_allclose(np.array(a.ImagePositionPatient, float), expected, atol=1e-5)
    assert [float(v) for v in a.PixelSpacing] == [0.2, 0.175]
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()
    assert int(a.SeriesNumber) == int(pydicom.dcmread(source).SeriesNumber) + dicom.SERIES_NUMBER_OFFSET  # a new series
    write_image(tmp_path / "c.dcm", type(image)(pixels, image.meta), scale=4, model_name="other")
    assert pydicom.dcmread(tmp_path / "c.dcm").SOPInstanceUID != a.SOPInstanceUID


# ----------------------------------------------------------------------------- synthetic series


def test_shuffled_names_are_ordered_along_the_normal(tmp_path):
    series = only(S.scan_series(synthetic_series(tmp_path / "in")))
    volume = series.volumes[0]
    np.testing.assert_allclose(volume.positions - volume.positions[0], [0, 2, 4, 6, 8, 10], atol=1e-5)
    np.testing.assert_allclose(volume.origin, ORIGIN, atol=1e-5)
    for k in range(6):  # slice k holds the pixels written for position 2k
        np.testing.assert_array_equal(pydicom.dcmread(volume.paths[k]).pixel_array, _pattern((12, 10), k))
    affine = volume.affine("LPS")
    np.testing.assert_allclose(affine[:3, :3] @ [2, 3, 4] + affine[:3, 3], ORIGIN + 2 * 0.7 * ROW + 3 * 0.8 * COL + 4 * 2 * NORMAL, atol=1e-5)
    np.testing.assert_allclose(volume.affine("RAS")[:2], -affine[:2])


def test_a_list_of_files_groups_by_series_uid(tmp_path):
    synthetic_series(tmp_path / "a", series="1.2.826.0.1.3680043.8.498.41")
    synthetic_series(tmp_path / "b", positions=(0, 3, 6), series="1.2.826.0.1.3680043.8.498.42")
    found = S.scan_series(sorted(tmp_path.rglob("*.dcm"), key=lambda p: p.name))
    assert sorted(v.shape[0] for s in found for v in s.volumes) == [3, 6]
    assert S.scan_series(tmp_path)  # a folder is searched recursively


@pytest.mark.parametrize("positions, kwargs, reason", [
    ((0, 2, 4, 8, 10), {}, "missing 1 slice"),
    ((0, 2, 4, 7, 9), {}, "uneven slice spacing"),
    ((0,), {}, "single slice"),
    ((0, 2, 4), {"shift": (0.5, 0)}, None),  # the same shift on every slice is fine
])
def test_series_that_cannot_form_a_volume_say_why(positions, kwargs, reason, tmp_path):
    series = only(S.scan_series(synthetic_series(tmp_path / "in", positions, **kwargs)))
    if reason is None:
        assert series.reason is None and len(series.volumes) == 1
        return
    assert series.volumes == [] and reason in series.reason
    assert "\n" not in series.message() and series.message().endswith("processing it slice by slice instead")
    assert str(tmp_path / "in") in series.message()


def test_mixed_sizes_orientations_and_shear_fall_back(tmp_path):
    folder = synthetic_series(tmp_path / "sizes", (0, 2, 4))
    synthetic_slice(folder / "extra.dcm", 6, shape=(14, 10))
    assert "mixes image sizes" in only(S.scan_series(folder)).reason
    folder = synthetic_series(tmp_path / "orient", (0, 2, 4))
    synthetic_slice(folder / "extra.dcm", 6, row=(1, 0, 0), col=(0, 1, 0))
    assert "mixes slice orientations" in only(S.scan_series(folder)).reason
    folder = tmp_path / "tilt"
    for k in range(4):  # each slice further along the column direction: a tilted gantry
        synthetic_slice(folder / f"{k}.dcm", 2 * k, shift=(0, 0.5 * k), value=k)
    assert "gantry tilt" in only(S.scan_series(folder)).reason


def test_time_points_split_into_volumes_and_incomplete_ones_fall_back(tmp_path):
    folder = tmp_path / "fmri"
    for t in range(3):
        for z in range(4):
            synthetic_slice(folder / f"{z}_{t}.dcm", 2.5 * z, value=4 * t + z, instance=t * 4 + z + 1, TemporalPositionIdentifier=t + 1)
    series = only(S.scan_series(folder))
    assert [v.label for v in series.volumes] == ["time point 1", "time point 2", "time point 3"]
    for t, volume in enumerate(series.volumes):
        np.testing.assert_array_equal(
            np.rint(volume.pixels * 4095), np.stack([_pattern((12, 10), 4 * t + z) for z in range(4)]))
    (folder / "3_2.dcm").unlink()  # the last time point lacks a slice
    assert "incomplete time point" in only(S.scan_series(folder)).reason
    # Repeats without any tag telling them apart are split in acquisition order.
    folder = tmp_path / "repeats"
    for t in range(2):
        for z in range(3):
            synthetic_slice(folder / f"{z}_{t}.dcm", 2.0 * z, value=3 * t + z, AcquisitionNumber=t + 1)
    assert [v.label for v in only(S.scan_series(folder)).volumes] == ["repeat 1", "repeat 2"]


def test_enhanced_multiframe_volumes_and_derived_file(tmp_path):
    source = synthetic_enhanced(tmp_path / "in" / "enhanced.dcm")
    series = only(S.scan_series(tmp_path / "in"))
    assert [v.label for v in series.volumes] == ["time point 1", "time point 2"]
    for t, volume in enumerate(series.volumes):
        assert volume.enhanced and volume.shape == (4, 8, 6)
        np.testing.assert_allclose(volume.positions - volume.positions[0], [0, 3, 6, 9], atol=1e-5)
        np.testing.assert_array_equal(np.rint(volume.pixels * 4095), np.stack([_pattern((8, 6), 10 * t + z) for z in range(4)]))
    [path] = S.write_derived_series(series, [upscale(v, 2) for v in series.volumes], tmp_path / "out", model_name="kron")
    ds = pydicom.dcmread(path)  # one enhanced file holding both volumes, like its source
    assert ds.SOPClassUID == ENHANCED_MR and int(ds.NumberOfFrames) == 8 and (ds.Rows, ds.Columns) == (16, 12)
    assert ds.SeriesInstanceUID != pydicom.dcmread(source).SeriesInstanceUID and ds.ImageType[:2] == ["DERIVED", "PRIMARY"]
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [0.4, 0.35]
    for n, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        t, z = divmod(n, 4)
        expected = ORIGIN + 3.0 * z * NORMAL - (1 - 1 / 2) / 2 * (ROW * 0.7 + COL * 0.8)
        np.testing.assert_allclose(np.array(frame.PlanePositionSequence[0].ImagePositionPatient, float), expected, atol=1e-5)
        assert frame.FrameContentSequence[0].TemporalPositionIndex == t + 1
    expected = np.stack([_pattern((8, 6), 10 * t + z) for t in range(2) for z in range(4)])
    np.testing.assert_array_equal(ds.pixel_array, np.kron(expected, np.ones((2, 2))))
    if shutil.which("dcm2niix"):  # converts like its source: one 4D NIfTI, on the finer grid
        src_niis, src_complaints = dcm2niix(tmp_path / "in", tmp_path / "src-nii")
        out_niis, out_complaints = dcm2niix(tmp_path / "out", tmp_path / "out-nii")
        assert len(out_niis) == len(src_niis) == 1 and set(out_complaints) <= set(src_complaints)
        src, new = nib.load(src_niis[0]), nib.load(out_niis[0])
        assert new.shape == (12, 16, 4, 2) == (src.shape[0] * 2, src.shape[1] * 2, *src.shape[2:])
        np.testing.assert_allclose(new.affine, src.affine @ in_plane(2), atol=0.01)
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(path) <= dciodvfy_errors(source)


def test_an_enhanced_file_with_fewer_frames_than_its_groups_is_one_line(tmp_path):
    source = synthetic_enhanced(tmp_path / "in" / "enhanced.dcm", times=1)
    ds = pydicom.dcmread(source)
    frame_bytes = len(ds.PixelData) // int(ds.NumberOfFrames)
    ds.NumberOfFrames, ds.PixelData = int(ds.NumberOfFrames) - 1, ds.PixelData[:-frame_bytes]
    ds.save_as(source)
    series = only(S.scan_series(tmp_path / "in"))
    with pytest.raises(MedsrError, match=r"enhanced\.dcm: its functional groups describe frame 4 but the file holds 3"):
        series.volumes[0].pixels


def test_enhanced_through_plane_rewrites_the_functional_groups(tmp_path):
    synthetic_enhanced(tmp_path / "in" / "enhanced.dcm", times=1)
    series = only(S.scan_series(tmp_path / "in"))
    volume = series.volumes[0]
    positions = volume.positions[0] + np.arange(7) * 1.5
    pixels = volume.pixels[np.rint(np.arange(7) / 2).astype(int)]
    [path] = S.write_derived_series(series, [pixels], tmp_path / "out", model_name="m", positions=positions)
    ds = pydicom.dcmread(path)
    assert int(ds.NumberOfFrames) == 7
    assert float(ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices) == pytest.approx(1.5)
    for k, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        np.testing.assert_allclose(np.array(frame.PlanePositionSequence[0].ImagePositionPatient, float), ORIGIN + 1.5 * k * NORMAL, atol=1e-5)
        assert frame.FrameContentSequence[0].InStackPositionNumber == k + 1
        assert list(frame.FrameContentSequence[0].DimensionIndexValues) == [1, k + 1]


def test_through_plane_on_a_synthetic_series(tmp_path):
    series = only(S.scan_series(synthetic_series(tmp_path / "in", (0, 2, 4, 6))))
    volume = series.volumes[0]
    positions = volume.positions[0] + 0.5 + np.arange(6)  # a shifted 1 mm grid
    pixels = volume.pixels[[0, 0, 1, 2, 2, 3]]
    written = S.write_derived_series(series, [pixels], tmp_path / "out", model_name="m", positions=positions, slice_thickness=1.2)
    derived = [pydicom.dcmread(p) for p in written]
    assert [int(d.InstanceNumber) for d in derived] in ([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1])
    assert {float(d.SliceThickness) for d in derived} == {1.2} and {float(d.SpacingBetweenSlices) for d in derived} == {1.0}
    rescanned = only(S.scan_series(tmp_path / "out")).volumes[0]
    np.testing.assert_allclose(rescanned.positions, positions, atol=1e-4)
    np.testing.assert_allclose(rescanned.origin, ORIGIN + 0.5 * NORMAL, atol=1e-4)
    assert "SliceLocation" not in derived[0]  # the source had none to follow


def test_a_series_slice_thickness_sets_the_through_plane_profile_unless_one_is_given(tmp_path, monkeypatch):
    from medsr.inference import volume as V
    from medsr.models import create_generator

    series = only(S.scan_series(synthetic_series(tmp_path / "gaps", (0, 3, 6, 9))))  # 2 mm slices 3 mm apart
    assert series.volumes[0].slice_thickness == 2.0
    assert only(S.scan_series([synthetic_enhanced(tmp_path / "enhanced" / "e.dcm", times=1)])).volumes[0].slice_thickness == 3.0
    synthetic_slice(tmp_path / "mixed" / "a.dcm", 0, SliceThickness=1.0)
    synthetic_slice(tmp_path / "mixed" / "b.dcm", 2, SliceThickness=2.0, instance=2)
    assert only(S.scan_series(tmp_path / "mixed")).volumes[0].slice_thickness is None

    seen, real = [], V.upscale_through_plane
    monkeypatch.setattr(V, "upscale_through_plane", lambda *a, **k: seen.append(k["slice_thickness"]) or real(*a, **k))
    net = create_generator("through-plane", channels=8, num_blocks=1)
    for options in (V.ThroughPlane(model=net, precision="fp32"), V.ThroughPlane(slice_thickness=2.5, model=net, precision="fp32")):
        V.through_plane_series(series, [series.volumes[0].pixels], options)
    assert seen == [2.0, 2.5]  # the header's, then the user's


def test_a_series_of_several_volumes_is_adapted_once(tmp_path, monkeypatch):
    from medsr.inference import volume as V
    from medsr.models import create_generator

    series = only(S.scan_series([synthetic_enhanced(tmp_path / "e.dcm", times=2, shape=(16, 12))]))
    tuned, real = [], V.adapt
    monkeypatch.setattr(V, "adapt", lambda *a, **k: tuned.append(real(*a, **k)) or tuned[-1])
    options = V.ThroughPlane(model=create_generator("through-plane", channels=8, num_blocks=1), adapt_minutes=0.002, precision="fp32")
    stacks, grid = V.through_plane_series(series, [volume.pixels for volume in series.volumes], options)
    assert len(tuned) == 1 and len(stacks) == 2 and stacks[0].shape == stacks[1].shape == (17, 16, 12)


def test_differing_rescales_share_one_value_range(tmp_path):
    folder = tmp_path / "pet"
    for z in range(3):  # like PET: every slice its own slope
        synthetic_slice(folder / f"{z}.dcm", 2.0 * z, value=z, RescaleSlope=f"{z + 1}", RescaleIntercept="0")
    series = only(S.scan_series(folder))
    volume = series.volumes[0]
    assert {m.value_range for m in volume.metas} == {(0.0, 3 * 4095.0)}
    real = volume.pixels * 3 * 4095
    for z in range(3):
        np.testing.assert_allclose(real[z], _pattern((12, 10), z) * (z + 1), atol=1e-2)
    written = S.write_derived_series(series, [volume.pixels], tmp_path / "out", model_name="m")
    for z, path in enumerate(written):  # stored integers round-trip through the common range
        np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, _pattern((12, 10), z))


def test_new_slices_between_differing_rescales_hold_their_values(tmp_path):
    folder = tmp_path / "pet"
    for z in range(3):  # slopes 1, 2, 3: a new slice near the first holds values up to 3x its stored range
        synthetic_slice(folder / f"{z}.dcm", 2.0 * z, value=z, RescaleSlope=f"{z + 1}", RescaleIntercept="0")
    series = only(S.scan_series(folder))
    volume = series.volumes[0]
    new = np.stack([volume.pixels[2], volume.pixels[0]])  # the brightest slice's values where slice 0 is nearest
    written = S.write_derived_series(series, [new], tmp_path / "out", model_name="m", positions=[0.5, 1.5])
    for path, pixels in zip(written, new):
        ds = pydicom.dcmread(path)
        real = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(real, pixels * 3 * 4095, atol=float(ds.RescaleSlope))  # within one stored step


def test_a_copy_of_a_file_in_the_folder_is_left_out_not_a_second_volume(tmp_path):
    folder = synthetic_series(tmp_path / "in", (0, 2, 4, 6))
    (folder / "copy").mkdir()
    for path in list(folder.glob("*.dcm")):
        (folder / "copy" / path.name).write_bytes(path.read_bytes())
    series = only(S.scan_series(folder))
    assert len(series.volumes) == 1 and len(series.volumes[0].positions) == 4
    assert len(series.repeats) == 4 and all(path.parent.name == "copy" for path in series.repeats)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_gives_one_line_naming_the_file_and_fix(tmp_path):
    series = only(S.scan_series(synthetic_series(tmp_path / "in", (0, 2, 4))))
    broken = only(S.scan_series(synthetic_series(tmp_path / "gap", (0, 2, 6))))

    def write(pixels, which=series, **kwargs):
        return lambda: S.write_derived_series(which, pixels, tmp_path / "o", model_name="m", **kwargs)

    cases = [
        (write([np.zeros((3, 24, 30))]), "same scale s on both axes"),
        (write([np.zeros((4, 24, 20))]), "pass positions="),
        (write([np.full((3, 24, 20), np.nan)]), "NaN"),
        (write([np.zeros((3, 24, 20))], positions=[0, 1, 5]), "evenly"),
        (write([np.zeros((3, 24, 20))] * 2), "one result per volume"),
        (write([np.zeros((3, 24, 20))], which=broken), "write its files one by one"),
        (lambda: S.scan_series(tmp_path / "nowhere"), "not a folder"),
    ]
    (tmp_path / "empty").mkdir()
    cases.append((lambda: S.scan_series(tmp_path / "empty"), "no DICOM files"))
    cases.append((lambda: S.scan_series([tmp_path / "in", tmp_path / "gone.dcm"]), "file not found"))
    for call, fix in cases:
        with pytest.raises(MedsrError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message and fix in message and str(tmp_path) in message, message
    assert not (tmp_path / "o").exists()


def test_unreadable_file_is_its_own_slice_by_slice_entry(tmp_path):
    folder = synthetic_series(tmp_path / "in", (0, 2, 4))
    whole = synthetic_slice(tmp_path / "whole.dcm", 6).read_bytes()
    (folder / "cut.dcm").write_bytes(whole[:300])  # cut inside the header
    (folder / "text.dcm").write_bytes(b"not a DICOM file at all\n" * 20)
    found = S.scan_series(folder)
    assert sorted(len(s.volumes) for s in found) == [0, 0, 1]
    messages = sorted(s.message() for s in found if not s.volumes)
    assert messages[0].startswith(f"{folder / 'cut.dcm'}: has no pixel data")
    assert messages[1].startswith(f"{folder / 'text.dcm'}: not a DICOM file")
    assert not any("\n" in m for m in messages)
    assert [s.spatial for s in found] == [True, False, False]  # only the real series could have been a volume


def test_a_file_whose_number_of_frames_is_damaged_fails_alone(tmp_path):
    """pydicom's badVR.dcm has NumberOfFrames '1A': the folder scan goes on (it raised ValueError and stopped the run)."""
    from pydicom.data import get_testdata_file

    (tmp_path / "bad.dcm").write_bytes(open(get_testdata_file("badVR.dcm"), "rb").read())
    (tmp_path / "good.dcm").write_bytes(open(get_testdata_file("CT_small.dcm"), "rb").read())
    found = S.scan_series(tmp_path)
    assert any(serie.paths == [tmp_path / "good.dcm"] for serie in found)
    with pytest.raises(MedsrError, match=r"bad\.dcm: DICOM Rows/Columns/NumberOfFrames/SamplesPerPixel are not whole numbers"):
        read_image(tmp_path / "bad.dcm")


@needs_dciodvfy
def test_an_enhanced_mr_without_functional_groups_gets_no_new_dciodvfy_errors(tmp_path):
    """emri_small is an Enhanced MR object that lacks its functional groups: it is still enhanced (its
    ImageType and pulse sequence elements as such), so its derived file adds no error of its own."""
    from pydicom.data import get_testdata_file

    source = tmp_path / "emri.dcm"
    source.write_bytes(open(get_testdata_file("emri_small.dcm"), "rb").read())
    image = read_image(source)
    out = write_image(tmp_path / "x3.dcm", type(image)(np.kron(image.pixels, np.ones((1, 3, 3))), image.meta), scale=3)
    assert dciodvfy_errors(out) <= dciodvfy_errors(source)
