"""Conform a scan to the model's working grid and bring predictions back.

The network always sees the same kind of grid: RAS-oriented, isotropic voxels of
``WORKING_VOXEL_MM`` (the size it learnt; ``StripOptions.working_voxel_mm`` can choose
another), cropped to the head and padded to a multiple of ``GRID_MULTIPLE``.
Everything is done with one affine resampling (``scipy.ndimage.affine_transform``), so
any orientation, oblique or sheared affine and any voxel size goes through one code path,
and the inverse step resamples the *continuous* network output (a signed distance) onto
the native grid, so masks keep sub-voxel boundaries instead of 2 mm staircases.

Intensity normalisation lives here too because training (``skullstrip.synth``) and
inference must apply exactly the same function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

WORKING_VOXEL_MM = 2.0
GRID_MULTIPLE = 4  # the network downsamples once by 2; 4 leaves room for even sizes
HEAD_MARGIN_MM = 12.0
NORMALISE_PERCENTILES = (0.5, 99.5)
INTENSITY_NORMALISATIONS = ("percentile", "rank")
# on the percentile scale, the level above which a voxel is tissue rather than air: the
# head box and head mask threshold there too
TISSUE_THRESHOLD = 0.1


def normalize_intensity(image: np.ndarray, method: str = "percentile") -> np.ndarray:
    """Map intensities to about [0, 1], in float32, by one of ``INTENSITY_NORMALISATIONS``.

    ``"percentile"``: linear, robust percentiles to 0 and 1. Percentiles over all voxels
    make the mapping independent of units (raw CT Hounsfield units with air at -1000,
    unsigned MRI, PET counts): the low percentile is background and the high one the
    brightest tissue, whatever the modality.

    ``"rank"``: the same, then histogram equalisation of the tissue voxels (above
    ``TISSUE_THRESHOLD`` on the percentile scale; background stays linear below it): a
    tissue voxel goes to the point of (``TISSUE_THRESHOLD``, 1] given by its share of the
    tissue voxels that are darker. Any monotone remap of the tissue intensities gives the
    same image, so the brain's intensity band is as wide whatever the contrast; with the
    percentile scaling a clinical spin-echo T1w squeezes grey matter, white matter and the
    skull's marrow into a tenth of the range while the scalp fat takes the rest. Global
    histogram equalisation, restricted to the head so the amount of air does not matter.

    The network must see the normalisation it was trained with: the choice belongs to the
    model (``ModelConfig.input_normalisation``).
    """
    if method not in INTENSITY_NORMALISATIONS:
        raise ValueError(f"intensity normalisation must be one of {INTENSITY_NORMALISATIONS}, not {method!r}")
    finite = np.isfinite(image)
    values = image[finite] if not finite.all() else image
    if values.size > 2_000_000:  # a strided subsample gives the same percentiles, faster
        values = values.ravel()[:: values.size // 1_000_000]
    low, high = np.percentile(values, NORMALISE_PERCENTILES)
    if high <= low:
        high = low + 1.0
    out = (np.where(finite, image, low).astype(np.float32) - np.float32(low)) / np.float32(
        high - low
    )
    if method == "rank":
        out = _equalise_tissue(out)
    np.clip(out, -0.2, 1.5, out=out)
    return out


def _equalise_tissue(scaled: np.ndarray) -> np.ndarray:
    """Replace each tissue voxel's value by its mid-rank quantile among the tissue voxels."""
    tissue = scaled > TISSUE_THRESHOLD
    values = scaled[tissue]
    if values.size < 2:
        return scaled
    ordered = np.sort(values[:: max(values.size // 1_000_000, 1)])  # a subsample ranks as well
    # mid-rank: equal values (quantised images, clipped tops) stay equal
    quantile = (np.searchsorted(ordered, values, "left") + np.searchsorted(ordered, values, "right")) / (
        2.0 * ordered.size
    )
    out = scaled.copy()
    out[tissue] = TISSUE_THRESHOLD + (1 - TISSUE_THRESHOLD) * quantile.astype(np.float32)
    return out


@dataclass(frozen=True)
class WorkingGrid:
    """A working grid: its shape and the affine from its voxels to world (RAS mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray


def working_grid_for(
    native_shape: tuple[int, ...],
    native_affine: np.ndarray,
    head_box_world: tuple[np.ndarray, np.ndarray] | None = None,
    voxel_mm: float = WORKING_VOXEL_MM,
) -> WorkingGrid:
    """RAS isotropic grid covering the native field of view (or a head box within it)."""
    if head_box_world is None:
        corners = _voxel_corners(native_shape[:3])
        world = apply_affine(native_affine, corners)
        low, high = world.min(axis=0), world.max(axis=0)
    else:
        low, high = head_box_world
    extent = high - low
    shape = np.ceil(extent / voxel_mm).astype(int) + 1
    shape = (np.ceil(shape / GRID_MULTIPLE) * GRID_MULTIPLE).astype(int)
    shape = np.maximum(shape, 2 * GRID_MULTIPLE)
    centre = (low + high) / 2
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = centre - voxel_mm * (shape - 1) / 2
    return WorkingGrid(tuple(int(s) for s in shape), affine)


def resample(
    volume: np.ndarray,
    volume_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    target_affine: np.ndarray,
    order: int = 1,
    cval: float = 0.0,
    prefilter_sigma_vox: np.ndarray | None = None,
) -> np.ndarray:
    """Resample ``volume`` onto a target grid given both voxel-to-world affines.

    ``prefilter_sigma_vox`` blurs the source first (anti-aliasing when going from fine
    to coarse); the blur is done in float32 to keep memory at one extra copy.
    """
    source = volume
    if prefilter_sigma_vox is not None and np.any(prefilter_sigma_vox > 0.3):
        source = ndi.gaussian_filter(volume, prefilter_sigma_vox, mode="nearest", output=np.float32)
    target_to_source = np.linalg.inv(volume_affine) @ target_affine
    return ndi.affine_transform(
        source,
        target_to_source[:3, :3],
        offset=target_to_source[:3, 3],
        output_shape=target_shape,
        order=order,
        mode="constant",
        cval=cval,
        output=np.float32,
        prefilter=False,
    )


def reduce_to_working_resolution(volume: np.ndarray, affine: np.ndarray,
                                 voxel_mm: float = WORKING_VOXEL_MM) -> tuple[np.ndarray, np.ndarray]:
    """Average blocks of voxels along axes at least twice finer than ``voxel_mm``.

    A 0.5 mm 512^3 scan becomes 2 mm 128^3 with a block mean (a box anti-alias filter)
    that costs one pass and a float32 array a 64th of the input's size, instead of
    blurring the full-resolution volume. Returns the reduced volume (float32) and its
    affine (the block centres).
    """
    source_mm = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    factors = np.maximum(np.floor(voxel_mm / source_mm + 1e-6).astype(int), 1)
    factors = np.minimum(factors, np.asarray(volume.shape[:3]))
    if np.all(factors == 1):
        return volume.astype(np.float32, copy=False), affine
    kept = [(n // f) * f for n, f in zip(volume.shape, factors)]
    cropped = volume[: kept[0], : kept[1], : kept[2]]
    reduced = np.zeros([k // f for k, f in zip(kept, factors)], dtype=np.float32)
    # accumulate one block offset at a time: no float copy of the full-size input
    for i in range(factors[0]):
        for j in range(factors[1]):
            for k in range(factors[2]):
                reduced += cropped[i :: factors[0], j :: factors[1], k :: factors[2]]
    reduced /= np.float32(np.prod(factors))
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] * factors
    new_affine[:3, 3] = affine[:3, 3] + affine[:3, :3] @ ((factors - 1) / 2)
    return reduced, new_affine


def antialias_sigma(source_affine: np.ndarray, target_voxel_mm: float) -> np.ndarray:
    """Gaussian sigma (in source voxels) that removes detail finer than the target grid."""
    source_voxel_mm = np.sqrt((source_affine[:3, :3] ** 2).sum(axis=0))
    ratio = target_voxel_mm / source_voxel_mm
    # sigma = FWHM/2.355 of the extra blur needed to go from source to target resolution
    return np.where(ratio > 1, np.sqrt(np.maximum(ratio**2 - 1, 0)) / 2.355, 0.0)


def head_box(
    image: np.ndarray, affine: np.ndarray, margin_mm: float = HEAD_MARGIN_MM
) -> tuple[np.ndarray, np.ndarray] | None:
    """World bounding box of the head (everything clearly above background), or None.

    Background is estimated from the image itself: voxels above 10% of the robust
    range after a small smoothing, so noise in air does not count as head.
    """
    norm = normalize_intensity(image)
    smooth = ndi.uniform_filter(norm, size=3)
    foreground = smooth > TISSUE_THRESHOLD
    if not foreground.any():
        return None
    index = np.argwhere(foreground)
    corners = _box_corners(index.min(axis=0) - 0.5, index.max(axis=0) + 0.5)
    world = apply_affine(affine, corners)
    return world.min(axis=0) - margin_mm, world.max(axis=0) + margin_mm


def head_mask(normalised: np.ndarray, threshold: float = TISSUE_THRESHOLD, margin_vox: int = 3) -> np.ndarray:
    """Voxels inside the head (or within ``margin_vox`` of it) on a normalised volume.

    A voxel is inside when, along at least two of the three axes, there is foreground
    (smoothed intensity above ``threshold``) on both sides of it. Unlike hole filling,
    this survives a field of view that cuts the head open (clinical slabs) and dark
    shells (skull in MRI, dropout in EPI). The brain is inside the head, so the network's
    distance is forced outside beyond this mask: air far from any tissue, which
    training crops rarely show, can never become brain.
    """
    foreground = ndi.uniform_filter(normalised, size=3) > threshold
    votes = np.zeros(normalised.shape, dtype=np.uint8)
    for axis in range(3):
        before = np.maximum.accumulate(foreground, axis=axis)
        after = np.flip(np.maximum.accumulate(np.flip(foreground, axis=axis), axis=axis), axis=axis)
        votes += before & after
    inside = votes >= 2
    if margin_vox > 0:
        inside = ndi.binary_dilation(inside, iterations=margin_vox)
    return inside


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 affine to an (N, 3) array of points."""
    return points @ affine[:3, :3].T + affine[:3, 3]


def _voxel_corners(shape: tuple[int, ...]) -> np.ndarray:
    return _box_corners(np.full(3, -0.5), np.asarray(shape, dtype=float) - 0.5)


def _box_corners(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return np.array(
        [[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])],
        dtype=float,
    )
