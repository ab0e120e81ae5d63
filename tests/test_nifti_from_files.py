"""A single DICOM file, PNG or TIFF written as NIfTI (`--format nii`): axes (column, row, frame) as
dcm2niix and medsr's own series writer order them, a DICOM file where its position says (checked
against dcm2niix), MONOCHROME1 with its stored values, a raster upright in a viewer."""

import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest
from conftest import DATA
from PIL import Image

DCM2NIIX = shutil.which("dcm2niix")
DICOM = DATA / "dicom"
needs_dcm2niix = pytest.mark.skipif(DCM2NIIX is None or not DICOM.is_dir(),
                                    reason="needs dcm2niix (apt install dcm2niix; .ci/run installs it) and ../shared/data/dicom")


def upscale_to_nii(medsr_cli, source, out):
    result = subprocess.run([*medsr_cli, "upscale", str(source), "-o", str(out), "--format", "nii", "--tile", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return nib.load(next(out.glob("*.nii.gz")))


def dcm2niix(source, tmp_path):
    (tmp_path / "one").mkdir()
    shutil.copy(source, tmp_path / "one")
    subprocess.run([DCM2NIIX, "-z", "n", "-f", "ref", "-o", str(tmp_path), str(tmp_path / "one")], capture_output=True, check=True)
    return nib.load(tmp_path / "ref.nii")


@needs_dcm2niix
def test_a_dicom_file_lands_where_dcm2niix_puts_it(tmp_path, medsr_cli):
    source = DICOM / "ct-jpeg70.dcm"  # signed CT, Hounsfield units, an axial slice with its position
    ref, new = dcm2niix(source, tmp_path), upscale_to_nii(medsr_cli, source, tmp_path / "out")
    assert int(new.header["sform_code"]) == int(new.header["qform_code"]) == 1  # the scanner's space
    assert new.header.get_xyzt_units() == ref.header.get_xyzt_units() == ("mm", "sec")
    assert new.shape[:2] == (ref.shape[0] * 3, ref.shape[1] * 3)
    ijk = np.stack(np.meshgrid(np.arange(ref.shape[0]), np.arange(ref.shape[1]), [0], indexing="ij"), -1).reshape(-1, 3)
    where = nib.affines.apply_affine(np.linalg.inv(new.affine), nib.affines.apply_affine(ref.affine, ijk))
    index = where.round().astype(int)
    assert np.abs(where - index).max() < 1e-3 and set(np.unique(index[:, :2] % 3)) == {1}  # each source voxel: a 3x3 block's centre
    before = np.asanyarray(ref.dataobj).reshape(ref.shape[:2])[tuple(ijk[:, :2].T)]
    after = np.asanyarray(new.dataobj)[tuple(index[:, :2].T)]
    assert np.corrcoef(before, after)[0, 1] > 0.99 and abs(np.median(after - before)) < 5  # the same HU, not rescaled


@needs_dcm2niix
def test_values_are_on_the_files_integer_grid_and_its_zero_background_stays_zero(tmp_path, medsr_cli):
    source = DICOM / "head-mr-flair-implicit.dcm"  # signed 16-bit MR, 0 outside the head
    ref, new = dcm2niix(source, tmp_path), upscale_to_nii(medsr_cli, source, tmp_path / "out")
    before, after = np.asanyarray(ref.dataobj, dtype=np.float64), np.asanyarray(new.dataobj, dtype=np.float64)
    assert before.min() == 0 and (before == 0).mean() > 0.02
    assert np.array_equal(after, np.rint(after))  # what the file can hold, as dcm2niix gives it (not 574.999)
    assert after.min() == 0 and (after == 0).mean() > 0.25 * (before == 0).mean()  # not -7.6e-6 where the background was


@needs_dcm2niix
def test_monochrome1_keeps_its_stored_values(tmp_path, medsr_cli):
    source = DICOM / "chest-cr-siim-monochrome1.dcm"
    ref, new = dcm2niix(source, tmp_path), upscale_to_nii(medsr_cli, source, tmp_path / "out")
    # no position in this file, so compare by value: inverted values would give a negative correlation
    before = np.sort(np.asanyarray(ref.dataobj, dtype=np.float64).ravel())
    after = np.sort(np.asanyarray(new.dataobj, dtype=np.float64)[1::3, 1::3].ravel())
    assert abs(before.mean() - after.mean()) < 0.02 * (before.max() - before.min())
    assert np.corrcoef(before, after)[0, 1] > 0.99


def test_a_png_is_column_first_and_upright(tmp_path, medsr_cli):
    rows, cols = 24, 40
    picture = np.zeros((rows, cols), np.uint8)
    picture[:4, :] = 255  # a bright top edge
    picture[:, :3] = 128  # a gray left edge
    (tmp_path / "in").mkdir()
    Image.fromarray(picture).save(tmp_path / "in" / "scan.png")
    new = upscale_to_nii(medsr_cli, tmp_path / "in" / "scan.png", tmp_path / "out")
    data = np.asanyarray(new.dataobj)
    assert data.shape == (cols * 3, rows * 3)  # x: columns, y: rows
    top = nib.affines.apply_affine(new.affine, [[cols * 3 // 2, 2, 0]])[0]
    bottom = nib.affines.apply_affine(new.affine, [[cols * 3 // 2, rows * 3 - 3, 0]])[0]
    assert top[1] > bottom[1] and data[cols * 3 // 2, 2] > 200  # the first row is the top one, as a viewer draws +y up
    left = nib.affines.apply_affine(new.affine, [[2, rows * 3 // 2, 0]])[0]
    assert left[0] < top[0] and 100 < data[2, rows * 3 // 2] < 160


def test_a_2d_nifti_reads_as_a_viewer_draws_it_and_writes_back_unchanged(tmp_path):
    from medsr.io import read_image, write_image

    data = np.zeros((40, 24), np.int16)  # x: 40 columns, y: 24 rows
    data[:3, :] = 500  # a bright left edge
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.8, 1.0, 1.0])), tmp_path / "slice.nii")
    image = read_image(tmp_path / "slice.nii")
    assert image.pixels.shape == (24, 40) and image.pixels[:, :3].min() == 1.0 and image.pixels[:, 3:].max() == 0.0
    assert image.meta.pixel_spacing == pytest.approx((0.8, 0.5))  # (between rows, between columns)
    again = nib.load(write_image(tmp_path / "same.nii", image))
    np.testing.assert_array_equal(np.asanyarray(again.dataobj), data)


# world (RAS) direction of each voxel axis, one affine per way a volume may be stored
STORED = {"RAS": np.diag([1.0, 1.0, 1.0]), "LAS (dcm2niix)": np.diag([-1.0, 1.0, 1.0]), "LPS": np.diag([-1.0, -1.0, 1.0]),
          "y before x": np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])}


@pytest.mark.parametrize("stored", STORED)
@pytest.mark.parametrize("plane, corner", [("axial", "left anterior"), ("coronal", "left superior"), ("sagittal", "posterior superior")])
def test_a_volumes_slices_are_drawn_as_a_dicom_viewer_draws_them(tmp_path, stored, plane, corner):
    """Axial slices: the patient's left on the screen's right, anterior at the top; coronal: left on the
    right, superior at the top; sagittal: posterior on the right, superior at the top; however the file
    orders and turns its axes."""
    from medsr.io import read_image, write_image
    from medsr.io.nifti import display_view, displayed, undisplayed

    across_world = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]  # the world axis the slices are stacked along
    thick = int(np.abs(STORED[stored][across_world]).argmax())  # the voxel axis along it: the slice axis
    zooms = np.ones(3)
    zooms[thick] = 4.0
    affine = np.eye(4)
    affine[:3, :3] = STORED[stored] * zooms
    shape = [6, 5, 7]
    shape[thick] = 3
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    ras = ijk @ affine[:3, :3].T
    # the target corner (RAS: +x right, +y anterior, +z superior)
    score = {"axial": -ras[..., 0] + ras[..., 1], "coronal": -ras[..., 0] + ras[..., 2], "sagittal": -ras[..., 1] + ras[..., 2]}[plane]
    volume = np.zeros(shape, dtype=np.int16)
    middle = [slice(None)] * 3
    middle[thick] = shape[thick] // 2
    in_slice = np.full(shape, -np.inf)
    in_slice[tuple(middle)] = score[tuple(middle)]
    volume[np.unravel_index(in_slice.argmax(), shape)] = 1000
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "v.nii")
    image = read_image(tmp_path / "v.nii")
    view = display_view(image.meta)
    shown = displayed(image.pixels, view)[shape[thick] // 2]
    row, column = np.unravel_index(shown.argmax(), shown.shape)
    assert (row, column) == (0, shown.shape[1] - 1), f"{corner} corner drawn at {(row, column)} of {shown.shape}"
    assert np.array_equal(undisplayed(displayed(image.pixels, view), view), image.pixels)
    # written as a TIFF stack (--format tiff), each page is the slice as drawn
    with Image.open(write_image(tmp_path / "v.tif", image, format="tiff")) as tiff:
        tiff.seek(shape[thick] // 2)
        page = np.asarray(tiff)
    assert np.unravel_index(page.argmax(), page.shape) == (0, page.shape[1] - 1)
