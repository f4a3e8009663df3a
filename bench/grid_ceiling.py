"""How much Dice the working grid itself costs: the reference masks through it and back.

Usage: python bench/grid_ceiling.py [--voxels 2,1]

The network predicts a signed distance on a working grid (``conform.WORKING_VOXEL_MM``)
that ``skullstrip.strip`` resamples (trilinear) to the native grid and thresholds. A
perfect network would predict the reference mask's own signed distance; this measures
what is left of the reference after that round trip, for every case of
../shared/data/eval: the reference's distance map (computed on the native grid) is
resampled onto the case's working grid (the same head box and affine as inference, at
each voxel size asked for), back onto the native grid, and thresholded at 0. A Dice
close to 1 means the grid is not what limits the network's accuracy.
Writes bench/results/grid_ceiling.md and .csv.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import nibabel as nib
import numpy as np

from skullstrip import conform
from skullstrip.evaluate import binary_mask, mask_metrics, read_manifest
from skullstrip.infer import OUTSIDE_MM
from skullstrip.synth import signed_distance_mm

SHARED = Path(__file__).resolve().parents[2] / "shared"
RESULTS = Path(__file__).parent / "results"


def finer_grid(grid: conform.WorkingGrid, factor: int) -> tuple[tuple[int, ...], np.ndarray]:
    """The same box as ``grid`` sampled ``factor`` times finer along each axis."""
    affine = grid.affine.copy()
    affine[:3, :3] /= factor
    first_centre = -0.5 + 0.5 / factor  # of the coarse voxel 0, in coarse voxel units
    affine[:3, 3] = (grid.affine @ np.array([first_centre] * 3 + [1.0]))[:3]
    return tuple(factor * size for size in grid.shape), affine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--voxels", default="2,1", help="working voxel sizes in mm, each dividing 2")
    args = parser.parse_args()
    voxel_sizes = [float(v) for v in args.voxels.split(",")]
    rows = []
    for case in read_manifest(SHARED / "data" / "eval" / "manifest.csv"):
        image, reference = nib.load(str(case.image)), nib.load(str(case.mask))
        volume = np.asarray(image.dataobj, dtype=np.float32)
        volume = volume[..., 0] if volume.ndim == 4 else volume
        truth = binary_mask(reference)
        zooms = tuple(float(z) for z in reference.header.get_zooms()[:3])
        reduced, reduced_affine = conform.reduce_to_working_resolution(volume, image.affine)
        grid = conform.working_grid_for(volume.shape, image.affine, conform.head_box(reduced, reduced_affine))
        native_distance = signed_distance_mm(truth, zooms)
        for voxel_mm in voxel_sizes:
            shape, affine = finer_grid(grid, round(conform.WORKING_VOXEL_MM / voxel_mm))
            working = conform.resample(native_distance, image.affine, shape, affine, order=1, cval=OUTSIDE_MM)
            back = conform.resample(working, affine, volume.shape[:3], image.affine, order=1, cval=OUTSIDE_MM)
            metrics = mask_metrics(back < 0, truth, zooms)
            rows.append({"case": case.case, "modality": case.modality, "voxel_mm": voxel_mm,
                         "dice": round(metrics["dice"], 4), "hd95_mm": round(metrics["hd95_mm"], 2)})
            print(rows[-1], flush=True)

    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "grid_ceiling.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    modalities = sorted({row["modality"] for row in rows})
    lines = ["# Dice left after the working grid's round trip (a perfect network's ceiling)", "",
             f"Command: `python bench/grid_ceiling.py --voxels {args.voxels}`", "",
             "The reference masks of ../shared/data/eval as signed distances, resampled onto the inference "
             "working grid of each case and back (trilinear), thresholded at 0.", "",
             "| working voxel mm | mean Dice | min Dice | mean HD95 mm | " + " | ".join(modalities) + " |",
             "|---|---|---|---|" + "---|" * len(modalities)]
    for voxel_mm in voxel_sizes:
        chosen = [row for row in rows if row["voxel_mm"] == voxel_mm]
        dice = np.array([row["dice"] for row in chosen])
        per_modality = [np.mean([row["dice"] for row in chosen if row["modality"] == m]) for m in modalities]
        lines.append(f"| {voxel_mm:g} | {dice.mean():.4f} | {dice.min():.4f} | "
                     f"{np.mean([row['hd95_mm'] for row in chosen]):.2f} | "
                     + " | ".join(f"{value:.4f}" for value in per_modality) + " |")
    (RESULTS / "grid_ceiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
