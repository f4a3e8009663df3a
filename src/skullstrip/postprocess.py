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
    return with_mask(shifted, ndi.binary_fill_holes(kept))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a binary mask (empty stays empty)."""
    labelled, count = ndi.label(mask)
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == sizes.argmax()


# ---------------------------------------------------------------- native-grid intensity rules
# Two kinds of input carry evidence the network's distance does not use, and both are
# checked on the native grid after the distance is resampled there.

# Brain tissue in a head CT lies between CSF (0-15 HU) and fresh blood (50-90 HU); with
# noise and partial volume at the edges the window is widened to -50..150. Bone (300 to
# 2000), fat (about -100) and air (-1000) are never brain.
CT_BRAIN_WINDOW_HU = (-50.0, 150.0)
# an image already stripped by another tool: its nonzero part is one blob no larger than
# this many times the network's brain (a whole head is three or more times larger)
STRIPPED_MAX_VOLUME_RATIO = 1.2
STRIPPED_MIN_COVER = 0.9  # least share of the network's brain inside that blob


def is_hounsfield(volume: np.ndarray, brain: np.ndarray) -> bool:
    """Whether a scan looks like a CT in Hounsfield units.

    Air at about -1000 HU fills part of any head CT's field of view, and the brain's
    median lies between CSF and grey matter. No MRI or PET has values near -1000, and a
    CT stored with an offset (air at 0) is not recognised, so such scans keep the
    network's mask unchanged.
    """
    if not brain.any():
        return False
    air_share = float(np.mean(volume <= -500))
    return air_share >= 0.05 and -20.0 <= float(np.median(volume[brain])) <= 100.0


def hounsfield_brain(volume: np.ndarray, brain: np.ndarray,
                     window_hu: tuple[float, float] = CT_BRAIN_WINDOW_HU) -> np.ndarray:
    """The brain mask without voxels outside the brain-tissue window of a CT.

    The network sees the CT at 2 mm, where thin bone at the skull base and the ethmoid
    blurs into the brain next to it; in Hounsfield units bone and air are unambiguous at
    the native resolution. Enclosed voxels outside the window (calcifications in the
    choroid plexus or pineal gland) are put back by filling holes; the largest part is
    kept. The result is a subset of ``brain``.
    """
    low, high = window_hu
    tissue = brain & (volume >= low) & (volume <= high)
    return ndi.binary_fill_holes(largest_component(tissue)) & brain


def already_stripped_brain(volume: np.ndarray, sdt_mm: np.ndarray, surface_mm: float = 0.0) -> np.ndarray | None:
    """The region another tool left of an already skull-stripped image, or None.

    Stripped images are constant (usually zero) outside the brain. When the largest
    connected part of the image above that background is about as large as the
    network's brain (``sdt_mm < surface_mm``: its unbordered surface, which is at
    ``-border`` in a bordered distance map) and holds nearly all of it, the previous
    tool's mask is the better one: the network cannot tell where a brain cut from its
    surroundings ended, and shrinking a stripped brain again loses tissue. A whole head
    (scalp and skull) is far larger, so it never qualifies.
    """
    background = np.nanmin(volume)  # NaN compares False below, so NaN voxels count as background
    # cheap test first (labelling a 256^3 grid takes a second): 4-10 mm outside a stripped
    # brain there is only background, outside a head's brain there is skull and scalp
    shell = (sdt_mm > surface_mm + 4) & (sdt_mm < surface_mm + 10)
    if shell.any() and np.mean(volume[shell] > background) > 0.5:
        return None
    brain = sdt_mm < surface_mm
    brain_size = int(brain.sum())
    if brain_size == 0:
        return None
    region = ndi.binary_fill_holes(largest_component(volume > background))
    size = int(region.sum())
    if size > STRIPPED_MAX_VOLUME_RATIO * brain_size:
        return None
    if (region & brain).sum() < STRIPPED_MIN_COVER * brain_size:
        return None
    return region


def with_mask(sdt_mm: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The distance map changed only where it disagrees with ``mask``: ``result < 0`` is ``mask``.

    A voxel moved across the surface keeps its distance with the other sign (at least
    ``INSIDE_EPSILON_MM``), so a dropped island lies as far outside as it lay inside.
    """
    result = sdt_mm.copy()
    dropped = ~mask & (sdt_mm < 0)
    result[dropped] = np.maximum(-sdt_mm[dropped], INSIDE_EPSILON_MM)
    added = mask & (sdt_mm >= 0)
    result[added] = -np.maximum(sdt_mm[added], INSIDE_EPSILON_MM)
    return result
