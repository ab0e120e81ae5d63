"""`medsr upscale SERIES_DIR -o OUT`: a real scanner series comes back as one derived series that
dcm2niix (the standard DICOM-to-NIfTI converter) turns into one volume per source volume, with the
source's affine refined in-plane; reruns skip it, and a changed file redoes it."""

import csv
import hashlib
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import DATA, needs_data

DCM2NIIX = shutil.which("dcm2niix")
pytestmark = [needs_data, pytest.mark.shared,
              pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix is not installed (apt install dcm2niix); .ci/run installs it")]
SERIES = DATA / "dicom-series"


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def convert(folder: Path, out: Path) -> list[nib.Nifti1Image]:
    out.mkdir()
    result = run([DCM2NIIX, "-o", str(out), "-f", "%s_%e_%t", "-z", "n", str(folder)])
    assert result.returncode == 0, result.stdout + result.stderr
    return [nib.load(p) for p in sorted(out.glob("*.nii"))]


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.dcm"))}


@pytest.mark.parametrize("name", ["siemens-sag-gre-fieldmap", "philips-epi-fmri"])
def test_a_series_comes_back_as_one_series_with_the_right_affine(name, tmp_path, medsr_cli):
    source = SERIES / name
    out = tmp_path / "out"
    result = run(medsr_cli + ["upscale", str(source), "-o", str(out), "--tile", "0"])
    assert result.returncode == 0, result.stderr
    assert "upscaled 1 of 1 series" in result.stdout  # the whole series is one unit of work
    with open(out / "medsr-summary.csv", newline="") as fh:
        [row] = list(csv.DictReader(fh))
    assert row["status"] == "done" and row["series"] == pydicom.dcmread(next(source.glob("*.dcm"))).SeriesInstanceUID

    before, after = convert(source, tmp_path / "nii-source"), convert(out, tmp_path / "nii-derived")
    assert len(after) == len(before) == 1, "one derived series, converted as one (4-D for the time points) image"
    src, new = before[0], after[0]
    assert new.shape[:2] == (src.shape[0] * 3, src.shape[1] * 3) and new.shape[2:] == src.shape[2:]
    # the same field of view on a 3x finer in-plane grid: columns shrink by 3, the first voxel centre
    # moves by (1/3 - 1)/2 of a source voxel along each in-plane axis
    expected = src.affine.copy()
    for axis in (0, 1):
        expected[:3, 3] += src.affine[:3, axis] * (1 / 3 - 1) / 2
        expected[:3, axis] /= 3
    assert np.abs(new.affine - expected).max() < 0.01

    first = digest(out)
    again = run(medsr_cli + ["upscale", str(source), "-o", str(out), "--tile", "0", "--force"])
    assert again.returncode == 0 and digest(out) == first  # deterministic UIDs: a rerun writes the same bytes


def at_voxels_of(reference: nib.Nifti1Image, image: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """Where the reference's voxel centres fall in `image` (fractional indices, by the two affines:
    the world in between), and the reference's first volume's values."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in reference.shape[:3]], indexing="ij"), -1).reshape(-1, 3)
    where = nib.affines.apply_affine(np.linalg.inv(image.affine), nib.affines.apply_affine(reference.affine, ijk))
    values = np.asanyarray(reference.dataobj)
    return where, (values if values.ndim == 3 else values[..., 0])[tuple(ijk.T)]


@pytest.mark.parametrize("name", ["siemens-sag-gre-fieldmap", "philips-epi-fmri"])
def test_format_nii_writes_a_series_as_one_volume_where_dcm2niix_puts_it(name, tmp_path, medsr_cli):
    source = SERIES / name
    out = tmp_path / "out"
    result = run(medsr_cli + ["upscale", str(source), "-o", str(out), "--format", "nii", "--tile", "0"])
    assert result.returncode == 0, result.stderr
    assert "upscaled 1 of 1 series" in result.stdout
    written = list(out.glob("*.nii.gz"))
    assert len(written) == 1 and not list(out.glob("*.dcm"))
    new = nib.load(written[0])
    src = convert(source, tmp_path / "nii-source")[0]
    assert new.shape[2:] == src.shape[2:] and sorted(new.shape[:2]) == sorted(s * 3 for s in src.shape[:2])
    assert int(new.header["qform_code"]) == int(new.header["sform_code"]) == 1  # scanner space
    assert new.header.get_xyzt_units() == src.header.get_xyzt_units() == ("mm", "sec")
    if new.ndim == 4:  # the fMRI series' time points, a repetition time apart, as dcm2niix has them
        assert new.header.get_zooms()[3] == pytest.approx(src.header.get_zooms()[3], rel=1e-3)
    # every source voxel centre (as dcm2niix places it) is the centre of a 3x3 block of new voxels
    where, values = at_voxels_of(src, new)
    assert np.abs(where - where.round()).max() < 1e-3
    index = where.round().astype(int)
    assert set(np.unique(index[:, :2] % 3)) == {1} and len(np.unique(index[:, 2])) == src.shape[2]
    data = np.asanyarray(new.dataobj)
    ours = (data if data.ndim == 3 else data[..., 0])[tuple(index.T)]
    assert np.corrcoef(values, ours)[0, 1] > 0.99
    # in dcm2niix's units: for the Philips series its precise floating-point values, 181x the display values
    assert np.polyfit(values, ours, 1)[0] == pytest.approx(1.0, abs=0.05)


def test_format_nii_with_thin_slices_matches_the_derived_series(tmp_path, medsr_cli):
    source = SERIES / "siemens-sag-gre-fieldmap"
    thin = ["--through-plane", "--slice-spacing", "1", "--tile", "0"]
    assert run(medsr_cli + ["upscale", str(source), "-o", str(tmp_path / "nii"), "--format", "nii", *thin]).returncode == 0
    assert run(medsr_cli + ["upscale", str(source), "-o", str(tmp_path / "dcm"), *thin]).returncode == 0
    new, derived = nib.load(next((tmp_path / "nii").glob("*.nii.gz"))), convert(tmp_path / "dcm", tmp_path / "nii-derived")[0]
    assert new.shape == derived.shape == (42, 64, 25)
    where, values = at_voxels_of(derived, new)
    assert np.abs(where - where.round()).max() < 1e-3  # the same 25 slices at the same places
    assert np.abs(np.asanyarray(new.dataobj)[tuple(where.round().astype(int).T)] - values).max() <= 0.5  # DICOM rounds


def test_a_rerun_skips_the_series_and_a_changed_file_redoes_it(tmp_path, medsr_cli):
    source = tmp_path / "series"
    shutil.copytree(SERIES / "siemens-sag-gre-fieldmap", source)
    out = tmp_path / "out"
    assert run(medsr_cli + ["upscale", str(source), "-o", str(out), "--tile", "0"]).returncode == 0
    assert "1 skipped (complete)" in run(medsr_cli + ["upscale", str(source), "-o", str(out), "--tile", "0"]).stdout
    (source / "3.dcm").touch()  # one file of the series changed
    redone = run(medsr_cli + ["upscale", str(source), "-o", str(out), "--tile", "0"])
    assert "upscaled 1 of 1" in redone.stdout, redone.stdout
    first = sorted(p.name for p in out.glob("*.dcm"))
    other = run(medsr_cli + ["upscale", str(source), "-o", str(out), "--tile", "0", "--scale", "2"])  # new settings, new file names
    assert "upscaled 1 of 1" in other.stdout, other.stdout
    now = sorted(p.name for p in out.glob("*.dcm"))
    assert len(now) == len(first) and not set(now) & set(first)  # one derived series: the x2 one replaced the x3 one
    as_nifti = run(medsr_cli + ["upscale", str(source), "-o", str(out), "--tile", "0", "--scale", "2", "--format", "nii"])
    assert as_nifti.returncode == 0 and len(list(out.glob("*.nii.gz"))) == 1, as_nifti.stderr
    assert sorted(p.name for p in out.glob("*.dcm")) == now  # another kind of output: the DICOM series stays, as a file's would
    # each kind replaces its own: x3 DICOM, then x3 NIfTI, leave one of each (the x2 ones gone), and both reruns skip
    for kind in ([], ["--format", "nii"]):
        again = run(medsr_cli + ["upscale", str(source), "-o", str(out), "--tile", "0", *kind])
        assert "upscaled 1 of 1" in again.stdout, again.stdout + again.stderr
    dicoms, niftis = sorted(p.name for p in out.glob("*.dcm")), list(out.glob("*.nii.gz"))
    assert len(dicoms) == len(first) and not set(dicoms) & set(now) and len(niftis) == 1, (dicoms, niftis)
    for kind in ([], ["--format", "nii"]):
        assert "1 skipped (complete)" in run(medsr_cli + ["upscale", str(source), "-o", str(out), "--tile", "0", *kind]).stdout


def test_a_broken_series_is_said_so_and_done_file_by_file(tmp_path, medsr_cli):
    source = tmp_path / "series"
    shutil.copytree(SERIES / "siemens-sag-gre-fieldmap", source)
    (source / "3.dcm").unlink()  # a missing slice: the gap is twice the spacing
    result = run(medsr_cli + ["upscale", str(source), "-o", str(tmp_path / "out"), "--tile", "0"])
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("medsr: note:")]
    assert len(notes) == 1 and "slice by slice" in notes[0]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.dcm")) == ["1.dcm", "2.dcm", "4.dcm", "5.dcm"]
    # the slice back: one derived series replaces the file-by-file outputs, and the reverse (not two series of one source)
    shutil.copy(SERIES / "siemens-sag-gre-fieldmap" / "3.dcm", source / "3.dcm")
    whole = run(medsr_cli + ["upscale", str(source), "-o", str(tmp_path / "out"), "--tile", "0"])
    assert "upscaled 1 of 1 series" in whole.stdout, whole.stdout + whole.stderr
    names = sorted(p.name for p in (tmp_path / "out").glob("*.dcm"))
    assert len(names) == 5 and all(name.startswith("medsr_") for name in names), names
    (source / "3.dcm").unlink()
    assert run(medsr_cli + ["upscale", str(source), "-o", str(tmp_path / "out"), "--tile", "0"]).returncode == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.dcm")) == ["1.dcm", "2.dcm", "4.dcm", "5.dcm"]


def test_uncertainty_with_a_series_says_it_draws_no_maps(tmp_path, medsr_cli):
    result = run(medsr_cli + ["upscale", str(SERIES / "siemens-sag-gre-fieldmap"), "-o", str(tmp_path / "out"), "--tile", "0",
                              "--uncertainty"])
    assert result.returncode == 0, result.stderr
    assert "the DICOM series here get none" in result.stderr and not list((tmp_path / "out").glob("*.uncertainty.*"))


def disc_with_a_report(tmp_path: Path) -> Path:
    """The Siemens series as a disc export (a DICOMDIR indexing it) plus a structured report in the same series."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.fileset import FileSet
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

    disc = FileSet()
    for path in sorted((SERIES / "siemens-sag-gre-fieldmap").glob("*.dcm")):
        disc.add(pydicom.dcmread(path))
    disc.write(tmp_path / "disc")
    first = pydicom.dcmread(next((SERIES / "siemens-sag-gre-fieldmap").glob("*.dcm")), stop_before_pixels=True)
    report = pydicom.Dataset()
    report.file_meta = FileMetaDataset()
    report.file_meta.MediaStorageSOPClassUID, report.file_meta.MediaStorageSOPInstanceUID = BasicTextSRStorage, generate_uid()
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.SOPClassUID, report.SOPInstanceUID, report.Modality = BasicTextSRStorage, report.file_meta.MediaStorageSOPInstanceUID, "SR"
    report.StudyInstanceUID, report.SeriesInstanceUID = first.StudyInstanceUID, generate_uid()
    report.save_as(tmp_path / "disc" / "report.dcm", enforce_file_format=True)
    return tmp_path / "disc"


@pytest.mark.parametrize("fmt", [[], ["--format", "png"]])
def test_a_disc_export_upscales_its_images_and_leaves_the_dicomdir_and_report_out(fmt, tmp_path, medsr_cli):
    disc = disc_with_a_report(tmp_path)
    result = run(medsr_cli + ["upscale", str(disc), "-o", str(tmp_path / "out"), "--tile", "0", *fmt])
    assert result.returncode == 0, result.stderr  # nothing failed: an index and a report are no failures
    notes = [line for line in result.stderr.splitlines() if "hold no image" in line]
    assert len(notes) == 1 and f"{disc / 'DICOMDIR'} and 1 more" in notes[0] and "left out" in notes[0], result.stderr
    assert "skipped" not in result.stderr
    written = sorted((tmp_path / "out").rglob("*.png" if fmt else "*.dcm"))
    assert len(written) == 5
    alone = run(medsr_cli + ["upscale", str(disc / "DICOMDIR"), "-o", str(tmp_path / "named"), "--tile", "0"])
    assert alone.returncode == 1 and f"{disc / 'DICOMDIR'}: holds no image (a DICOMDIR)" in alone.stderr


def test_an_image_without_its_pixel_data_in_a_folder_still_fails(tmp_path, medsr_cli):
    import pydicom

    (tmp_path / "in").mkdir()
    source = sorted((SERIES / "siemens-sag-gre-fieldmap").glob("*.dcm"))[0]
    cut = pydicom.dcmread(source)
    del cut.PixelData  # an MR image cut short: its class says image, so it is a failure, not an index to leave out
    cut.save_as(tmp_path / "in" / "cut.dcm")
    result = run(medsr_cli + ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--tile", "0"])
    assert result.returncode == 1 and "has no pixel data" in result.stderr and "left out" not in result.stderr


def test_a_series_made_thin_into_png_or_tiff_files_is_one_line_before_any_work(tmp_path, medsr_cli):
    source = SERIES / "siemens-sag-gre-fieldmap"
    result = run(medsr_cli + ["upscale", str(source), "-o", str(tmp_path / "out"), "--through-plane", "--format", "tiff"])
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"medsr: error: {source}: --through-plane") and "use --format nii" in result.stderr
    assert not list(tmp_path.glob("out/*.tif*"))


def test_a_series_with_one_unreadable_file_says_the_series_was_not_upscaled(tmp_path, medsr_cli):
    shutil.copytree(SERIES / "siemens-sag-gre-fieldmap", tmp_path / "in")
    cut = tmp_path / "in" / "3.dcm"
    cut.write_bytes(cut.read_bytes()[:-2000])  # its header reads, its pixels do not
    result = run(medsr_cli + ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--tile", "0"])
    assert result.returncode == 1
    [line] = [line for line in result.stdout.splitlines() if "failed:" in line]
    assert f"{cut}: " in line and f"(so its series, 5 files in {tmp_path / 'in'}, was not upscaled)" in line
