"""Cleaning the network's distance map: one brain, no holes, bridges cut, border moved."""

from __future__ import annotations

import numpy as np

from skullstrip.postprocess import (
    already_stripped_brain,
    clean_distance_map,
    hounsfield_brain,
    is_hounsfield,
    largest_component,
    with_mask,
)
from skullstrip.synth import signed_distance_mm


def ball(shape, centre, radius):
    grid = np.indices(shape)
    return ((grid - np.reshape(centre, (3, 1, 1, 1))) ** 2).sum(axis=0) <= radius**2


def test_keeps_the_largest_brain_and_fills_its_holes():
    mask = ball((40, 40, 40), (20, 20, 20), 10) & ~ball((40, 40, 40), (20, 20, 20), 3)  # a hollow ball
    mask |= ball((40, 40, 40), (4, 4, 4), 2)  # an island
    cleaned = clean_distance_map(signed_distance_mm(mask))
    expected = ball((40, 40, 40), (20, 20, 20), 10)
    np.testing.assert_array_equal(cleaned < 0, expected)


def test_border_moves_the_surface_by_that_distance():
    mask = ball((40, 40, 40), (20, 20, 20), 10)
    sdt = signed_distance_mm(mask, spacing=2.0)
    grown = clean_distance_map(sdt, border_mm=4.0) < 0
    np.testing.assert_array_equal(grown, sdt < 4.0)
    assert grown.sum() > mask.sum()


def test_opening_cuts_a_thin_bridge_but_keeps_the_brain():
    shape = (60, 40, 40)
    brain = ball(shape, (20, 20, 20), 12)
    leak = ball(shape, (48, 20, 20), 8)  # a blob below the skull base, joined by a thin bridge
    bridge = np.zeros(shape, bool)
    bridge[30:42, 19:22, 19:22] = True
    sdt = signed_distance_mm(brain | leak | bridge, spacing=2.0)
    plain = clean_distance_map(sdt) < 0
    opened = clean_distance_map(sdt, opening_mm=4.0, voxel_mm=2.0) < 0
    assert plain[48, 20, 20] and not opened[48, 20, 20]  # the leak falls off
    np.testing.assert_array_equal(opened[brain], True)  # the brain, its surface included, stays
    assert largest_component(opened).sum() == opened.sum()


def ct_head(shape=(60, 60, 60)):
    """A CT in Hounsfield units: air, a 4-voxel bone shell, brain at 30 HU with a calcification."""
    volume = np.full(shape, -1000.0, np.float32)
    centre = np.asarray(shape) // 2
    volume[ball(shape, centre, 26)] = 1200.0
    brain = ball(shape, centre, 22)
    volume[brain] = 30.0
    volume[ball(shape, centre + [0, 0, 5], 2)] = 400.0  # calcified pineal gland, inside the brain
    return volume, brain


def test_hounsfield_units_are_recognised_and_other_scans_are_not():
    volume, brain = ct_head()
    assert is_hounsfield(volume, brain)
    assert not is_hounsfield(volume + 1024, brain)  # offset storage: air at 0, left alone
    mri = np.where(brain, 0.8, 0.05).astype(np.float32)
    assert not is_hounsfield(mri, brain)
    assert not is_hounsfield(volume, np.zeros_like(brain))


def test_hounsfield_brain_drops_bone_and_air_but_keeps_enclosed_calcification():
    volume, brain = ct_head()
    overreach = ball(volume.shape, np.asarray(volume.shape) // 2, 25)  # a mask running into the bone
    kept = hounsfield_brain(volume, overreach)
    np.testing.assert_array_equal(kept, brain)
    sinus = brain & (np.indices(volume.shape)[0] < 15)  # air in the mask's front edge
    volume[sinus] = -900.0
    kept = hounsfield_brain(volume, overreach)
    assert not (kept & sinus).any() and kept.sum() == brain.sum() - sinus.sum()


def test_an_already_stripped_image_is_recognised_but_a_whole_head_is_not():
    shape = (60, 60, 60)
    centre = np.asarray(shape) // 2
    brain = ball(shape, centre, 20)
    stripped = np.where(brain, 100.0, 0.0).astype(np.float32)
    network_sdt = signed_distance_mm(ball(shape, centre, 19))  # the network's surface a little short
    np.testing.assert_array_equal(already_stripped_brain(stripped, network_sdt), brain)
    head = stripped.copy()
    head[ball(shape, centre, 28) & ~ball(shape, centre, 24)] = 60.0  # scalp around a dark skull
    head[ball(shape, centre, 24) & ~brain] = 5.0  # CSF and skull
    assert already_stripped_brain(head, network_sdt) is None
    small_sdt = signed_distance_mm(ball(shape, centre, 10))
    assert already_stripped_brain(stripped, small_sdt) is None  # region much larger than the brain
    tissue = 50.0 + np.indices(shape)[0]  # varied: only the brain's one leftmost voxel is at the minimum
    with_nan_background = np.where(brain, tissue, np.nan).astype(np.float32)
    region = already_stripped_brain(with_nan_background, network_sdt)
    assert region is not None and (region ^ brain).sum() == 1


def test_with_mask_changes_the_distance_only_where_the_mask_disagrees():
    sdt = signed_distance_mm(ball((30, 30, 30), (15, 15, 15), 8))
    mask = ball((30, 30, 30), (15, 15, 15), 6)
    changed = with_mask(sdt, mask)
    np.testing.assert_array_equal(changed < 0, mask)
    np.testing.assert_array_equal(changed[mask], sdt[mask])  # inside both: untouched
    assert (changed[~mask & (sdt < 0)] > 0).all()
