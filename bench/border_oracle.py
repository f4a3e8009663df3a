"""How much of the remaining error is a whole surface placed too far in or out, per scan.

Usage: python bench/border_oracle.py [--model FILE] [--csf-fraction F] [--manifest CSV]
       [--borders LOW,HIGH,STEP] [--name NAME]

For every case of the manifest (default ../shared/data/eval), one ``skullstrip.strip`` at
the shipped settings (or the given model and CSF fraction) gives the cleaned signed distance
map; its mask is then re-drawn at each border of the grid (``sdt < border``, as ``--border``
does, without re-running the cleaning) and compared with the reference. The best border of
a case is an oracle, not a setting: it says how far a scan's surface would have to move, and
how much Dice that would buy, if it moved as a whole. Borders that group by contrast point
at a contrast-dependent offset; a small gain points at errors of shape instead.

Writes bench/results/NAME.md (per case and per modality) and .csv (Dice per case and border);
NAME is border_oracle unless ``--name`` gives another.
"""

from __future__ import annotations

import argparse
import csv
import sys

import nibabel as nib
import numpy as np
from postprocess_sweep import EVAL_MANIFEST, RESULTS

from skullstrip.evaluate import binary_mask, on_reference_grid, read_manifest
from skullstrip.infer import StripOptions, strip


def dice_by_border(distance: nib.Nifti1Image, reference: nib.spatialimages.SpatialImage,
                   borders: np.ndarray) -> np.ndarray:
    """Dice against the reference of ``distance < border`` for each border (mm)."""
    values = np.asarray(distance.dataobj, dtype=np.float32)
    truth = binary_mask(reference)
    dices = []
    for border in borders:
        mask = on_reference_grid(nib.Nifti1Image((values < border).astype(np.uint8), distance.affine), reference)
        dices.append(2 * (mask & truth).sum() / max(mask.sum() + truth.sum(), 1))
    return np.array(dices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="weights (.onnx or .pt); default: the shipped ones")
    parser.add_argument("--csf-fraction", type=float, help="StripOptions.csf_fraction (default: the shipped one)")
    parser.add_argument("--manifest", default=str(EVAL_MANIFEST))
    parser.add_argument("--borders", default="-3,3,0.25", help="LOW,HIGH,STEP in mm")
    parser.add_argument("--name", default="border_oracle")
    args = parser.parse_args()
    low, high, step = (float(value) for value in args.borders.split(","))
    borders = np.round(np.arange(low, high + step / 2, step), 4)
    if not np.isclose(borders, 0).any():
        parser.error("the border grid must contain 0 (the setting measured against)")
    settings = {"model_path": args.model} if args.model else {}
    if args.csf_fraction is not None:
        settings["csf_fraction"] = args.csf_fraction
    options = StripOptions(**settings)

    rows = []
    for case in read_manifest(args.manifest):
        if case.mask is None:  # nothing to measure against
            continue
        result = strip(str(case.image), options)
        dices = dice_by_border(result.sdt_image(), nib.load(case.mask), borders)
        rows.append({"case": case.case, "modality": case.modality, "dices": dices})
        best = int(np.argmax(dices))
        print(f"{case.case}: Dice {dices[np.isclose(borders, 0)][0]:.4f} at 0, "
              f"{dices[best]:.4f} at {borders[best]:+.2f} mm", flush=True)
    write_results(args, borders, rows)


def write_results(args: argparse.Namespace, borders: np.ndarray, rows: list[dict]) -> None:
    RESULTS.mkdir(exist_ok=True)
    zero = int(np.flatnonzero(np.isclose(borders, 0))[0])
    with (RESULTS / f"{args.name}.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "modality", *(f"{border:+.2f}" for border in borders)])
        for row in rows:
            writer.writerow([row["case"], row["modality"], *(f"{value:.5f}" for value in row["dices"])])
    lines = ["# Per-scan oracle border: how far each surface would have to move as a whole", "",
             f"Command: `python bench/border_oracle.py {' '.join(sys.argv[1:])}`", "",
             f"One strip per case; its cleaned distance map re-thresholded at {borders[0]:+g} … {borders[-1]:+g} mm "
             f"(step {borders[1] - borders[0]:g}). Positive best border: the mask should grow.", "",
             "| case | modality | Dice at 0 | best Dice | best border mm |", "|---|---|---|---|---|"]
    for row in rows:
        best = int(np.argmax(row["dices"]))
        lines.append(f"| {row['case']} | {row['modality']} | {row['dices'][zero]:.4f} | {row['dices'][best]:.4f} "
                     f"| {borders[best]:+.2f} |")
    lines += ["", "| modality | n | mean Dice at 0 | mean best Dice | best borders mm |", "|---|---|---|---|---|"]
    for modality in sorted({row["modality"] for row in rows}):
        own = [row for row in rows if row["modality"] == modality]
        best_borders = ", ".join(f"{borders[int(np.argmax(row['dices']))]:+.2f}" for row in own)
        lines.append(f"| {modality} | {len(own)} | {np.mean([row['dices'][zero] for row in own]):.4f} "
                     f"| {np.mean([row['dices'].max() for row in own]):.4f} | {best_borders} |")
    lines += ["", f"All {len(rows)} cases: mean Dice {np.mean([row['dices'][zero] for row in rows]):.5f} at 0, "
              f"{np.mean([row['dices'].max() for row in rows]):.5f} with each scan's best border."]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
