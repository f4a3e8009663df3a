"""The synthetic generator on procedural anatomy only (no external data)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from skullstrip import synth
from tests.conftest import SHARED_DATA, dice, needs_shared

SMALL = synth.config_with(shape=(48, 48, 48), voxel_mm=3.0)


@pytest.fixture(scope="module")
def generator(procedural_anatomy):
    return synth.SyntheticHeads([procedural_anatomy], SMALL)


def test_same_seed_same_sample(generator):
    first, second = generator.sample(11), generator.sample(11)
    assert first.modality == second.modality
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.sdt_brain, second.sdt_brain)


def test_different_seeds_differ(generator):
    assert not np.array_equal(generator.sample(1).image, generator.sample(2).image)


@pytest.mark.parametrize("modality", synth.MODALITIES)
def test_every_modality_is_finite_normalised_and_shaped(generator, modality):
    for seed in range(3):
        sample = generator.sample(seed, modality)
        assert sample.modality == modality
        assert sample.image.shape == SMALL.shape == sample.sdt_brain.shape == sample.sdt_nocsf.shape
        assert sample.image.dtype == np.float32
        assert np.isfinite(sample.image).all()
        # normalize_intensity maps robust percentiles to [0, 1] and clips to [-0.2, 1.5]
        assert -0.2 <= sample.image.min() and sample.image.max() <= 1.5
        assert np.percentile(sample.image, 99) > 0.5
        np.testing.assert_allclose(np.diag(sample.affine)[:3], SMALL.voxel_mm)


def test_ct_anatomy_in_hounsfield_units():
    rng = np.random.default_rng(0)
    for _ in range(20):
        contrast = synth.sample_tissue_contrast(rng, "ct")
        offset = 1024 if contrast.means[synth.AIR] > 0 else 0
        assert contrast.means[synth.AIR] - offset == -1000
        assert 700 <= contrast.means[synth.SKULL] - offset <= 1800
        assert 20 <= contrast.means[synth.GM] - offset <= 45
        assert 0 <= contrast.means[synth.CSF] - offset <= 15


def test_no_csf_mask_lies_inside_brain_mask(generator):
    for seed in range(4):
        sample = generator.sample(seed)
        nocsf, brain = sample.sdt_nocsf < 0, sample.sdt_brain < 0
        assert nocsf.sum() > 0
        assert (nocsf & ~brain).sum() <= 0.01 * nocsf.sum()


def test_target_follows_the_deformed_labels(procedural_anatomy):
    """The distance target and the labels moved by the same transform agree."""
    rng = np.random.default_rng(5)
    config = synth.config_with(shape=(56, 56, 56), voxel_mm=2.5)
    transform = synth.sample_spatial_transform(rng, config, procedural_anatomy)
    coordinates = transform.coordinates()
    labels = ndi.map_coordinates(procedural_anatomy.labels, coordinates, order=0).reshape(config.shape)
    from_labels = synth.brain_masks_from_labels(labels)[0]
    sdt = ndi.map_coordinates(procedural_anatomy.sdt_brain.astype(np.float32), coordinates, order=1,
                              cval=synth.SDT_CLIP_MM).reshape(config.shape)
    assert dice(sdt < 0, from_labels) > 0.95


def test_brain_mask_convention():
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[5:25, 5:25, 5:25] = synth.CSF
    labels[8:22, 8:22, 8:22] = synth.GM
    labels[11:19, 11:19, 11:19] = synth.WM
    labels[14:16, 14:16, 14:16] = synth.VESSEL  # enclosed vessel: part of the brain
    labels[0:3, 0:3, 0:3] = synth.CSF  # an island of fluid (eye): not the brain
    labels[26:29, 26:29, 26:29] = synth.VESSEL  # vessel outside: not the brain
    brain, nocsf = synth.brain_masks_from_labels(labels)
    assert brain[15, 15, 15] and brain[5, 5, 5]
    assert not brain[1, 1, 1] and not brain[27, 27, 27]
    assert brain.sum() == 20**3
    assert nocsf.sum() == 14**3 and not nocsf[6, 6, 6]


def test_signed_distance_sign_and_scale():
    mask = np.zeros((41, 41, 41), bool)
    mask[10:31, 10:31, 10:31] = True
    sdt = synth.signed_distance_mm(mask, spacing=2.0)
    assert sdt[20, 20, 20] < 0 and sdt[0, 20, 20] > 0
    assert sdt[0, 20, 20] == pytest.approx(20.0)  # 10 voxels of 2 mm to the first inside voxel


def test_procedural_head_has_all_layers(procedural_anatomy):
    present = set(np.unique(procedural_anatomy.labels))
    for label in (synth.AIR, synth.CSF, synth.GM, synth.WM, synth.SKULL, synth.SKIN, synth.FAT):
        assert label in present
    brain_ml = (procedural_anatomy.sdt_brain < 0).sum() / 1000
    assert 900 < brain_ml < 2200


def test_write_samples_with_preview(tmp_path):
    written = synth.write_samples(tmp_path, n=2, seed=1, preview=True)
    assert len(written) == 2 and all(p.exists() for p in written)
    assert (tmp_path / "synth_000_mask.nii.gz").exists()
    assert (tmp_path / "preview.png").stat().st_size > 10_000


def test_shape_range_draws_varied_grids(procedural_anatomy):
    generator = synth.SyntheticHeads([procedural_anatomy], synth.config_with(shape_range=(24, 40), voxel_mm=4.0))
    shapes = {generator.sample(seed).image.shape for seed in range(6)}
    assert len(shapes) > 1
    assert all(24 <= n <= 40 and n % 4 == 0 for shape in shapes for n in shape)


def test_cut_below_brainstem_removes_the_cord_but_keeps_the_brain():
    mask = np.zeros((60, 60, 80), bool)
    zz, yy, xx = np.meshgrid(np.arange(80), np.arange(60), np.arange(60), indexing="ij")
    mask |= ((xx - 30) ** 2 + (yy - 30) ** 2 + (zz - 50) ** 2 <= 25**2).transpose(2, 1, 0)  # brain, 25 mm
    mask[28:33, 28:33, :30] = True  # a cord running to the bottom slice
    cut = synth.cut_below_brainstem(mask)
    assert not cut[:, :, :20].any()
    np.testing.assert_array_equal(cut[:, :, 30:], mask[:, :, 30:])


def test_add_neck_extends_the_head_downwards_without_brain(procedural_anatomy):
    labels = procedural_anatomy.labels[:, :, 40:]  # a head cut at the skull base, brain in its last slice
    assert np.isin(labels[:, :, 0], (synth.CSF, synth.GM, synth.WM)).any()
    with_neck = synth.add_neck(labels, length_mm=30)
    assert with_neck.shape == labels.shape[:2] + (labels.shape[2] + 30,)
    np.testing.assert_array_equal(with_neck[:, :, 30:], labels)
    neck = with_neck[:, :, :30]
    assert np.isin(neck, (synth.SKULL, synth.MUSCLE, synth.SKIN)).any()
    anatomy = synth.anatomy_from_labels(with_neck, "necked")
    assert not (anatomy.sdt_brain[:, :, :20] < 0).any()  # the cord is not brain


def test_add_neck_narrows_below_the_head_and_varies_with_the_seed(procedural_anatomy):
    labels = procedural_anatomy.labels[:, :, 40:]
    necks = [synth.add_neck(labels, length_mm=80, rng=np.random.default_rng(seed))[:, :, :80] for seed in (1, 1, 2)]
    np.testing.assert_array_equal(necks[0], necks[1])
    assert not np.array_equal(necks[0], necks[2])
    head_area = ndi.binary_fill_holes(labels[:, :, 0] > synth.AIR).sum()
    lowest_area = (necks[0][:, :, 0] > synth.AIR).sum()
    assert 0.2 * head_area < lowest_area < 0.7 * head_area  # a neck, not the head's outline
    # under random contrasts the neck must not be one uniform tissue: a mixture and vessels
    assert {synth.MUSCLE, synth.FAT, synth.VESSEL, synth.MARROW} <= set(np.unique(necks[0]))


def test_neck_junction_continues_the_last_slice_instead_of_a_flat_plane(procedural_anatomy):
    labels = procedural_anatomy.labels[:, :, 40:]
    rng = np.random.default_rng
    plain = synth.add_neck(labels, length_mm=60, rng=rng(3))
    joined = synth.add_neck(labels, length_mm=60, rng=rng(3), junction_mm=(10, 30))
    np.testing.assert_array_equal(joined[:, :, 60:], labels)
    # without a junction the old necks stay as they were (earlier recipes replay)
    np.testing.assert_array_equal(plain, synth.add_neck(labels, length_mm=60, rng=rng(3)))

    def agreement_with_last_slice(neck: np.ndarray, depth: int) -> float:
        soft = ~np.isin(labels[:, :, 0], (synth.AIR, synth.SKULL, synth.MARROW, synth.DURA,
                                          synth.CSF, synth.GM, synth.WM, synth.SKIN, synth.FAT))
        return float((neck[:, :, 60 - depth][soft] == labels[:, :, 0][soft]).mean())

    # the deep soft tissue of the last slice carries on for at least 10 mm, then the mixture
    assert agreement_with_last_slice(joined, 5) > agreement_with_last_slice(plain, 5) + 0.2
    assert agreement_with_last_slice(joined, 50) < agreement_with_last_slice(joined, 5)
    # the brain still ends where it did: no bone or brain label is carried into the neck
    assert not np.isin(joined[:, :, 20:60], (synth.GM, synth.DURA)).any()
    np.testing.assert_array_equal(synth.anatomy_from_labels(joined, "j").sdt_brain[:, :, 60:] < 0,
                                  synth.anatomy_from_labels(plain, "p").sdt_brain[:, :, 60:] < 0)


def test_skull_stripped_input_keeps_only_the_brain_and_its_margin():
    sdt = np.linspace(-10, 10, 21, dtype=np.float32)[:, None, None] * np.ones((1, 4, 4), np.float32)
    image = np.random.default_rng(0).uniform(1, 2, sdt.shape).astype(np.float32)
    stripped = synth.SkullStripped(margin_mm=2.0)(image, sdt)
    np.testing.assert_array_equal(stripped[sdt <= 2.0], image[sdt <= 2.0])
    assert (stripped[sdt > 2.0] == image.min()).all()


def test_atrophy_widens_csf_without_moving_the_brain_mask(procedural_anatomy):
    labels = procedural_anatomy.labels
    widened = synth.atrophy(labels, thickness_mm=2)
    np.testing.assert_array_equal(synth.atrophy(labels, 0), labels)
    brain, nocsf = synth.brain_masks_from_labels(labels)
    brain_widened, nocsf_widened = synth.brain_masks_from_labels(widened)
    np.testing.assert_array_equal(brain_widened, brain)
    assert (widened == synth.CSF).sum() > 1.2 * (labels == synth.CSF).sum()
    assert nocsf_widened.sum() < 0.95 * nocsf.sum() and not (nocsf_widened & ~nocsf).any()
    changed = widened != labels
    assert (widened[changed] == synth.CSF).all() and np.isin(labels[changed], (synth.GM, synth.WM)).all()


def test_tissue_regions_keep_the_labels_and_cut_the_head_into_all_regions(procedural_anatomy):
    labels = procedural_anatomy.labels
    regions = synth.tissue_regions(labels, np.random.default_rng(5))
    assert regions.dtype == np.uint8 and regions.shape == labels.shape
    np.testing.assert_array_equal(regions // synth.N_REGIONS, labels)
    sizes = np.bincount((regions % synth.N_REGIONS)[labels != synth.AIR], minlength=synth.N_REGIONS)
    assert (sizes > 0.002 * sizes.sum()).all()  # every region holds a real part of the head
    np.testing.assert_array_equal(synth.tissue_regions(labels, np.random.default_rng(5)), regions)
    assert not np.array_equal(synth.tissue_regions(labels, np.random.default_rng(6)), regions)
    with pytest.raises(ValueError, match="below 12"):
        synth.tissue_regions(np.full((8, 8, 8), 12, np.uint8), np.random.default_rng(0))


def test_uniform_regional_contrast_gives_the_per_label_image(procedural_anatomy):
    means = np.random.default_rng(0).uniform(0, 1, synth.N_LABELS)
    coords = np.random.default_rng(1).uniform(0, np.asarray(procedural_anatomy.labels.shape)[:, None] - 1, (3, 5000))
    sampler = synth.TrilinearSampler(coords, procedural_anatomy.labels.shape)
    by_label = sampler.labels_to_values(procedural_anatomy.labels, means, outside=0.0)
    by_region = sampler.labels_to_values(procedural_anatomy.regions, synth.RegionalContrast.uniform(means).table, 0.0)
    np.testing.assert_allclose(by_region, by_label, rtol=1e-6)


def test_regional_contrast_changes_only_the_non_brain_tissues():
    config = synth.config_with(p_regional_contrast=1.0, regional_std=0.3, p_region_random=0.2)
    rng = np.random.default_rng(3)
    contrast = synth.sample_tissue_contrast(rng, "mri")
    offsets = offsets_from_means(synth.sample_regional_contrast(rng, contrast, config), contrast.means)
    brain = [synth.AIR, synth.CSF, synth.GM, synth.WM, synth.VESSEL]
    assert not offsets[brain].any()
    regional = list(synth.REGIONAL_TISSUES)
    assert (offsets[regional].std(axis=1) > 0).all()  # each tissue differs between regions
    ct = synth.sample_tissue_contrast(rng, "ct")
    assert not offsets_from_means(synth.sample_regional_contrast(rng, ct, config), ct.means).any()


def offsets_from_means(regional, means):
    """(tissue, region) intensities minus the tissue means."""
    return regional.table.reshape(synth.N_LABELS, synth.N_REGIONS) - np.asarray(means)[:, None]


def test_regional_contrast_off_draws_no_random_number():
    rng, twin = np.random.default_rng(9), np.random.default_rng(9)
    contrast = synth.sample_tissue_contrast(rng, "mri")
    synth.sample_tissue_contrast(twin, "mri")
    regional = synth.sample_regional_contrast(rng, contrast, synth.SynthConfig())
    np.testing.assert_array_equal(regional.table, synth.RegionalContrast.uniform(contrast.means).table)
    assert rng.random() == twin.random()  # older recipes replay the same samples


def test_regional_image_keeps_the_brain_and_varies_muscle_across_the_head(procedural_anatomy):
    config = synth.config_with(p_regional_contrast=1.0, regional_std=0.3)
    rng = np.random.default_rng(4)
    contrast = synth.sample_tissue_contrast(rng, "mri")
    regional = synth.sample_regional_contrast(rng, contrast, config)
    labels = procedural_anatomy.labels
    grid = np.indices(labels.shape).reshape(3, -1).astype(np.float32)  # voxel centres: no blending
    image = synth.TrilinearSampler(grid, labels.shape).labels_to_values(procedural_anatomy.regions, regional.table, 0.0)
    image = image.reshape(labels.shape)
    for tissue in (synth.CSF, synth.GM, synth.WM):
        np.testing.assert_allclose(image[labels == tissue], contrast.means[tissue], rtol=1e-6)
    assert len(np.unique(image[labels == synth.MUSCLE])) > 4


def shelled_head() -> np.ndarray:
    """Concentric shells along x: brain, CSF, 2 mm of skull, 10 mm of scalp, air."""
    radius = np.abs(np.arange(-40, 41))[:, None, None] * np.ones((1, 6, 6))
    labels = np.full(radius.shape, synth.AIR, np.uint8)
    labels[radius < 38] = synth.SKIN
    labels[radius < 28] = synth.SKULL
    labels[radius < 26] = synth.CSF
    labels[radius < 22] = synth.GM
    return labels


def test_scalp_depth_counts_mm_from_the_skull_and_spares_the_skin():
    labels = shelled_head()
    depth = synth.scalp_depth_mm(labels, max_mm=8, skin_mm=2)[:, 0, 0]
    centre = 40
    np.testing.assert_array_equal(depth[centre + 28: centre + 36], np.arange(1, 9))  # 1..8 mm outwards
    assert not depth[centre + 36:].any()  # beyond max_mm, the skin and the air
    assert not depth[centre - 27: centre + 28].any()  # skull, CSF and brain
    np.testing.assert_array_equal(depth[::-1], depth)  # both sides alike


def test_skull_thickening_grows_diploe_then_outer_table_and_keeps_brain_and_regions():
    labels = shelled_head()
    regions = (labels * synth.N_REGIONS + (np.arange(labels.size) % 5).reshape(labels.shape)).astype(np.uint8)
    depth = synth.scalp_depth_mm(labels)
    scalp = synth.scalp_by_depth(depth)
    grown = synth.SkullThickening(thickness_mm=5, outer_table_mm=2)(regions, *scalp)
    tissue = grown // synth.N_REGIONS
    np.testing.assert_array_equal(grown % synth.N_REGIONS, regions % synth.N_REGIONS)
    row = tissue[:, 0, 0][40:]
    assert list(row[26:28]) == [synth.SKULL] * 2  # the original inner table
    assert list(row[28:31]) == [synth.MARROW] * 3 and list(row[31:33]) == [synth.SKULL] * 2
    assert row[33] == synth.SKIN
    untouched = depth == 0
    np.testing.assert_array_equal(grown[untouched], regions[untouched])
    np.testing.assert_array_equal(synth.SkullThickening(0, 0)(regions, *scalp), regions)


def test_skull_thickening_off_draws_nothing_and_on_stays_in_range():
    rng, twin = np.random.default_rng(2), np.random.default_rng(2)
    assert synth.sample_skull_thickening(rng, synth.SynthConfig()) is None
    assert rng.random() == twin.random()
    config = synth.config_with(p_skull_thickening=1.0, skull_thickening_mm=(3, 4))
    for seed in range(20):
        thickening = synth.sample_skull_thickening(np.random.default_rng(seed), config)
        assert 3 <= thickening.thickness_mm <= 4 and 1 <= thickening.outer_table_mm <= 2


def test_thicker_skull_changes_the_image_but_not_the_targets(procedural_anatomy):
    images, targets = [], []
    for thickness in ((0, 0), (6, 6)):
        config = synth.config_with(shape=(48, 48, 48), voxel_mm=3.0, p_skull_thickening=1.0,
                                   skull_thickening_mm=thickness)
        sample = synth.SyntheticHeads([procedural_anatomy], config).sample(5, "mri")
        images.append(sample.image)
        targets.append(sample.sdt_brain)
    np.testing.assert_array_equal(targets[0], targets[1])
    assert not np.array_equal(images[0], images[1])


def assert_mri_only_and_off_draws_nothing(sample_contrast, config) -> None:
    """A contrast option leaves CT alone, and when off returns its input drawing no number
    (so earlier recipes replay the same samples)."""
    ct = synth.sample_tissue_contrast(np.random.default_rng(0), "ct")
    assert sample_contrast(np.random.default_rng(0), ct, config) is ct
    rng, twin = np.random.default_rng(4), np.random.default_rng(4)
    mri = synth.sample_tissue_contrast(rng, "mri")
    synth.sample_tissue_contrast(twin, "mri")
    assert sample_contrast(rng, mri, synth.SynthConfig()) is mri
    assert rng.random() == twin.random()


def test_brainlike_bone_greys_skull_and_marrow_of_mri_only():
    config = synth.config_with(p_brainlike_bone=1.0)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        contrast = synth.sample_tissue_contrast(rng, "mri")
        bone = synth.sample_brainlike_bone(rng, contrast, config).means
        low, high = sorted(contrast.means[[synth.GM, synth.WM]])
        assert low - 0.15 <= bone[synth.MARROW] <= high + 0.15
        assert 0.5 * bone[synth.MARROW] - 1e-9 <= bone[synth.SKULL] <= bone[synth.MARROW] + 1e-9
        others = np.setdiff1d(np.arange(synth.N_LABELS), [synth.SKULL, synth.MARROW])
        np.testing.assert_array_equal(bone[others], contrast.means[others])
    assert_mri_only_and_off_draws_nothing(synth.sample_brainlike_bone, config)


def is_named_mri_contrast(means: np.ndarray) -> bool:
    """Whether the tissue means lie within 5 jitter SDs of one of the named MRI contrasts."""
    return any(np.abs(means - np.asarray(base)).max() < 5 * synth.MRI_FAMILY_JITTER
               for base in synth.MRI_FAMILY_MEANS.values())


@pytest.mark.parametrize(("p_mri_family", "expected"), [(0.0, 0.0), (0.5, 0.5), (0.8, 0.8), (1.0, 1.0)])
def test_mri_family_share_sets_how_often_a_named_contrast_is_drawn(p_mri_family, expected):
    rng = np.random.default_rng(5)
    named = [is_named_mri_contrast(synth.sample_tissue_contrast(rng, "mri", p_mri_family).means) for _ in range(400)]
    assert np.mean(named) == pytest.approx(expected, abs=0.07)


def test_forced_mri_family_keeps_every_other_draw(procedural_anatomy):
    def sample(family):
        config = synth.config_with(shape=(48, 48, 48), voxel_mm=3.0, p_mri_family=1.0, mri_family=family)
        return synth.SyntheticHeads([procedural_anatomy], config).sample(7, "mri")

    flair, t2 = sample("flair"), sample("t2")
    np.testing.assert_array_equal(flair.sdt_brain, t2.sdt_brain)  # same head, same deformation
    brain = flair.sdt_nocsf < -2
    csf = (flair.sdt_brain < -1) & (flair.sdt_nocsf > 2)
    # CSF darker than the parenchyma on FLAIR, brighter on T2
    assert np.median(flair.image[csf]) < np.median(flair.image[brain]) < np.median(t2.image[csf])
    with pytest.raises(ValueError, match="unknown MRI family"):
        synth.sample_tissue_contrast(np.random.default_rng(0), "mri", 1.0, "t3")


def test_contrast_twin_is_the_same_head_in_another_contrast(procedural_anatomy):
    config = synth.config_with(shape=(48, 48, 48), voxel_mm=3.0, p_mri_family=0.8, p_low_contrast_t1=0.3,
                               modality_weights={"mri": 1.0}, p_fov_cut=0.0, p_skull_stripped=0.0)
    generator = synth.SyntheticHeads([procedural_anatomy], config)
    seeds = range(3, 9)
    for seed in seeds:
        sample = generator.sample(seed)
        twin = generator.contrast_twin(seed, sample.contrast)
        np.testing.assert_array_equal(twin.sdt_brain, sample.sdt_brain)
        np.testing.assert_array_equal(twin.sdt_nocsf, sample.sdt_nocsf)
        assert twin.modality == "mri" and twin.contrast not in (sample.contrast, "random")
        assert not np.array_equal(twin.image, sample.image)
        # the twin leaves the stream of samples as it was
        np.testing.assert_array_equal(generator.sample(seed).image, sample.image)
    # the twins' contrasts vary from seed to seed, and each is the contrast it is named
    twins = [generator.contrast_twin(seed, generator.sample(seed).contrast) for seed in range(3, 15)]
    assert len({twin.contrast for twin in twins}) >= 3
    for twin in twins:
        csf = (twin.sdt_brain < -1) & (twin.sdt_nocsf > 2)
        csf_over_brain = np.median(twin.image[csf]) / np.median(twin.image[twin.sdt_nocsf < -2])
        if twin.contrast != "pd":  # PD: CSF and parenchyma about equal
            assert (csf_over_brain > 1) == (twin.contrast == "t2"), twin.contrast


def test_intensity_curve_changes_the_image_but_not_the_targets(procedural_anatomy):
    samples = [synth.SyntheticHeads([procedural_anatomy], synth.config_with(shape=(48, 48, 48), voxel_mm=3.0,
                                                                           p_intensity_curve=p)).sample(5, "mri")
               for p in (0.0, 1.0)]
    np.testing.assert_array_equal(samples[0].sdt_brain, samples[1].sdt_brain)
    assert not np.array_equal(samples[0].image, samples[1].image)


def test_low_contrast_t1_replaces_mri_means_only_and_off_draws_nothing():
    config = synth.config_with(p_low_contrast_t1=1.0)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        means = synth.sample_low_contrast_t1(rng, synth.sample_tissue_contrast(rng, "mri"), config).means
        np.testing.assert_allclose(means, synth.LOW_CONTRAST_T1_MEANS, atol=5 * synth.MRI_FAMILY_JITTER / 2)
    assert_mri_only_and_off_draws_nothing(synth.sample_low_contrast_t1, config)


def test_skull_base_warp_moves_the_lower_head_only(procedural_anatomy):
    config = synth.config_with(p_skull_base_warp=1.0, skull_base_warp_mm=8.0)
    warp = synth.sample_skull_base_warp(3, config, procedural_anatomy)
    shape = procedural_anatomy.labels.shape
    heights = [warp.floor_vox - 10, warp.floor_vox + 15, warp.floor_vox + warp.fade_vox + 1]
    points = np.stack([np.full(3, shape[0] / 2), np.full(3, shape[1] / 2), heights]).astype(np.float32)
    moved = np.linalg.norm(warp(points) - points, axis=0)
    assert moved[0] > 0.5 and moved[0] <= 8.0 * np.sqrt(3) + 1e-3  # below the floor: in full, bounded
    assert moved[2] == 0  # above the fade: untouched
    assert synth.sample_skull_base_warp(3, synth.SynthConfig(), procedural_anatomy) is None


def test_skull_base_warp_changes_the_lower_targets_and_no_other_draw(procedural_anatomy):
    """The warp draws from its own stream: the same seed gives the same contrast, grid and
    top of the head with it on, and a different lower head (image and targets together)."""
    samples = []
    for p in (0.0, 1.0):
        config = synth.config_with(shape=(48, 48, 48), voxel_mm=4.0, max_rotation_deg=0.0, p_axis_permutation=0.0,
                                   p_fov_cut=0.0, p_deface=0.0, p_skull_base_warp=p, skull_base_warp_mm=10.0)
        samples.append(synth.SyntheticHeads([procedural_anatomy], config).sample(8, "mri"))
    plain, warped = samples
    assert plain.contrast == warped.contrast and plain.image.shape == warped.image.shape
    changed = (np.abs(plain.sdt_brain - warped.sdt_brain) > 0.5).mean(axis=(0, 1))
    inside_plain, inside_warped = plain.sdt_brain < 0, warped.sdt_brain < 0
    brain_slices = np.nonzero(inside_plain.any(axis=(0, 1)))[0]  # superior axis is the last
    # the fade ends at most 75 mm above the brain's lowest voxel, below its top third
    lower, _, upper = np.array_split(brain_slices, 3)
    assert changed[lower].max() > 0.1  # the lower brain and what lies under it moved
    assert changed[upper].max() == 0  # the top third is read where it was
    assert dice(inside_plain, inside_warped) > 0.9  # a local change, not another head


def test_rim_widening_turns_the_outer_brain_into_csf_and_keeps_regions(procedural_anatomy):
    anatomy = procedural_anatomy
    regions = anatomy.regions
    widened = synth.RimWidening(rim_mm=4.0)(regions, anatomy.rim_index, anatomy.rim_depth)
    np.testing.assert_array_equal(widened % synth.N_REGIONS, regions % synth.N_REGIONS)
    before, after = regions // synth.N_REGIONS, widened // synth.N_REGIONS
    changed = before != after
    assert changed.any()
    assert np.isin(before[changed], (synth.GM, synth.WM)).all() and (after[changed] == synth.CSF).all()
    shallow = (anatomy.sdt_brain > -4.0) & (anatomy.sdt_brain <= 0) & np.isin(before, (synth.GM, synth.WM))
    np.testing.assert_array_equal(changed, shallow)  # all brain tissue less than 4 mm deep, nothing else
    np.testing.assert_array_equal(synth.RimWidening(0.0)(regions, anatomy.rim_index, anatomy.rim_depth), regions)


def test_rim_widening_nocsf_target_matches_the_mask_of_the_widened_labels(procedural_anatomy):
    """The target agrees with the no-CSF mask recomputed from the widened labels, and the
    brain+CSF mask is the same before and after."""
    anatomy = procedural_anatomy
    widening = synth.RimWidening(rim_mm=4.0)
    labels = widening(anatomy.regions, anatomy.rim_index, anatomy.rim_depth) // synth.N_REGIONS
    brain, nocsf = synth.brain_masks_from_labels(labels)
    old_brain, _ = synth.brain_masks_from_labels(anatomy.labels)
    assert dice(brain, old_brain) > 0.999
    target = widening.nocsf_target(anatomy.sdt_nocsf, anatomy.sdt_brain, mm_per_label_mm=1.0) < 0
    assert dice(target, nocsf & brain) > 0.97
    assert target.sum() < (anatomy.sdt_nocsf < 0).sum()
    # in the unit of its inputs: at 2 output mm per label mm, a 4 mm rim is 8 output mm
    assert widening.nocsf_target(np.float32([-20.0]), np.float32([-10.0]), 2.0).tolist() == [-2.0]


def test_rim_widening_off_draws_nothing_and_changes_only_the_cortex(procedural_anatomy):
    """Own stream: with it on the same seed gives the same contrast, grid and brain+CSF
    target, a smaller no-CSF target, and another image."""
    assert synth.sample_rim_widening(3, synth.SynthConfig()) is None
    config_on = synth.config_with(p_rim_widening=1.0, rim_widening_mm=(3.0, 3.5))
    rims = [synth.sample_rim_widening(seed, config_on).rim_mm for seed in range(20)]
    assert min(rims) >= 3.0 and max(rims) <= 3.5
    samples = []
    for p in (0.0, 1.0):
        config = synth.config_with(shape=(48, 48, 48), voxel_mm=3.0, p_rim_widening=p, rim_widening_mm=(4.0, 4.0))
        samples.append(synth.SyntheticHeads([procedural_anatomy], config).sample(9, "mri"))
    plain, widened = samples
    assert plain.contrast == widened.contrast and plain.image.shape == widened.image.shape
    np.testing.assert_array_equal(plain.sdt_brain, widened.sdt_brain)
    assert (widened.sdt_nocsf >= plain.sdt_nocsf).all()
    assert (widened.sdt_nocsf < 0).sum() < (plain.sdt_nocsf < 0).sum()
    assert not np.array_equal(plain.image, widened.image)


def test_rim_thinning_turns_the_deep_outer_csf_into_cortex_and_keeps_regions(procedural_anatomy):
    anatomy = procedural_anatomy
    regions = anatomy.regions
    thinned = synth.RimThinning(rim_mm=1.0)(regions, anatomy.shell_index, anatomy.shell_depth)
    np.testing.assert_array_equal(thinned % synth.N_REGIONS, regions % synth.N_REGIONS)
    before, after = regions // synth.N_REGIONS, thinned // synth.N_REGIONS
    changed = before != after
    assert changed.any()
    assert (before[changed] == synth.CSF).all() and (after[changed] == synth.GM).all()
    # all outer CSF from 1 mm down to MAX_RIM_MM, and nothing else: not the ventricles
    # (inside the no-CSF mask) and not the first millimetre under the skull
    depth = -anatomy.sdt_brain
    outer = (before == synth.CSF) & (anatomy.sdt_nocsf >= 0) & (depth > 1.0) & (depth < synth.MAX_RIM_MM)
    np.testing.assert_array_equal(changed, outer)
    assert ((before == synth.CSF) & (depth > 0) & (depth <= 1.0) & ~changed).any()  # a rim is left


def test_rim_thinning_nocsf_target_matches_the_mask_of_the_thinned_labels(procedural_anatomy):
    """The target agrees with the no-CSF mask recomputed from the thinned labels, which is
    larger than before, and the brain+CSF mask is the same before and after."""
    anatomy = procedural_anatomy
    thinning = synth.RimThinning(rim_mm=0.5)
    labels = thinning(anatomy.regions, anatomy.shell_index, anatomy.shell_depth) // synth.N_REGIONS
    brain, nocsf = synth.brain_masks_from_labels(labels)
    old_brain, _ = synth.brain_masks_from_labels(anatomy.labels)
    assert dice(brain, old_brain) > 0.999
    target = thinning.nocsf_target(anatomy.sdt_nocsf, anatomy.sdt_brain, mm_per_label_mm=1.0) < 0
    assert dice(target, nocsf & brain) > 0.99
    assert target.sum() > 1.05 * (anatomy.sdt_nocsf < 0).sum()
    # in the unit of its inputs: at 2 output mm per label mm, a 0.5 mm rim is 1 output mm
    assert thinning.nocsf_target(np.float32([5.0]), np.float32([-3.0]), 2.0).tolist() == [-2.0]


def test_rim_thinning_has_its_own_stream_and_never_follows_a_widening(procedural_anatomy):
    """Off, it draws nothing; on, the same seed gives the same contrast, grid and brain+CSF
    target and a larger no-CSF target; a sample whose rim was widened is not thinned."""
    assert synth.sample_rim_thinning(3, synth.SynthConfig()) is None
    config_on = synth.config_with(p_rim_thinning=1.0, rim_thinning_mm=(0.2, 0.8))
    rims = [synth.sample_rim_thinning(seed, config_on).rim_mm for seed in range(20)]
    assert min(rims) >= 0.2 and max(rims) <= 0.8
    samples = []
    for p in (0.0, 1.0):
        config = synth.config_with(shape=(48, 48, 48), voxel_mm=3.0, p_rim_thinning=p)
        samples.append(synth.SyntheticHeads([procedural_anatomy], config).sample(9, "mri"))
    plain, thinned = samples
    assert plain.contrast == thinned.contrast and plain.image.shape == thinned.image.shape
    np.testing.assert_array_equal(plain.sdt_brain, thinned.sdt_brain)
    assert (thinned.sdt_nocsf <= plain.sdt_nocsf).all()
    assert (thinned.sdt_nocsf < 0).sum() > (plain.sdt_nocsf < 0).sum()
    assert not np.array_equal(plain.image, thinned.image)
    widen_only = synth.config_with(shape=(48, 48, 48), voxel_mm=3.0, p_rim_widening=1.0)
    both = synth.config_with(shape=(48, 48, 48), voxel_mm=3.0, p_rim_widening=1.0, p_rim_thinning=1.0)
    np.testing.assert_array_equal(synth.SyntheticHeads([procedural_anatomy], widen_only).sample(9, "mri").image,
                                  synth.SyntheticHeads([procedural_anatomy], both).sample(9, "mri").image)


def test_head_size_resizes_about_the_grid_centre_and_rescales_the_targets(procedural_anatomy):
    """A factor of 0.8 shrinks the brain by 0.8^3 in volume about the same centre, and its
    distances stay in output mm (the mask of the resized sdt is the resized mask)."""
    config = synth.config_with(shape=(64, 64, 64), voxel_mm=3.0, max_rotation_deg=0.0, p_axis_permutation=0.0,
                               max_shift_mm=0.0, p_fov_cut=0.0, p_deface=0.0, p_skull_stripped=0.0)
    transform = synth.sample_spatial_transform(np.random.default_rng(4), config, procedural_anatomy)
    np.testing.assert_allclose(synth.HeadSize(1.0)(transform).matrix, transform.matrix)
    assert synth.HeadSize(0.8)(transform).mm_per_label_mm == pytest.approx(transform.mm_per_label_mm * 0.8)
    samples = []
    for factor in (1.0, 0.8):
        sized = dataclasses.replace(config, head_size_range=(factor, factor))
        samples.append(synth.SyntheticHeads([procedural_anatomy], sized).sample(4, "mri"))
    full, small = samples
    inside_full, inside_small = full.sdt_brain < 0, small.sdt_brain < 0
    assert inside_small.sum() / inside_full.sum() == pytest.approx(0.8**3, rel=0.05)
    np.testing.assert_allclose(ndi.center_of_mass(inside_small), ndi.center_of_mass(inside_full), atol=1.0)
    # one output mm inward of the small surface is 1/0.8 label-map mm: the distances were rescaled
    assert (small.sdt_brain < -3.0).sum() / (full.sdt_brain < -3.0 / 0.8).sum() == pytest.approx(0.8**3, rel=0.05)


def test_head_size_has_its_own_stream_and_is_off_by_default(procedural_anatomy):
    assert synth.sample_head_size(3, synth.SynthConfig()) is None
    config = synth.config_with(head_size_range=(0.8, 1.02))
    factors = [synth.sample_head_size(seed, config).factor for seed in range(40)]
    assert min(factors) >= 0.8 and max(factors) <= 1.02 and len(set(factors)) == 40
    assert factors[7] == synth.sample_head_size(7, config).factor
    samples = []
    for head_size_range in (None, (0.85, 0.85)):
        sized = synth.config_with(shape=(48, 48, 48), voxel_mm=3.0, head_size_range=head_size_range)
        samples.append(synth.SyntheticHeads([procedural_anatomy], sized).sample(9, "mri"))
    plain, small = samples
    assert plain.contrast == small.contrast and plain.image.shape == small.image.shape
    assert (small.sdt_brain < 0).sum() < (plain.sdt_brain < 0).sum()


def test_marrow_contrast_sets_the_marrow_and_nothing_else():
    contrast = synth.sample_tissue_contrast(np.random.default_rng(2), "mri", p_mri_family=1.0, mri_family="t2")
    changed = synth.MarrowContrast(intensity=0.9)(contrast)
    assert changed.means[synth.MARROW] == 0.9
    others = np.arange(synth.N_LABELS) != synth.MARROW
    np.testing.assert_array_equal(changed.means[others], contrast.means[others])
    np.testing.assert_array_equal(changed.stds, contrast.stds)
    assert changed.name == contrast.name and contrast.means[synth.MARROW] != 0.9  # the input is left as it was


def test_sample_marrow_contrast_is_mri_only_in_range_and_off_by_default():
    mri = synth.sample_tissue_contrast(np.random.default_rng(0), "mri")
    ct = synth.sample_tissue_contrast(np.random.default_rng(0), "ct")
    assert synth.sample_marrow_contrast(1, synth.SynthConfig(), mri) is None
    config = synth.config_with(p_marrow_contrast=1.0, marrow_contrast_range=(0.2, 0.3))
    assert synth.sample_marrow_contrast(1, config, ct) is None
    drawn = [synth.sample_marrow_contrast(seed, config, mri).intensity for seed in range(30)]
    assert min(drawn) >= 0.2 and max(drawn) <= 0.3 and len(set(drawn)) == 30
    assert drawn[4] == synth.sample_marrow_contrast(4, config, mri).intensity  # one seed, one draw
    half = synth.config_with(p_marrow_contrast=0.5)
    share = np.mean([synth.sample_marrow_contrast(seed, half, mri) is not None for seed in range(400)])
    assert 0.4 < share < 0.6


def test_marrow_contrast_changes_the_image_of_the_same_head_only(procedural_anatomy):
    """Own stream: dark and bright marrow give the same head, grid, contrast name and
    targets; only the image differs, brighter with bright marrow."""
    samples = []
    for value in (0.0, 1.0):
        config = synth.config_with(shape=(48, 48, 48), voxel_mm=3.0, p_mri_family=1.0, mri_family="t2",
                                   p_marrow_contrast=1.0, marrow_contrast_range=(value, value))
        samples.append(synth.SyntheticHeads([procedural_anatomy], config).sample(9, "mri"))
    dark, bright = samples
    np.testing.assert_array_equal(dark.sdt_brain, bright.sdt_brain)
    np.testing.assert_array_equal(dark.sdt_nocsf, bright.sdt_nocsf)
    assert dark.contrast == bright.contrast == "t2"
    assert bright.image.mean() > dark.image.mean()


def toy_head_with_eyes(separation: int = 64, eye_radius: int = 11) -> np.ndarray:
    """A 1 mm RAS head: brain ball, skull shell, scalp, and two muscle/skin globes in orbital fat."""
    shape = (180, 200, 170)
    x, y, z = np.indices(shape, sparse=True)
    labels = np.zeros(shape, dtype=np.uint8)
    head = (x - 90) ** 2 + (y - 100) ** 2 + (z - 90) ** 2
    labels[head <= 80**2] = synth.SKIN
    labels[head <= 77**2] = synth.SKULL
    labels[head <= 72**2] = synth.CSF
    labels[head <= 69**2] = synth.GM
    labels[head <= 60**2] = synth.WM
    # the orbits: fat in front of and below the brain's centre, each with a globe
    for side in (-1, 1):
        cx = 90 + side * separation // 2
        orbit = (x - cx) ** 2 + (y - 172) ** 2 + (z - 50) ** 2
        labels[(orbit <= (eye_radius + 5) ** 2) & (head > 72**2)] = synth.FAT
        labels[(orbit <= eye_radius**2) & (head > 72**2)] = synth.SKIN
    return labels


def test_fluid_eyes_turn_both_globes_into_fluid_outside_the_brain_targets():
    labels = toy_head_with_eyes()
    globes = synth.find_eye_globes(labels)
    assert ndi.label(globes)[1] == 2
    assert 2 * 3000 < globes.sum() < 2 * 6500  # two balls of about 11 mm radius, cut by the skull
    assert (labels[globes] == synth.SKIN).all()
    fluid = synth.fluid_eyes(labels)
    assert (fluid[globes] == synth.CSF).all() and (fluid[~globes] == labels[~globes]).all()
    brain, nocsf = synth.brain_masks_from_labels(fluid)
    before, _ = synth.brain_masks_from_labels(labels)
    np.testing.assert_array_equal(brain, before)  # the targets do not take the eyes
    assert not (brain & globes).any() and not (nocsf & globes).any()


def test_no_globes_where_the_orbits_hold_nothing_eye_sized():
    assert not synth.find_eye_globes(toy_head_with_eyes(eye_radius=4)).any()  # too small for a globe
    assert not synth.find_eye_globes(toy_head_with_eyes(separation=20)).any()  # not two orbits apart
    labels = toy_head_with_eyes()
    no_globes = np.where(labels == synth.SKIN, synth.FAT, labels)
    np.testing.assert_array_equal(synth.fluid_eyes(no_globes), no_globes)


@needs_shared
def test_brainweb_eyes_are_two_globes_in_the_orbits():
    path = sorted((SHARED_DATA / "labelmaps" / "brainweb").glob("*.nii.gz"))[0]
    labels = synth.load_label_map(path)
    globes = synth.find_eye_globes(labels)
    parts, n = ndi.label(globes)
    assert n == 2
    volumes_ml = ndi.sum(globes, parts, [1, 2]) / 1000
    assert all(2.5 < v < 12 for v in volumes_ml)
    centres = ndi.center_of_mass(globes, parts, [1, 2])
    assert 45 < abs(centres[0][0] - centres[1][0]) < 95


@given(seed=st.integers(0, 2**31), cap=st.integers(64**3, 112**3))
@settings(max_examples=60, deadline=None)
def test_capped_crop_shapes_stay_in_range_and_under_the_cap(seed, cap):
    shape = synth.draw_crop_shape(np.random.default_rng(seed), (64, 112), cap)
    assert all(64 <= n <= 112 and n % 4 == 0 for n in shape)
    assert np.prod(shape) <= cap


@given(seed=st.integers(0, 2**31))
@settings(max_examples=60, deadline=None)
def test_crop_cap_keeps_the_first_draw_when_it_fits(seed):
    uncapped = synth.draw_crop_shape(np.random.default_rng(seed), (64, 112))
    capped = synth.draw_crop_shape(np.random.default_rng(seed), (64, 112), 800_000)
    assert (capped == uncapped) == (np.prod(uncapped) <= 800_000)


def test_uncapped_crop_shape_is_the_draw_of_the_recipes_before_the_cap():
    # run51's full-crop step 5000 drew this shape; an uncapped draw must still reproduce it
    assert synth.draw_crop_shape(np.random.default_rng(40261205 + 5000), (64, 112)) == (88, 108, 104)


def test_crop_cap_below_the_smallest_crop_is_an_error():
    with pytest.raises(ValueError, match="below the smallest crop"):
        synth.draw_crop_shape(np.random.default_rng(0), (64, 112), 63**3)


def test_capped_generator_draws_only_crops_within_the_cap(procedural_anatomy):
    config = synth.config_with(shape_range=(24, 40), voxel_mm=4.0, max_crop_voxels=32**3)
    shapes = [synth.SyntheticHeads([procedural_anatomy], config).sample(seed).image.shape for seed in range(4)]
    assert all(np.prod(shape) <= 32**3 for shape in shapes)
