"""Cleaning the network's distance map: one brain, no holes, bridges cut, border moved."""

from __future__ import annotations

import numpy as np

from skullstrip.postprocess import clean_distance_map, largest_component
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
