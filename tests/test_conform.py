"""Working-grid geometry, resampling and intensity normalisation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skullstrip import conform


@given(offset=st.floats(-2000, 2000), scale=st.floats(0.01, 5000),
       method=st.sampled_from(conform.INTENSITY_NORMALISATIONS))
@settings(max_examples=30, deadline=None)
def test_normalisation_ignores_units(offset, scale, method):
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 1.0, (20, 20, 20)).astype(np.float32)
    # float32 rounding of the shifted image merges close values, which ranks feel more
    np.testing.assert_allclose(conform.normalize_intensity(image * scale + offset, method),
                               conform.normalize_intensity(image, method),
                               atol=2e-3 if method == "percentile" else 5e-3)


def head_in_air(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tissue intensities 2-10 in a cube of faint noisy air; returns (image, tissue)."""
    image = rng.uniform(0, 0.05, (24, 24, 24)).astype(np.float32)
    tissue = np.zeros(image.shape, bool)
    tissue[4:20, 4:20, 4:20] = True
    image[tissue] = rng.uniform(2, 10, int(tissue.sum()))
    return image, tissue


# remaps that keep every tissue voxel above a tenth of the brightest (the tissue threshold)
@given(remap=st.sampled_from([np.sqrt, np.log1p, lambda x: np.tanh(x / 5)]))
@settings(max_examples=3, deadline=None)
def test_rank_normalisation_is_blind_to_monotone_remaps_of_the_tissue(remap):
    image, tissue = head_in_air(np.random.default_rng(1))
    equalised = conform.normalize_intensity(image, "rank")
    np.testing.assert_allclose(conform.normalize_intensity(remap(image), "rank")[tissue], equalised[tissue],
                               atol=1e-3)  # float32 rounding may merge a few neighbouring values
    # the percentile scaling is not: a square root lifts the dark tissue
    linear = conform.normalize_intensity(image)
    assert np.abs(conform.normalize_intensity(np.sqrt(image))[tissue] - linear[tissue]).max() > 0.1


def test_rank_normalisation_spreads_the_tissue_evenly_and_keeps_order_and_air():
    image, tissue = head_in_air(np.random.default_rng(2))
    image[tissue] = np.exp(image[tissue] / 4)  # a bright tail: linear scaling squeezes most tissue dark
    out = conform.normalize_intensity(image, "rank")
    # the tissue fills (threshold, 1] evenly: its deciles are evenly spaced
    deciles = np.percentile(out[tissue], np.arange(10, 100, 10))
    np.testing.assert_allclose(np.diff(deciles), (1 - conform.TISSUE_THRESHOLD) / 10, atol=0.01)
    order = np.argsort(image, axis=None)
    assert (np.diff(out.ravel()[order]) >= 0).all()  # monotone: a darker voxel never ends brighter
    np.testing.assert_array_equal(out[~tissue], conform.normalize_intensity(image)[~tissue])  # air as before
    with pytest.raises(ValueError, match="normalisation"):
        conform.normalize_intensity(image, "zscore")


def test_normalisation_handles_nan_and_constant():
    image = np.zeros((10, 10, 10), np.float32)
    image[2:8, 2:8, 2:8] = 1
    image[0, 0, 0] = np.nan
    out = conform.normalize_intensity(image)
    assert np.isfinite(out).all()
    assert np.isfinite(conform.normalize_intensity(np.ones((5, 5, 5)))).all()


def test_working_grid_is_ras_isotropic_and_covers_the_box():
    affine = np.array([[-0.9, 0, 0, 100], [0, 0, 3.0, -50], [0, 1.1, 0, -80], [0, 0, 0, 1]])
    grid = conform.working_grid_for((200, 40, 180), affine)
    np.testing.assert_allclose(grid.affine[:3, :3], np.eye(3) * conform.WORKING_VOXEL_MM)
    assert all(s % conform.GRID_MULTIPLE == 0 for s in grid.shape)
    corners = conform.apply_affine(affine, np.array([[0, 0, 0], [199, 39, 179]], float))
    inside = conform.apply_affine(np.linalg.inv(grid.affine), corners)
    assert (inside >= -0.5).all() and (inside <= np.array(grid.shape) - 0.5).all()


def test_resample_identity_and_shift():
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(12, 14, 10)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    same = conform.resample(volume, affine, volume.shape, affine, order=1)
    np.testing.assert_allclose(same, volume, atol=1e-5)
    shifted_affine = affine.copy()
    shifted_affine[0, 3] = 2.0  # target voxel i sits at source voxel i + 1
    shifted = conform.resample(volume, affine, volume.shape, shifted_affine, order=1)
    np.testing.assert_allclose(shifted[:-1], volume[1:], atol=1e-5)


def test_antialias_sigma_only_when_downsampling():
    assert np.all(conform.antialias_sigma(np.diag([2.0, 2.0, 2.0, 1.0]), 2.0) == 0)
    sigma = conform.antialias_sigma(np.diag([0.5, 1.0, 4.0, 1.0]), 2.0)
    assert sigma[0] > sigma[1] > 0 and sigma[2] == 0


def test_head_box_finds_the_object_in_world_space():
    volume = np.zeros((50, 50, 50), np.float32)
    volume[10:20, 20:40, 5:45] = 100.0
    affine = np.diag([1.0, 2.0, 1.0, 1.0])
    low, high = conform.head_box(volume, affine, margin_mm=0)
    voxel = np.array([1.0, 2.0, 1.0])  # the 3-voxel smoothing may add one voxel
    assert np.all(np.abs(low - [9.5, 39.0, 4.5]) <= voxel + 1e-6)
    assert np.all(np.abs(high - [19.5, 79.0, 44.5]) <= voxel + 1e-6)


def test_block_reduction_keeps_world_positions_and_means():
    affine = np.diag([0.5, 1.0, 3.0, 1.0])
    affine[:3, 3] = [10, -20, 5]
    volume = np.arange(8 * 6 * 4, dtype=np.int16).reshape(8, 6, 4)
    reduced, reduced_affine = conform.reduce_to_working_resolution(volume, affine, voxel_mm=2.0)
    assert reduced.shape == (2, 3, 4) and reduced.dtype == np.float32
    assert reduced[0, 0, 0] == volume[:4, :2, 0].mean()
    # the centre of the first block sits between the first voxels' centres
    np.testing.assert_allclose(conform.apply_affine(reduced_affine, np.zeros((1, 3)))[0], [10.75, -19.5, 5])


def test_block_reduction_leaves_coarse_data_alone():
    volume = np.ones((5, 5, 5), np.float32)
    reduced, affine = conform.reduce_to_working_resolution(volume, np.diag([2.0, 3.0, 2.5, 1.0]))
    assert reduced is volume and affine[1, 1] == 3.0


def test_head_mask_fills_a_head_cut_open_by_the_field_of_view():
    grid = np.indices((40, 40, 40)) - 20
    radius = np.sqrt((grid**2).sum(axis=0))
    head = np.where((radius > 14) & (radius < 17), 1.0, 0.0).astype(np.float32)  # a bright shell (scalp)
    head[radius <= 10] = 0.6  # brain, with a dark gap (skull) to the scalp
    head[:, :, 30:] = 0  # the field of view stops above the top of the head
    inside = conform.head_mask(head, margin_vox=0)
    assert inside[20, 20, 20] and inside[20, 20, 28] and inside[20, 8, 20]  # centre, top (cut open), gap
    assert not inside[0, 0, 0] and not inside[2, 20, 20]  # air around the head
