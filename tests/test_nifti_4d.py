"""4-D NIfTI (fMRI, diffusion: a 3-D volume per time point or direction): read as every volume's
slices in turn, upscaled in-plane or made thin volume by volume, written back 4-D with the fourth
axis (its order and its step, e.g. the repetition time) as it was."""

import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest
from conftest import DATA

from medsr.errors import MedsrError
from medsr.inference import volume as V
from medsr.io import read_image, write_image
from medsr.io.nifti import scaled_affine, volume_count
from medsr.models import create_generator

DCM2NIIX = shutil.which("dcm2niix")
FMRI = DATA / "dicom-series" / "philips-epi-fmri"


def four_d(path, shape=(12, 10, 4, 3), zooms=(2.0, 2.0, 5.0, 2.5)):
    """A 4-D file whose time point t holds values 100*t + a ramp: each volume is told apart by its level."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape[:3]], indexing="ij")
    data = np.stack([100.0 * t + x + 2 * y + 3 * z for t in range(shape[3])], axis=3).astype(np.float32)
    affine = np.diag([*zooms[:3], 1.0])
    affine[:3, 3] = [-10.0, 5.0, 30.0]
    image = nib.Nifti1Image(data, affine)
    image.header.set_zooms(zooms)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))
    return data, affine


def test_read_gives_every_volume_in_turn_and_writes_back_exactly(tmp_path):
    data, affine = four_d(tmp_path / "fmri.nii.gz")
    image = read_image(tmp_path / "fmri.nii.gz")
    assert volume_count(image.meta) == 3 and image.meta.slice_axis == 2 and image.meta.pixel_spacing == (2.0, 2.0)
    assert image.pixels.shape == (12, 12, 10)  # 3 volumes of 4 slices, each 12x10
    lo, hi = image.meta.value_range
    for t in range(3):
        for z in range(4):
            np.testing.assert_allclose(lo + image.pixels[4 * t + z] * (hi - lo), data[:, :, z, t], atol=1e-3)
    same = nib.load(write_image(tmp_path / "same.nii.gz", image))
    np.testing.assert_allclose(np.asanyarray(same.dataobj), data, atol=1e-3)
    assert same.header.get_zooms() == (2.0, 2.0, 5.0, 2.5) and same.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_allclose(same.affine, affine)


def test_in_plane_upscale_keeps_each_volume_and_the_fourth_axis(tmp_path):
    data, affine = four_d(tmp_path / "fmri.nii.gz")
    image = read_image(tmp_path / "fmri.nii.gz")
    upscaled = type(image)(np.repeat(np.repeat(image.pixels, 2, axis=1), 2, axis=2), image.meta)  # a stand-in x2 model
    out = nib.load(write_image(tmp_path / "x2.nii.gz", upscaled, scale=2, model_name="nearest"))
    assert out.shape == (24, 20, 4, 3) and out.header.get_zooms() == (1.0, 1.0, 5.0, 2.5)
    np.testing.assert_allclose(out.affine, scaled_affine(affine, [0, 1], 2))
    values = np.asanyarray(out.dataobj)
    for t in range(3):
        np.testing.assert_allclose(values[::2, ::2, :, t], data[..., t], atol=1e-3)


def test_through_plane_thins_each_volume_on_its_own(tmp_path):
    data, affine = four_d(tmp_path / "fmri.nii.gz")
    net = create_generator("through-plane", channels=8, num_blocks=1)  # zero residual: the cubic interpolation
    thin = V.through_plane_image(read_image(tmp_path / "fmri.nii.gz"), V.ThroughPlane(model=net, slice_spacing=2.5, precision="fp32"))
    out = nib.load(write_image(tmp_path / "thin.nii.gz", thin))
    assert out.shape == (12, 10, 8, 3) and out.header.get_zooms() == (2.0, 2.0, 2.5, 2.5)
    values = np.asanyarray(out.dataobj)
    for t in range(3):  # each time point from its own volume: a mix would pull its level towards the others'
        alone = V.interpolate_through_plane(data[..., t], (2.0, 2.0, 5.0), 2, target_spacing=2.5)
        np.testing.assert_allclose(values[..., t], np.minimum(alone.array, data.max()), atol=0.05)  # the file's range holds


def test_a_4d_file_is_adapted_once_not_once_per_volume(tmp_path, monkeypatch):
    four_d(tmp_path / "fmri.nii.gz", shape=(24, 20, 4, 3))
    tuned, real = [], V.adapt
    monkeypatch.setattr(V, "adapt", lambda *a, **k: tuned.append(real(*a, **k)) or tuned[-1])
    net = create_generator("through-plane", channels=8, num_blocks=1)
    options = V.ThroughPlane(model=net, slice_spacing=2.5, adapt_minutes=0.002, precision="fp32")
    thin = V.through_plane_image(read_image(tmp_path / "fmri.nii.gz"), options)
    assert len(tuned) == 1 and thin.pixels.shape == (3 * 8, 24, 20)  # --adapt-minutes N takes N minutes, not N per time point
    assert options.adapt_minutes == 0.002 and options.model is net  # the caller's options are left as they were


def test_more_than_four_dimensions_refused_in_one_line(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2, 3), np.float32), np.eye(4)), tmp_path / "field.nii")
    with pytest.raises(MedsrError, match=r"field\.nii.*5-D.*3-D or 4-D") as err:
        read_image(tmp_path / "field.nii")
    assert "\n" not in str(err.value)


@pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix is not installed (apt install dcm2niix); .ci/run installs it")
@pytest.mark.skipif(not FMRI.is_dir(), reason="../shared/data/dicom-series is not here")
def test_dcm2niix_fmri_upscaled_in_plane_and_thin_and_our_own_4d_output_reads_back(tmp_path, medsr_cli):
    """The Philips fMRI series as dcm2niix converts it (4-D), then medsr: every source voxel centre is
    the centre of a 3x3 block of new voxels, each time point from its own; and medsr's own 4-D output
    of the series is an input again."""
    (tmp_path / "nii").mkdir()
    subprocess.run([DCM2NIIX, "-z", "n", "-f", "fmri", "-o", str(tmp_path / "nii"), str(FMRI)], capture_output=True, check=True)
    source = nib.load(tmp_path / "nii" / "fmri.nii")
    assert source.ndim == 4 and source.shape[3] == 3
    run = [*medsr_cli, "upscale", "--tile", "0"]
    done = subprocess.run([*run, str(tmp_path / "nii" / "fmri.nii"), "-o", str(tmp_path / "x3")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    new = nib.load(next((tmp_path / "x3").glob("*.nii")))
    assert new.shape == (source.shape[0] * 3, source.shape[1] * 3, *source.shape[2:])
    assert new.header.get_zooms()[2:] == source.header.get_zooms()[2:]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in source.shape[:3]], indexing="ij"), -1).reshape(-1, 3)
    where = nib.affines.apply_affine(np.linalg.inv(new.affine), nib.affines.apply_affine(source.affine, ijk))
    index = where.round().astype(int)
    assert np.abs(where - index).max() < 1e-3 and set(np.unique(index[:, :2] % 3)) == {1}
    before, after = np.asanyarray(source.dataobj, dtype=np.float64), np.asanyarray(new.dataobj, dtype=np.float64)
    for t in range(3):
        same = np.corrcoef(before[..., t][tuple(ijk.T)], after[..., t][tuple(index.T)])[0, 1]
        other = np.corrcoef(before[..., t][tuple(ijk.T)] - before[..., (t + 1) % 3][tuple(ijk.T)],
                            after[..., t][tuple(index.T)] - after[..., (t + 1) % 3][tuple(index.T)])[0, 1]
        assert same > 0.99 and other > 0.5, (t, same, other)  # the time points' differences survive, in order

    thin = subprocess.run([*run, str(tmp_path / "nii" / "fmri.nii"), "-o", str(tmp_path / "thin"), "--through-plane"],
                          capture_output=True, text=True)
    assert thin.returncode == 0, thin.stderr
    made = nib.load(next((tmp_path / "thin").glob("*.nii")))
    assert made.shape[:2] == source.shape[:2] and made.shape[2] > source.shape[2] and made.shape[3] == 3

    series = subprocess.run([*run, str(FMRI), "-o", str(tmp_path / "series"), "--format", "nii", "--scale", "2"], capture_output=True, text=True)
    assert series.returncode == 0, series.stderr
    own = next((tmp_path / "series").glob("*.nii.gz"))
    again = subprocess.run([*run, str(own), "-o", str(tmp_path / "again"), "--scale", "2"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert nib.load(next((tmp_path / "again").glob("*.nii.gz"))).shape == tuple(n * 4 for n in source.shape[:2]) + source.shape[2:]
