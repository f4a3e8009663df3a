"""Turn the network's signed distance into one clean brain.

Cleaning happens on the 2 mm working grid, where it is cheap, and is written back into
the *distance map* rather than into a binary mask: voxels of dropped islands are pushed
outside (positive), filled holes are pulled inside (negative), and everything near the
kept surface stays continuous. The cleaned distance map then resamples to any native
grid and a threshold at zero gives the final mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

INSIDE_EPSILON_MM = 0.05


def clean_distance_map(sdt_mm: np.ndarray, border_mm: float = 0.0, opening_mm: float = 0.0,
                       voxel_mm: float = 2.0) -> np.ndarray:
    """Signed distance (mm, negative inside) to the surface of the largest, hole-free brain.

    ``border_mm`` moves the surface outwards (positive) or inwards (negative); the result
    is the distance to the moved surface, so ``result < 0`` is the final mask.
    ``opening_mm`` > 0 also cuts bridges thinner than twice that (a morphological opening
    with a ball of that radius, keeping the largest eroded part): a leak through the
    skull base into the neck or along the optic nerves then falls off as an island would.
    ``voxel_mm`` is the grid's voxel size.
    """
    shifted = (sdt_mm - np.float32(border_mm)).astype(np.float32)
    inside = shifted < 0
    kept = largest_component(inside)
    if opening_mm > 0 and kept.any():
        depth = ndi.distance_transform_edt(kept, sampling=voxel_mm)
        core = largest_component(depth > opening_mm)
        if core.any():
            kept &= ndi.distance_transform_edt(~core, sampling=voxel_mm) <= opening_mm + voxel_mm / 2
    kept = ndi.binary_fill_holes(kept)
    cleaned = shifted.copy()
    dropped = inside & ~kept
    cleaned[dropped] = np.maximum(np.abs(shifted[dropped]), INSIDE_EPSILON_MM)
    filled = kept & ~inside
    cleaned[filled] = -np.maximum(np.abs(shifted[filled]), INSIDE_EPSILON_MM)
    return cleaned


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a binary mask (empty stays empty)."""
    labelled, count = ndi.label(mask)
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == sizes.argmax()
