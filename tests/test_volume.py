"""Through-plane SR of volumes: exact geometry (arrays and NIfTI), slab-by-slab = whole, quality of the shipped model."""

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import DATA, needs_data

from medsr import metrics
from medsr.data import slice_profile as sp
from medsr.errors import MedsrError
from medsr.inference import volume as V
from medsr.io import read_image, write_image
from medsr.models import create_generator


def identity_net():
    """A through-plane network whose residual is zero: its output is the cubic input (exact reference)."""
    return create_generator("through-plane", channels=8, num_blocks=1)


def random_net(seed=0):
    torch.manual_seed(seed)
    net = create_generator("through-plane", channels=8, num_blocks=1)
    torch.nn.init.normal_(net.tail.weight, std=0.05)
    return net


def test_grid_keeps_the_field_of_view_and_centres():
    grid = V.through_plane_grid(30, 5.0, 0.9)  # 150 mm of 5 mm slices to ~0.9 mm
    assert grid.count == round(150 / 0.9) == 167
    assert grid.count * grid.spacing == pytest.approx(150.0)
    assert grid.positions[0] == pytest.approx((grid.spacing - 5.0) / 2)  # first centre: old edge + t'/2
    assert grid.positions[-1] + grid.spacing / 2 == pytest.approx(29 * 5.0 + 2.5)  # last edge: old last edge


def test_values_land_at_their_positions():
    # a ramp equal to each voxel's distance (mm) from the first slice centre survives thick slicing;
    # the output must then hold each new voxel's own position: centres aligned, no half-voxel shift
    n, d = 24, 4.0
    ramp = np.broadcast_to(np.arange(n) * d, (6, 5, n)).astype(np.float32) + 100
    result = V.upscale_through_plane(ramp, (1.0, 1.0, d), 2, model=identity_net(), progress=False, precision="fp32")
    assert result.array.shape == (6, 5, 96) and result.spacing == (1.0, 1.0, 1.0)
    assert result.shift == pytest.approx((1.0 - d) / 2)
    inner = slice(24, -24)  # the mirrored edges bend a ramp (a shifted grid would be off by 0.5 mm or more)
    assert np.abs(result.array[2, 2, inner] - 100 - result.positions[inner]).max() < 1e-3


def synthetic_nifti(path, shape=(20, 18, 9), zooms=(0.9, 0.9, 5.0), extra_dims=()):
    rng = np.random.default_rng(0)
    data = rng.random(shape + extra_dims).astype(np.float32)
    # oblique, with a translation: the update must follow the slice direction, not the world z axis
    angle = 0.3
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(zooms)
    affine[:3, 3] = [-40.0, 12.5, 7.0]
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, 1)
    image.set_sform(affine, 1)
    nib.save(image, str(path))
    return affine


def thin_nifti(src, dst, model):
    """The file path medsr upscale --through-plane takes: read_image, through_plane_image, write_image."""
    thin = V.through_plane_image(read_image(src), V.ThroughPlane(model=model, precision="fp32"))
    write_image(dst, thin)
    return thin


def test_nifti_affine_and_zooms_are_exact(tmp_path):
    src, dst = tmp_path / "thick.nii.gz", tmp_path / "thin.nii.gz"
    old = synthetic_nifti(src)
    thin = thin_nifti(src, dst, random_net())
    image = nib.load(str(dst))
    n_new = round(9 * 5.0 / 0.9)
    t_new = 9 * 5.0 / n_new
    result = V.through_plane_grid(9, 5.0, 0.9)
    assert image.shape == (20, 18, n_new)
    assert np.allclose(image.header.get_zooms(), (0.9, 0.9, t_new))
    assert np.allclose(image.get_qform(), image.get_sform())
    world = lambda affine, ijk: affine @ np.array([*ijk, 1.0])
    # field of view unchanged: the slab's outer faces are where they were
    assert np.allclose(world(image.affine, (0, 0, -0.5)), world(old, (0, 0, -0.5)))
    assert np.allclose(world(image.affine, (0, 0, n_new - 0.5)), world(old, (0, 0, 9 - 0.5)))
    # every new centre sits at its position along the old slice direction, first one shifted by (t' - d) / 2
    for j in (0, 7, n_new - 1):
        expected = world(old, (0, 0, result.positions[j] / 5.0))
        assert np.allclose(world(image.affine, (0, 0, j)), expected)
    assert result.positions[0] == pytest.approx((t_new - 5.0) / 2)
    low, high = thin.meta.value_range  # the values are the result's, back in the file's own units
    assert np.allclose(image.get_fdata(), low + np.moveaxis(thin.pixels, 0, 2) * (high - low), atol=1e-5)
    # in-plane axes are untouched
    assert np.allclose(image.affine[:3, :2], old[:3, :2])


def test_through_plane_keeps_qform_and_sform_apart_with_their_codes(tmp_path):
    src, dst = tmp_path / "thick.nii.gz", tmp_path / "thin.nii.gz"
    qform = synthetic_nifti(src)
    sform = qform.copy()
    sform[:3, 3] += (5.0, -7.0, 3.0)  # another space (code 4, MNI) than the scanner's (code 1)
    image = nib.load(str(src))
    image.set_sform(sform, code=4)
    image.header.set_dim_info(slice=2)  # slice timing of the 9 acquired slices
    image.header["slice_code"], image.header["slice_end"], image.header["slice_duration"] = 1, 8, 0.1
    nib.save(image, str(src))
    thin_nifti(src, dst, random_net())
    out = nib.load(str(dst))
    n_new = round(9 * 5.0 / 0.9)
    # the new slices were not acquired, so they carry no slice timing (slice_end 8 of 50 would misread)
    assert [float(out.header[key]) for key in ("slice_code", "slice_end", "slice_duration")] == [0, 0, 0]
    step = np.eye(4)  # new slice j sits at old slice j * t' / d + (t' - d) / (2 d)
    step[2, 2] = (45.0 / n_new) / 5.0
    step[2, 3] = (45.0 / n_new - 5.0) / 10.0
    new_sform, sform_code = out.header.get_sform(coded=True)
    new_qform, qform_code = out.header.get_qform(coded=True)
    assert (int(sform_code), int(qform_code)) == (4, 1)
    assert np.allclose(new_sform, sform @ step, atol=1e-4)
    assert np.allclose(new_qform, qform @ step, atol=1e-4)


def test_slab_by_slab_equals_whole_volume(monkeypatch):
    volume = np.random.default_rng(3).random((30, 26, 10)).astype(np.float32)
    whole = V.upscale_through_plane(volume, (0.8, 0.8, 3.2), 2, model=random_net(), progress=False, precision="fp32")
    monkeypatch.setattr(V, "BATCH_PIXELS", 50)  # one plane per slab and per forward pass
    seen = []
    slabs = V.upscale_through_plane(volume, (0.8, 0.8, 3.2), 2, model=random_net(), precision="fp32",
                                    progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (30 + 26, 30 + 26)
    assert np.abs(whole.array - slabs.array).max() < 1e-5
    assert np.abs(whole.array - V.interpolate_through_plane(volume, (0.8, 0.8, 3.2), 2).array).mean() > 1e-3  # the net did act


def test_empty_planes_pass_through_untouched():
    volume = np.zeros((20, 16, 6), np.float32)
    volume[5:15, 4:12] = np.random.default_rng(6).random((10, 8, 6))  # a "head" in the middle, air around it
    result = V.upscale_through_plane(volume, (1, 1, 4), 2, model=random_net(), progress=False, precision="fp32")
    assert np.all(result.array[:5, :4] == 0)  # air in both orientations' empty planes stays exactly 0
    assert np.abs(result.array[8:12, 6:10]).max() > 0


def test_a_zero_background_around_a_round_head_stays_zero():
    """Corners beside a round head lie in planes that cross it, where the network acts; a skull-stripped
    volume's background must still come out exactly 0 (a mask of > 0 finds the head)."""
    from scipy import ndimage

    a, b = np.mgrid[:24, :24]
    disc = (a - 11.5) ** 2 + (b - 11.5) ** 2 < 10**2
    volume = np.where(disc[..., None], np.random.default_rng(7).random((24, 24, 6)) + 0.5, 0).astype(np.float32)
    result = V.upscale_through_plane(volume, (1, 1, 4), 2, model=random_net(), progress=False, precision="fp32")
    outside = ndimage.minimum_filter((~disc).astype(np.uint8), size=3, mode="nearest").astype(bool)  # zero all around in-plane
    assert outside.sum() > 50 and np.all(result.array[outside] == 0)
    assert np.all(result.array[disc] != 0)


def test_any_axis_can_be_the_slice_axis():
    volume = np.random.default_rng(4).random((20, 16, 8)).astype(np.float32)
    last = V.upscale_through_plane(volume, (1, 1, 3), 2, model=random_net(), progress=False, precision="fp32")
    first = V.upscale_through_plane(np.moveaxis(volume, 2, 0), (3, 1, 1), 0, model=random_net(), progress=False, precision="fp32")
    assert np.allclose(np.moveaxis(first.array, 0, 2), last.array, atol=1e-6)


def test_bad_input_raises_one_line_errors(tmp_path):
    net = identity_net()
    with pytest.raises(MedsrError, match="at least 2 slices"):
        V.upscale_through_plane(np.ones((8, 8, 1)), (1, 1, 5), 2, model=net)
    with pytest.raises(MedsrError, match=r"nothing to thin; .*in Python slice_spacing="):  # upscale_volume's and upscale_file's name
        V.upscale_through_plane(np.ones((8, 8, 8)), (1, 1, 1), 2, model=net)
    with pytest.raises(MedsrError, match="8 slices 4 mm apart make 8 at a target of 3.9 mm"):  # coarser, yet no new slice
        V.upscale_through_plane(np.ones((8, 8, 8)), (1, 1, 4), 2, model=net, target_spacing=3.9)
    with pytest.raises(MedsrError, match="not a 3-D volume"):
        V.upscale_through_plane(np.ones((8, 8)), (1, 1), 1, model=net)
    with pytest.raises(MedsrError, match=r"make 4000000 at a target of 1e-05 mm, 256,000,000 voxels, above medsr's limit of 100,000,000"):
        V.upscale_through_plane(np.ones((8, 8, 10)), (1, 1, 4), 2, model=net, target_spacing=1e-5)  # before any memory is taken
    with pytest.raises(MedsrError, match="adapt_minutes -3 must be 0"):
        V.upscale_through_plane(np.ones((8, 8, 4)), (1, 1, 4), 2, model=net, adapt_minutes=-3)
    iso = tmp_path / "iso.nii.gz"
    synthetic_nifti(iso, zooms=(1.0, 1.0, 1.0))
    with pytest.raises(MedsrError, match="nothing to thin"):
        thin_nifti(iso, tmp_path / "out.nii.gz", net)
    with pytest.raises(MedsrError, match="not a through-plane one"):
        V.upscale_through_plane(np.ones((8, 8, 4)), (1, 1, 4), 2, model="default")


def test_single_volume_4d_nifti_is_accepted(tmp_path):
    src = tmp_path / "one.nii.gz"
    synthetic_nifti(src, extra_dims=(1,))
    thin_nifti(src, tmp_path / "out.nii", identity_net())
    assert nib.load(tmp_path / "out.nii").shape == (20, 18, 50, 1)  # still 4-D, as the source


def test_adaptation_tunes_a_copy():
    rng = np.random.default_rng(5)
    volume = np.pad(rng.random((40, 40, 8)).astype(np.float32), ((4, 4), (4, 4), (0, 0)))
    net = identity_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = V.upscale_through_plane(volume, (1, 1, 4), 2, model=net, adapt_minutes=0.02, progress=False)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the caller's model is untouched
    assert result.array.shape == (48, 48, 32)
    assert np.abs(result.array - V.interpolate_through_plane(volume, (1, 1, 4), 2).array).mean() > 0  # it learned something


def head_psnr_ssim(output, reference, mask):
    """PSNR over the mask's voxels and mean SSIM over planes, both with the reference's white level as range."""
    white = sp.intensity_scale(reference)
    psnr = 10 * np.log10(white**2 / np.mean((output[mask] - reference[mask]) ** 2))
    to = lambda a: torch.from_numpy(np.clip(a / white, 0, 1)).permute(2, 0, 1)[:, None].float()
    return psnr, metrics.ssim(to(output), to(reference)).mean().item()


@pytest.mark.shared
@pytest.mark.slow
@needs_data
def test_shipped_model_beats_cubic_on_the_test_volume():
    # the held-aside subject, never trained on; a central 96 x 96 column keeps the test short
    reference = sp.read_volume(DATA / "nifti" / "brain-t1-sub-09.nii.gz")[96:192, 96:192, :180]
    thick, _ = sp.simulate_thick_slices(reference, axis=2, spacing=4.0)
    cubic = V.interpolate_through_plane(thick, (1, 1, 4.0), 2, target_spacing=1.0).array
    medsr = V.upscale_through_plane(thick, (1, 1, 4.0), 2, target_spacing=1.0, progress=False).array
    mask = reference > 0
    psnr_cubic, ssim_cubic = head_psnr_ssim(cubic, reference, mask)
    psnr_medsr, ssim_medsr = head_psnr_ssim(medsr, reference, mask)
    assert psnr_medsr > psnr_cubic + 1.5, (psnr_medsr, psnr_cubic)
    assert ssim_medsr > ssim_cubic
