"""`medsr upscale VOLUME --through-plane`: thick slices made thin through the batch runner, for a
NIfTI volume (nibabel reads the geometry back) and a real DICOM series (dcm2niix reads it back),
alone or combined with in-plane super-resolution."""

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import DATA, needs_data

from medsr.errors import MedsrError

DCM2NIIX = shutil.which("dcm2niix")


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def thick_volume(path):
    """A 40x36x8 volume of 0.9 mm pixels and 4 mm slices: smooth blobs, so the result has structure."""
    x, y, z = np.meshgrid(np.linspace(-1, 1, 40), np.linspace(-1, 1, 36), np.linspace(-1, 1, 8), indexing="ij")
    data = 500 * np.exp(-((x - 0.2) ** 2 + y**2 + (z * 0.8) ** 2) * 3) + 200 * (x**2 + y**2 < 0.5)
    affine = np.array([[-0.9, 0, 0, 20.0], [0, 0.9, 0, -10.0], [0, 0, 4.0, -30.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    return nib.load(path)


def expected_affine(source: np.ndarray, slice_spacing: float, new_spacing: float, in_plane: float = 1.0) -> np.ndarray:
    """The same field of view: voxel edges line up, so the first centre moves by half the change of step."""
    new = source.copy()
    new[:3, 3] += source[:3, 2] * (new_spacing / slice_spacing - 1) / 2
    new[:3, 2] *= new_spacing / slice_spacing
    for axis in (0, 1):
        new[:3, 3] += source[:3, axis] * (1 / in_plane - 1) / 2
        new[:3, axis] /= in_plane
    return new


def test_through_plane_alone_makes_the_slices_thin_with_the_exact_affine(tmp_path, medsr_cli):
    source = thick_volume(tmp_path / "t1.nii.gz")
    result = run(medsr_cli + ["upscale", str(tmp_path / "t1.nii.gz"), "-o", str(tmp_path / "out"), "--through-plane"])
    assert result.returncode == 0, result.stderr
    assert "upscaled 1 of 1 file(s) made thin across the slices into" in result.stdout  # not "x1"
    assert "slab" not in result.stderr and "\r" not in result.stderr  # stderr is no terminal here: no progress bar's redraws
    out = nib.load(tmp_path / "out" / "t1.nii.gz")
    assert out.shape == (40, 36, 36)  # 8 x 4 mm = 32 mm of slices at 0.9 mm: 36 slices of 32/36 mm
    assert np.allclose(out.header.get_zooms(), (0.9, 0.9, 32 / 36), atol=1e-5)
    assert np.abs(out.affine - expected_affine(source.affine, 4.0, 32 / 36)).max() < 1e-4
    data = np.asarray(out.dataobj)
    assert np.isfinite(data).all() and abs(data.max() - np.asarray(source.dataobj).max()) < 0.2 * data.max()


def test_through_plane_with_in_plane_sr_and_a_chosen_spacing(tmp_path, medsr_cli):
    source = thick_volume(tmp_path / "t1.nii.gz")
    result = run(medsr_cli + ["upscale", str(tmp_path / "t1.nii.gz"), "-o", str(tmp_path / "out"), "--through-plane",
                              "--slice-spacing", "2", "--scale", "2", "--tile", "0"])
    assert result.returncode == 0, result.stderr
    assert "upscaled 1 of 1 file(s) x2 and made thin across the slices into" in result.stdout
    out = nib.load(tmp_path / "out" / "t1.nii.gz")
    assert out.shape == (80, 72, 16)
    assert np.abs(out.affine - expected_affine(source.affine, 4.0, 2.0, in_plane=2)).max() < 1e-4


def test_through_plane_options_without_the_flag_and_2d_images_get_one_line(tmp_path, medsr_cli):
    thick_volume(tmp_path / "t1.nii.gz")
    result = run(medsr_cli + ["upscale", str(tmp_path / "t1.nii.gz"), "-o", str(tmp_path / "out"), "--adapt-minutes", "1"])
    assert result.returncode == 2 and "go with --through-plane" in result.stderr
    from PIL import Image

    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "flat.png")
    result = run(medsr_cli + ["upscale", str(tmp_path / "flat.png"), "-o", str(tmp_path / "out2"), "--through-plane"])
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [  # said before any work, in one line
        f"medsr: error: {tmp_path / 'flat.png'}: --through-plane makes the slices of a volume thin, and PNG, JPEG, TIFF and BMP "
        "files hold none; give a NIfTI volume or a DICOM series folder"]
    assert not (tmp_path / "out2").exists()
    (tmp_path / "mixed").mkdir()  # beside a volume, it is one failed file of the run, which goes on
    (tmp_path / "flat.png").rename(tmp_path / "mixed" / "flat.png")
    (tmp_path / "t1.nii.gz").rename(tmp_path / "mixed" / "t1.nii.gz")
    result = run(medsr_cli + ["upscale", str(tmp_path / "mixed"), "-o", str(tmp_path / "out4"), "--through-plane"])
    assert result.returncode == 1 and "not a 3-D NIfTI volume" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "out4" / "t1.nii.gz").is_file()
    from pydicom.data import get_testdata_file

    (tmp_path / "one.dcm").write_bytes(Path(get_testdata_file("MR_small.dcm")).read_bytes())  # one slice: no volume
    result = run(medsr_cli + ["upscale", str(tmp_path / "one.dcm"), "-o", str(tmp_path / "out3"), "--through-plane"])
    assert result.returncode == 1 and "not part of a DICOM series that forms a volume" in result.stderr


@needs_data
def test_a_series_with_a_missing_slice_is_said_not_to_be_made_thin(tmp_path, medsr_cli):
    (tmp_path / "gap").mkdir()
    for k in (1, 2, 4, 5):  # slice 3 of the 5 missing: no evenly spaced volume
        shutil.copy(DATA / "dicom-series" / "siemens-sag-gre-fieldmap" / f"{k}.dcm", tmp_path / "gap")
    result = run(medsr_cli + ["upscale", str(tmp_path / "gap"), "-o", str(tmp_path / "out"), "--through-plane"])
    assert result.returncode == 1 and "--through-plane cannot make it thin (its files fail)" in result.stderr
    assert "slice by slice instead" not in result.stderr


@needs_data
@pytest.mark.shared
@pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix is not installed (apt install dcm2niix); .ci/run installs it")
def test_a_dicom_series_made_thin_is_one_series_dcm2niix_reads_right(tmp_path, medsr_cli):
    source = DATA / "dicom-series" / "siemens-sag-gre-fieldmap"  # 5 sagittal slices, 5 mm apart
    result = run(medsr_cli + ["upscale", str(source), "-o", str(tmp_path / "out"), "--through-plane", "--slice-spacing", "2.5"])
    assert result.returncode == 0, result.stderr
    images = {}
    for name, folder in (("source", source), ("derived", tmp_path / "out")):
        (tmp_path / name).mkdir()
        converted = run([DCM2NIIX, "-o", str(tmp_path / name), "-f", "%s", "-z", "n", str(folder)])
        assert converted.returncode == 0, converted.stdout
        [images[name]] = [nib.load(p) for p in (tmp_path / name).glob("*.nii")]
    src, new = images["source"], images["derived"]
    spacing = float(src.header.get_zooms()[2])
    count = round(src.shape[2] * spacing / 2.5)
    assert new.shape == (*src.shape[:2], count)
    assert np.abs(new.affine - expected_affine(src.affine, spacing, src.shape[2] * spacing / count)).max() < 0.01


def test_the_api_upscales_a_nifti_file_and_a_series_folder(tmp_path):
    import medsr

    source = thick_volume(tmp_path / "t1.nii.gz")
    written = medsr.upscale_file(tmp_path / "t1.nii.gz", tmp_path / "thin.nii.gz", through_plane=True, slice_spacing=2.0)
    out = nib.load(written)
    assert out.shape == (40, 36, 16) and np.abs(out.affine - expected_affine(source.affine, 4.0, 2.0)).max() < 1e-4
    series = DATA / "dicom-series" / "siemens-sag-gre-fieldmap"
    if not series.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    folder = medsr.upscale_file(series, tmp_path / "derived", scale=2, tile=0)
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == 5
    import pydicom

    derived = [pydicom.dcmread(f) for f in files]
    assert len({ds.SeriesInstanceUID for ds in derived}) == 1 and {(ds.Rows, ds.Columns) for ds in derived} == {(128, 84)}
    volume = nib.load(medsr.upscale_file(series, tmp_path / "derived.nii.gz", scale=2, tile=0))  # one NIfTI file
    assert volume.shape == (84, 128, 5) and np.allclose(volume.header.get_zooms(), (4.375 / 2, 4.375 / 2, 5.0))


def test_the_through_plane_model_is_not_an_in_plane_one(tmp_path, medsr_cli):
    from PIL import Image

    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "flat.png")
    result = run(medsr_cli + ["upscale", str(tmp_path / "flat.png"), "-o", str(tmp_path / "out"), "--model", "through-plane"])
    assert result.returncode == 2 and "name it with --through-plane --through-plane-model" in result.stderr


def test_a_through_plane_model_of_ones_own_makes_the_slices_thin(tmp_path, medsr_cli):
    import shutil

    import medsr

    zoo_dir = Path(medsr.__file__).parent / "zoo"
    shutil.copy(zoo_dir / "through-plane.safetensors", tmp_path / "mine.safetensors")  # as a run of configs/through-plane.yaml makes
    shutil.copy(zoo_dir / "default.safetensors", tmp_path / "in-plane.safetensors")
    thick_volume(tmp_path / "t1.nii.gz")
    base = [*medsr_cli, "upscale", str(tmp_path / "t1.nii.gz"), "--through-plane"]
    assert run(base + ["-o", str(tmp_path / "shipped")]).returncode == 0
    mine = run(base + ["-o", str(tmp_path / "mine"), "--through-plane-model", str(tmp_path / "mine.safetensors")])
    assert mine.returncode == 0, mine.stderr
    assert np.array_equal(nib.load(tmp_path / "mine" / "t1.nii.gz").get_fdata(), nib.load(tmp_path / "shipped" / "t1.nii.gz").get_fdata())
    wrong = run(base + ["-o", str(tmp_path / "wrong"), "--through-plane-model", str(tmp_path / "in-plane.safetensors")])
    assert wrong.returncode == 2 and "not a through-plane one" in wrong.stderr and "t1.nii.gz" not in wrong.stdout, wrong.stdout
    alone = run([*medsr_cli, "upscale", str(tmp_path / "t1.nii.gz"), "-o", str(tmp_path / "x"), "--through-plane-model", "m"])
    assert alone.returncode == 2 and "go with --through-plane; add it" in alone.stderr
    result = medsr.upscale_volume(np.asarray(nib.load(tmp_path / "t1.nii.gz").dataobj), (0.9, 0.9, 4.0),
                                  through_plane_model=tmp_path / "mine.safetensors")
    assert result.array.shape == (40, 36, 36)


def test_a_volumes_uncertainty_picture_is_drawn_as_a_viewer_draws_its_slices(tmp_path, medsr_cli):
    """--uncertainty on a NIfTI volume: the overlay PNG shows a slice as medsr serve and a DICOM viewer draw
    it (x across the screen: 40 voxels x 3 wide, 36 x 3 high, above the legend); the TIFF keeps the file's layout."""
    from PIL import Image

    from medsr.inference.hallucination import legend

    thick_volume(tmp_path / "v.nii.gz")
    result = run([*medsr_cli, "upscale", str(tmp_path / "v.nii.gz"), "-o", str(tmp_path / "out"), "--uncertainty", "--tile", "0"])
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "out" / "v.uncertainty.png").size == (120, 108 + legend(120).shape[0])
    tiff = Image.open(tmp_path / "out" / "v.uncertainty.tif")
    assert tiff.size == (108, 120) and tiff.n_frames == 8  # (rows, columns) as read: the file's x down the rows


def test_the_api_refuses_a_series_into_an_image_file_and_thin_options_without_through_plane(tmp_path):
    import medsr

    thick_volume(tmp_path / "t1.nii.gz")
    with pytest.raises(MedsrError, match="slice_spacing, slice_thickness, adapt_minutes and through_plane_model go with through_plane=True"):
        medsr.upscale_file(tmp_path / "t1.nii.gz", tmp_path / "x.nii.gz", slice_spacing=1.0)  # silently ignored before
    series = DATA / "dicom-series" / "siemens-sag-gre-fieldmap"
    if not series.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    for target, fmt in (("x.png", None), ("x.dcm", None), ("x", "tiff")):
        with pytest.raises(MedsrError, match=rf"{series}: a DICOM series is written as a derived series into a folder, or as one NIfTI"):
            medsr.upscale_file(series, tmp_path / target, scale=2, tile=0, format=fmt)
        assert not (tmp_path / target).exists()  # not a folder named x.png full of DICOM files
    assert len(list(medsr.upscale_file(series, tmp_path / "derived", scale=2, tile=0, format="dcm").glob("*.dcm"))) == 5


def test_through_plane_values_are_checked_as_options(tmp_path, medsr_cli):
    thick_volume(tmp_path / "t1.nii.gz")
    for option, value, words in (("--slice-spacing", "0", "is not a length"), ("--slice-thickness", "nan", "is not a length"),
                                 ("--adapt-minutes", "-1", "is not a duration")):
        result = run(medsr_cli + ["upscale", str(tmp_path / "t1.nii.gz"), "-o", str(tmp_path / "out"), "--through-plane", option, value])
        assert result.returncode == 2 and f"argument {option}: '{value}' {words}" in result.stderr
