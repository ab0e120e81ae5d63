"""Slice profiles: thick slices along one axis (FWHM, non-integer factors, gaps) and training pairs."""

import numpy as np
import pytest
import torch

from medsr.data import slice_profile as sp
from medsr.errors import MedsrError


def measured_fwhm(row: np.ndarray, centre: float) -> float:
    """FWHM of a sampled Gaussian-like row from its second moment (exact for a Gaussian)."""
    x = np.arange(len(row)) - centre
    sigma = np.sqrt((row * x**2).sum() / row.sum())
    return sigma * 2.3548200450309493  # 2 sqrt(2 ln 2), written out: the module's constant is under test


@pytest.mark.parametrize("thickness", [3.0, 5.56, 8.0])
def test_gaussian_profile_has_the_asked_fwhm(thickness):
    positions = np.array([100.0, 100.37])  # on and off the grid
    matrix = sp.degrade_matrix(201, positions, thickness)
    for row, centre in zip(matrix, positions):
        assert row.sum() == pytest.approx(1.0, abs=1e-6)
        assert measured_fwhm(row, centre) == pytest.approx(thickness, rel=0.02)
        assert (row * np.arange(201)).sum() == pytest.approx(centre, abs=1e-4)  # centred where asked


def test_impulse_response_of_a_volume_is_the_profile():
    volume = np.zeros((3, 4, 200), np.float32)
    volume[:, :, 100] = 1.0  # a thin bright sheet
    slices, _ = sp.simulate_thick_slices(volume, axis=2, spacing=1.0, thickness=6.0)
    profile = slices[1, 2]  # spacing 1: the slices sample the blurred sheet everywhere
    assert measured_fwhm(profile / profile.sum(), 100.0) == pytest.approx(6.0, rel=0.02)


def test_non_integer_factor_keeps_the_field_of_view():
    # 5 mm slices of 0.9 mm voxels: 5.56x; n slices cover n * 5.56 voxels from the first voxel's edge
    n_fine, factor = 180, 5 / 0.9
    slices, positions = sp.simulate_thick_slices(np.ones((2, n_fine)), axis=1, spacing=factor)
    assert slices.shape == (2, int(n_fine // factor)) == (2, 32)
    assert positions[0] == pytest.approx(factor / 2 - 0.5)
    assert np.diff(positions) == pytest.approx(np.full(31, factor))
    assert np.allclose(slices, 1.0, atol=1e-6)  # weights sum to 1: flat stays flat, edges included


def test_a_gap_blurs_less_but_samples_as_often():
    rng = np.random.default_rng(0)
    signal = rng.random((1, 300)).astype(np.float32)
    full, pos_full = sp.simulate_thick_slices(signal, 1, spacing=4.0)  # thickness = spacing
    gap, pos_gap = sp.simulate_thick_slices(signal, 1, spacing=4.0, thickness=2.0)  # 2 mm slices, 2 mm gaps
    assert np.array_equal(pos_full, pos_gap) and full.shape == gap.shape
    assert gap.std() > full.std()  # thinner profile: less averaging of the noise
    box, _ = sp.simulate_thick_slices(signal, 1, spacing=4.0, profile="rect")
    assert box[0, 3] == pytest.approx(signal[0, 12:16].mean(), abs=1e-6)  # a 4-voxel box over voxels 12..15


def test_interpolation_back_is_exact_for_smooth_signals():
    x = np.arange(240, dtype=np.float64)
    smooth = np.sin(x / 40)[None]
    positions = sp.edge_aligned_positions(240, 4.0)
    samples = np.sin(positions / 40)[None]  # point samples at the slice centres
    back = sp.interpolate_back(samples.astype(np.float32), 1, positions, 240, order=3)
    assert np.abs(back - smooth)[:, 40:-40].max() < 2e-4  # away from the mirrored edges
    linear = sp.interpolate_back(samples.astype(np.float32), 1, positions, 240, order=1)
    assert np.abs(linear - smooth)[:, 40:-40].max() > 10 * np.abs(back - smooth)[:, 40:-40].max()


def test_make_pair_shapes_and_phase():
    plane = np.random.default_rng(1).random((96, 64)).astype(np.float32)
    inp, target = sp.make_pair(plane, 3.3, phase=1.2)
    assert inp.shape == target.shape == plane.shape
    assert np.array_equal(target, plane)
    assert 0 < np.abs(inp - plane).mean() < 0.3


def test_sampler_is_reproducible_and_resumable():
    rng = np.random.default_rng(2)
    volumes = [np.pad(rng.random((50, 60, 40)).astype(np.float32), 4) for _ in range(2)]
    a = sp.ThroughPlaneSampler(volumes, 32, seed=3)
    b = sp.ThroughPlaneSampler(volumes, 32, seed=3)
    a.next_batch(4)
    state = a.state_dict()
    first = a.next_batch(4)
    b.load_state_dict(state)
    second = b.next_batch(4)
    assert first[0].shape == (4, 1, 32, 32)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert first[1].min() >= -1 and first[1].max() <= 1  # [-1, 1] convention for a [0, 1] volume
    val = sp.ThroughPlaneSampler(volumes, 32).fixed_pairs(6)
    assert torch.equal(val[0], sp.ThroughPlaneSampler(volumes, 32, seed=9).fixed_pairs(6)[0])


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(MedsrError, match="fewer than 2 thick slices"):
        sp.simulate_thick_slices(np.ones((4, 5)), 1, spacing=4.0)
    with pytest.raises(MedsrError, match="unknown slice profile"):
        sp.simulate_thick_slices(np.ones((4, 50)), 1, spacing=4.0, profile="triangle")
    with pytest.raises(MedsrError, match="must be > 0"):
        sp.simulate_thick_slices(np.ones((4, 50)), 1, spacing=4.0, thickness=0)


def test_custom_profile_callable():
    triangle = lambda offsets, thickness: np.clip(1 - np.abs(offsets) / thickness, 0, None)
    matrix = sp.degrade_matrix(50, np.array([25.0]), 4.0, triangle)
    assert np.count_nonzero(matrix) == 7 and matrix[0, 25] == matrix.max()
