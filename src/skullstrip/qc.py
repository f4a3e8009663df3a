"""What a person judges a mask by: automatic flags and pictures.

``flags`` turns a result's brain volume and diagnostics into named reasons to look at
it (the batch report shows them; ``skullstrip -i`` prints them as warnings). The
pictures are three orthogonal planes with the mask outline, in world orientation
(reoriented to RAS with nibabel, radiological habits aside: left is left), with robust
intensity windowing so CT, PET and MRI all show their anatomy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

OUTLINE_COLOUR = "#ff3030"

PLAUSIBLE_BRAIN_ML = (800.0, 2200.0)
MAX_EDGE_FRACTION = 0.01
MAX_UNCERTAIN_FRACTION = 0.12
MIN_FLIP_DICE = 0.95
MAX_HEIGHT_TO_LENGTH = 1.0  # real brains 0.71-0.88 (see skullstrip.infer._height_to_length)

FLAG_MEANINGS = {
    "volume": f"brain volume outside {PLAUSIBLE_BRAIN_ML[0]:.0f}-{PLAUSIBLE_BRAIN_ML[1]:.0f} mL",
    "fov-edge": f"more than {MAX_EDGE_FRACTION:.0%} of the mask on the image border",
    "low-confidence": f"wide band of uncertain distances (more than {MAX_UNCERTAIN_FRACTION} of the brain)",
    "flip-disagreement": f"Dice with the mirrored-input prediction below {MIN_FLIP_DICE}",
    "taller-than-long": f"superior-inferior extent over {MAX_HEIGHT_TO_LENGTH} times the anterior-posterior "
                        "extent (a leak through the skull base into the neck, or a header that does not say "
                        "which way is up)",
}


def flags(volume_ml: float | None, diagnostics: dict[str, float]) -> list[str]:
    """Automatic reasons to look at a mask, as keys of ``FLAG_MEANINGS``."""
    found = []
    if volume_ml is not None and not PLAUSIBLE_BRAIN_ML[0] <= volume_ml <= PLAUSIBLE_BRAIN_ML[1]:
        found.append("volume")
    if diagnostics.get("edge_fraction", 0) > MAX_EDGE_FRACTION:
        found.append("fov-edge")
    if diagnostics.get("uncertain_fraction", 0) > MAX_UNCERTAIN_FRACTION:
        found.append("low-confidence")
    if diagnostics.get("flip_dice", 1) < MIN_FLIP_DICE:
        found.append("flip-disagreement")
    if diagnostics.get("height_to_length", 0) > MAX_HEIGHT_TO_LENGTH:
        found.append("taller-than-long")
    return found


def _canonical(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(volume, ornt)


def _zooms(affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return zooms[ornt[:, 0].astype(int)]


def three_planes(axes: Sequence, volume: np.ndarray, mask: np.ndarray | None, affine: np.ndarray,
                 title: str | None = None) -> None:
    """Draw sagittal, coronal and axial planes through the mask centre on three axes."""
    volume = _canonical(np.asarray(volume, dtype=np.float32), affine)
    canon_mask = _canonical(mask.astype(bool), affine) if mask is not None else None
    zooms = _zooms(affine)
    if canon_mask is not None and canon_mask.any():
        centre = np.round(np.argwhere(canon_mask).mean(axis=0)).astype(int)
    else:
        centre = np.array(volume.shape) // 2
    finite = volume[np.isfinite(volume)]
    low, high = np.percentile(finite, (1, 99.5)) if finite.size else (0, 1)
    planes = [(0, (zooms[2], zooms[1])), (1, (zooms[2], zooms[0])), (2, (zooms[1], zooms[0]))]
    for ax, (axis, (row_mm, col_mm)) in zip(axes, planes):
        index = [slice(None)] * 3
        index[axis] = int(np.clip(centre[axis], 0, volume.shape[axis] - 1))
        picture = np.rot90(volume[tuple(index)])
        ax.imshow(picture, cmap="gray", vmin=low, vmax=high, aspect=row_mm / col_mm, interpolation="nearest")
        if canon_mask is not None:
            outline = np.rot90(canon_mask[tuple(index)])
            if outline.any() and not outline.all():
                ax.contour(outline, levels=[0.5], colors=OUTLINE_COLOUR, linewidths=0.8)
        ax.set_axis_off()
    if title:
        axes[1].set_title(title, fontsize=8, color="white")


def overlay_png(path: str | Path, volume: np.ndarray, mask: np.ndarray | None, affine: np.ndarray,
                title: str | None = None, dpi: int = 70) -> Path:
    """One PNG with three planes and the mask outline."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    three_planes(axes, volume, mask, affine, title)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi, facecolor="black")
    plt.close(figure)
    return Path(path)


def montage_png(path: str | Path, items: Sequence[tuple[np.ndarray, np.ndarray | None, np.ndarray, str]],
                dpi: int = 60) -> Path:
    """Several volumes, one row each: ``(volume, mask, affine, title)``."""
    plt = _pyplot()
    figure, axes = plt.subplots(len(items), 3, figsize=(7.5, 2.6 * len(items)), squeeze=False)
    for row, (volume, mask, affine, title) in zip(axes, items):
        three_planes(row, volume, mask, affine, title)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi, facecolor="black")
    plt.close(figure)
    return Path(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
