"""Each deterministic augmentation step on its own."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from skullstrip import synth


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    return rng.uniform(0.1, 1.0, (24, 28, 20)).astype(np.float32)


def test_zero_bias_field_is_identity(volume):
    np.testing.assert_allclose(synth.BiasField(np.zeros((3, 3, 3)))(volume), volume, rtol=1e-6)


def test_bias_field_is_smooth_and_positive(volume):
    field = synth.BiasField(np.random.default_rng(1).normal(0, 0.5, (3, 3, 3)))(np.ones_like(volume))
    assert (field > 0).all()
    assert np.abs(np.diff(field, axis=0)).max() < 0.5


def test_resolution_without_blur_or_slices_is_identity(volume):
    np.testing.assert_array_equal(synth.Resolution(np.zeros(3))(volume), volume)


def test_thick_slices_equal_scipy_zoom_down_and_up(volume):
    thick = synth.Resolution(np.zeros(3), slice_axis=1, slice_factor=2.6)(volume)
    coarse = ndi.zoom(volume, (1, 11 / 28, 1), order=1, grid_mode=True, mode="nearest")  # round(28 / 2.6) slices
    expected = ndi.zoom(coarse, (1, 28 / 11, 1), order=1, grid_mode=True, mode="nearest")
    np.testing.assert_allclose(thick, expected, atol=1e-5)


def test_thick_slices_remove_detail_along_one_axis_only(volume):
    thick = synth.Resolution(np.zeros(3), slice_axis=2, slice_factor=3.0)(volume)
    assert thick.shape == volume.shape
    assert np.abs(np.diff(thick, axis=2)).mean() < 0.5 * np.abs(np.diff(volume, axis=2)).mean()


def test_noise_is_reproducible_and_rician_is_positive(volume):
    noise = synth.Noise(std=0.1, rician=True, seed=4)
    np.testing.assert_array_equal(noise(volume), noise(volume))
    assert (noise(volume) >= 0).all()


def test_gamma_one_is_identity(volume):
    np.testing.assert_allclose(synth.Gamma(1.0)(volume), volume, atol=1e-6)


def test_quantisation_levels(volume):
    assert len(np.unique(synth.Quantisation(8)(volume))) <= 9


def test_field_of_view_cut_sets_background(volume):
    cut = synth.FieldOfViewCut(axis=1, keep_from=5, keep_to=20)(volume)
    assert (cut[:, :5] == volume.min()).all() and (cut[:, 20:] == volume.min()).all()
    np.testing.assert_array_equal(cut[:, 5:20], volume[:, 5:20])


def test_ghosting_adds_shifted_copy(volume):
    ghost = synth.Ghosting(axis=0, shift_fraction=0.5, intensity=0.1)(volume)
    np.testing.assert_allclose(ghost, volume + 0.1 * np.roll(volume, 12, axis=0), rtol=1e-6)


def test_epi_distortion_shifts_sampling_along_its_phase_axis_only():
    shape = (12, 14, 16)
    transform = synth.SpatialTransform(matrix=np.diag([2.0, 1.0, 1.0]), offset=np.zeros(3),
                                       displacement=np.zeros((3, 2, 2, 2)), output_shape=shape, output_voxel_mm=1.0)
    distortion = synth.EpiDistortion(axis=0, displacement_vox=np.full((2, 2, 2), 1.5))
    plain, distorted = transform.coordinates(), transform.coordinates(distortion)
    np.testing.assert_allclose(distorted[0], plain[0] + 2.0 * 1.5, atol=1e-5)  # 1.5 output voxels of 2 mm
    np.testing.assert_array_equal(distorted[1:], plain[1:])


def test_epi_sample_equals_resampling_the_undistorted_sample(procedural_anatomy):
    """Distorting the coordinates = interpolating the undistorted image a second time."""
    config = synth.config_with(shape=(40, 40, 40), voxel_mm=3.0, max_rotation_deg=0.0, p_axis_permutation=0.0,
                               scale_range=0.0, max_shear=0.0, deform_max_mm=0.0)
    transform = synth.sample_spatial_transform(np.random.default_rng(0), config, procedural_anatomy)
    distortion = synth.EpiDistortion(axis=1, displacement_vox=np.random.default_rng(1).normal(0, 1, (4, 4, 4)))
    table = np.arange(synth.N_LABELS, dtype=np.float32)

    def image(coords):
        sampler = synth.TrilinearSampler(coords, procedural_anatomy.labels.shape)
        return sampler.labels_to_values(procedural_anatomy.labels, table, outside=0.0).reshape(config.shape)

    index = np.indices(config.shape, dtype=np.float32)
    index[1] += distortion.shift(config.shape)
    twice = ndi.map_coordinates(image(transform.coordinates()), index, order=1, mode="nearest")
    once = image(transform.coordinates(distortion))
    # with an axis-aligned 3 mm grid the second interpolation only adds blur
    assert np.abs(once - twice)[4:-4, 4:-4, 4:-4].mean() < 0.1  # undistorted: 0.14
    assert np.corrcoef(once.ravel(), twice.ravel())[0, 1] > 0.97  # undistorted: 0.94


def test_dropout_attenuates_only_near_its_centre():
    dropout = synth.Dropout(np.array([[5.0, 5.0, 5.0]]), np.array([2.0]), np.array([1.0]))
    out = dropout(np.ones((20, 20, 20), np.float32))
    assert out[5, 5, 5] == pytest.approx(0.0, abs=1e-6)
    assert out[18, 18, 18] == pytest.approx(1.0, abs=1e-6)


def test_every_sampler_is_deterministic_given_the_generator_state():
    config = synth.SynthConfig()
    samplers = [
        lambda rng: synth.sample_bias_field(rng, config).log_field,
        lambda rng: synth.sample_resolution(rng, config, "mri").sigma_vox,
        lambda rng: synth.sample_tissue_contrast(rng, "mri").means,
        lambda rng: synth.sample_epi_distortion(rng, config).displacement_vox,
    ]
    for sampler in samplers:
        np.testing.assert_array_equal(sampler(np.random.default_rng(3)), sampler(np.random.default_rng(3)))


def test_defacing_blanks_the_face_side_of_the_plane_but_never_the_brain(volume):
    coords = np.indices(volume.shape, dtype=np.float32).reshape(3, -1)
    sdt = np.full(volume.shape, 10.0, dtype=np.float32)
    sdt[:, 20:, :] = -1.0  # a "brain" slab beyond the plane must survive
    deface = synth.Defacing(normal=np.array([0.0, 1.0, 0.0]), point=np.array([0.0, 14.0, 0.0]), margin_mm=2.0)
    out = deface(volume, coords, sdt)
    assert (out[:, 15:20] == volume.min()).all()
    np.testing.assert_array_equal(out[:, :15], volume[:, :15])
    np.testing.assert_array_equal(out[:, 20:], volume[:, 20:])


def test_sampled_defacing_plane_points_anterior_inferior():
    anatomy = synth.procedural_anatomies(1, seed=0)[0]
    deface = synth.sample_defacing(np.random.default_rng(3), anatomy)
    assert deface.normal[1] > 0.3 and deface.normal[2] < -0.3
    assert np.isclose(np.linalg.norm(deface.normal), 1.0)


def test_trilinear_sampler_equals_scipy_map_coordinates():
    """The shared-weight sampler is map_coordinates(order=1, mode="constant"), edges included."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(2)
    labels = rng.integers(0, synth.N_LABELS, (14, 17, 11)).astype(np.uint8)
    table = rng.uniform(0, 1, synth.N_LABELS).astype(np.float32)
    distances = rng.normal(0, 5, (14, 17, 11, 2)).astype(np.float32)
    coords = rng.uniform(-2, [16, 19, 13], (500, 3)).T.astype(np.float32)
    coords[:, :3] = [[13, 0, 6.5], [16, 0, 8], [10, 0, 0]]  # the last voxel, the first, an edge face
    sampler = synth.TrilinearSampler(coords, labels.shape)

    def scipy(volume, cval, order=1):
        return ndi.map_coordinates(volume, coords, order=order, mode="constant", cval=cval)

    np.testing.assert_allclose(sampler.labels_to_values(labels, table, 0.5), scipy(table[labels], 0.5), atol=1e-5)
    np.testing.assert_array_equal(sampler.nearest(labels, 0), scipy(labels, 0, order=0))
    brain, nocsf = sampler.value_pairs(distances, 25.0)
    np.testing.assert_allclose(brain, scipy(distances[..., 0], 25.0), atol=1e-4)
    np.testing.assert_allclose(nocsf, scipy(distances[..., 1], 25.0), atol=1e-4)


@pytest.mark.parametrize("shape", [(28, 36, 20), (30, 31, 17), (7, 40, 5)])
def test_resize_linear_equals_scipy_zoom(shape):
    coarse = np.random.default_rng(0).normal(size=(7, 9, 5)).astype(np.float32)
    zoom = [n / m for n, m in zip(shape, coarse.shape)]
    expected = ndi.zoom(coarse, zoom, order=1, grid_mode=True, mode="nearest")
    np.testing.assert_allclose(synth.resize_linear(coarse, shape), expected, atol=1e-5)


def test_identity_intensity_curve_changes_nothing(volume):
    np.testing.assert_allclose(synth.IntensityCurve((0.0, 1.0), (0.0, 1.0))(volume), volume, atol=1e-6)


def test_intensity_curve_keeps_tissue_order_and_range(volume):
    curve = synth.IntensityCurve((0.0, 0.2, 0.5, 1.0), (0.0, 0.6, 0.65, 1.0))
    remapped = curve(volume)
    order = np.argsort(volume, axis=None)
    assert np.all(np.diff(remapped.ravel()[order]) >= -1e-6)
    assert remapped.min() == pytest.approx(volume.min()) and remapped.max() == pytest.approx(volume.max())
    # the segment 0.2-0.5 of the range has slope 0.05 / 0.3: a band inside it shrinks six times
    scaled = (volume - volume.min()) / (volume.max() - volume.min())
    band = (scaled > 0.25) & (scaled < 0.45)
    assert np.ptp(remapped[band]) == pytest.approx(np.ptp(volume[band]) / 6, rel=1e-3)


def test_intensity_curve_off_draws_nothing_ct_gets_none_and_on_is_monotone():
    rng, twin = np.random.default_rng(3), np.random.default_rng(3)
    assert synth.sample_intensity_curve(rng, synth.SynthConfig(), "mri") is None
    assert rng.random() == twin.random()
    config = synth.config_with(p_intensity_curve=1.0)
    assert synth.sample_intensity_curve(np.random.default_rng(0), config, "ct") is None
    ratios = []
    for seed in range(200):
        curve = synth.sample_intensity_curve(np.random.default_rng(seed), config, "mri")
        assert len(curve.knots_in) == config.intensity_curve_knots + 2
        for knots in (curve.knots_in, curve.knots_out):
            assert knots[0] == 0.0 and knots[-1] == 1.0 and np.all(np.diff(knots) >= 0)
        widths = np.diff(curve.knots_in)
        slopes = np.diff(curve.knots_out)[widths > 1e-3] / widths[widths > 1e-3]
        ratios.append(slopes.max() / slopes.min())
    # log-normal slopes with SD 0.7: the steepest segment is a few times the flattest, rarely 30 times
    assert 2 < np.median(ratios) < 8 and np.quantile(ratios, 0.99) < 40
