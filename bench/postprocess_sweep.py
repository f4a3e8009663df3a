"""Dice on the shared real scans for each post-processing setting (border, opening).

Usage: python bench/postprocess_sweep.py [--borders 0,1] [--openings 0,3,5] [--model FILE] [--no-mirror-average]
       [--no-csf | --csf-fraction F[,F...]] [--focus MM] [--working-voxel MM[,MM...]] [--manifest CSV]
       [--tie DICE] [--name NAME]

Chooses the defaults of ``StripOptions`` from measurements, not taste: for every case of
../shared/data/eval and every setting, ``skullstrip.strip`` against the reference mask on
the native grid (the network is deterministic, so settings differ only in the cleaning;
it runs once per setting to measure exactly what users get). Writes
bench/results/NAME.md (mean, min and per modality per setting) and .csv; NAME is
postprocess_sweep unless ``--name`` gives another (e.g. for weights that are not shipped).
Every setting is measured with ``StripOptions.mirror_average`` (the test-time average of
the scan's and its left-right mirror's distances; on by default since session 39), or
without it with ``--no-mirror-average``; ``--no-csf`` the
network's other output, the brain without the CSF around it; ``--csf-fraction`` a surface
between the two (``StripOptions.csf_fraction``, one or several); ``--focus`` the half-size of
the second pass's box (``StripOptions.focus_mm``; 0: one pass); ``--working-voxel`` the
voxel sizes of the grid the network runs on (``StripOptions.working_voxel_mm``, one or
several: a finer grid shows the head larger to the network). ``--manifest`` measures
against other references than eval/'s (columns case, modality, image, mask), for example a
calibration set whose masks come from another tool. The last line of the report names the
chosen setting (``evaluate.choose_setting``): the highest mean Dice, with settings within
``--tie`` of it going to the one nearest the ``StripOptions`` defaults, working voxel
first, then CSF fraction.
"""

from __future__ import annotations

import argparse
import csv
import itertools
from pathlib import Path

import nibabel as nib
import numpy as np

from skullstrip.evaluate import binary_mask, choose_setting, mask_metrics, read_manifest
from skullstrip.infer import StripOptions, strip

SHARED = Path(__file__).resolve().parents[2] / "shared"
RESULTS = Path(__file__).parent / "results"
EVAL_MANIFEST = SHARED / "data" / "eval" / "manifest.csv"


def floats(text: str) -> list[float]:
    return [float(value) for value in text.split(",") if value.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--borders", default="0,1")
    parser.add_argument("--openings", default="0,3,5")
    parser.add_argument("--model")
    parser.add_argument("--mirror-average", action=argparse.BooleanOptionalAction,
                        default=StripOptions.mirror_average, help="average with the left-right mirror")
    surfaces = parser.add_mutually_exclusive_group()
    surfaces.add_argument("--no-csf", action="store_true", help="measure the no-CSF output (CSF fraction 0)")
    surfaces.add_argument("--csf-fraction", default=f"{StripOptions.csf_fraction:g}",
                          help="surfaces between the no-CSF (0) and brain+CSF (1) outputs, comma-separated")
    parser.add_argument("--focus", type=float, default=StripOptions.focus_mm, help="focus box half-size, mm")
    parser.add_argument("--working-voxel", default=f"{StripOptions.working_voxel_mm:g}",
                        help="voxel sizes (mm) of the network's grid, comma-separated")
    parser.add_argument("--manifest", type=Path, default=EVAL_MANIFEST, help="cases with reference masks")
    parser.add_argument("--tie", type=float, default=0.0005,
                        help="mean Dice differences this small count as ties, broken towards the defaults")
    parser.add_argument("--name", default="postprocess_sweep")
    args = parser.parse_args()
    fractions = [0.0] if args.no_csf else floats(args.csf_fraction)
    settings = list(itertools.product(floats(args.working_voxel), fractions, floats(args.borders),
                                      floats(args.openings)))
    rows = []
    for case in read_manifest(args.manifest):
        reference = nib.load(str(case.mask))
        ref_mask = binary_mask(reference)
        for voxel, fraction, border, opening in settings:
            result = strip(case.image, StripOptions(border_mm=border, opening_mm=opening, model_path=args.model,
                                                    mirror_average=args.mirror_average, csf_fraction=fraction,
                                                    focus_mm=args.focus, working_voxel_mm=voxel))
            metrics = mask_metrics(result.mask > 0, ref_mask, reference.header.get_zooms()[:3])
            rows.append({"case": case.case, "modality": case.modality, "working_voxel_mm": voxel,
                         "csf_fraction": fraction, "border_mm": border, "opening_mm": opening,
                         "dice": round(metrics["dice"], 4), "hd95_mm": round(metrics["hd95_mm"], 2)})
            print(f"{case.case:32s} working voxel {voxel:g} CSF fraction {fraction:g} border {border:g} "
                  f"opening {opening:g}: Dice {metrics['dice']:.4f}", flush=True)

    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / f"{args.name}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    modalities = sorted({row["modality"] for row in rows})
    lines = ["# Post-processing settings on the shared real scans"
             + ("" if args.manifest == EVAL_MANIFEST else f" ({args.manifest})"), "",
             f"Command: `python bench/postprocess_sweep.py --borders={args.borders} --openings {args.openings}`"
             + (f" `--model {args.model}`" if args.model else "")
             + ("" if args.mirror_average else " `--no-mirror-average`")
             + (" `--no-csf`" if args.no_csf else "")
             + (f" `--csf-fraction {args.csf_fraction}`"
                if not args.no_csf and fractions != [StripOptions.csf_fraction] else "")
             + (f" `--manifest {args.manifest}`" if args.manifest != EVAL_MANIFEST else "")
             + (f" `--focus {args.focus:g}`" if args.focus != StripOptions.focus_mm else "")
             + (f" `--working-voxel {args.working_voxel}`"
                if floats(args.working_voxel) != [StripOptions.working_voxel_mm] else "")
             + (f" `--name {args.name}`" if args.name != "postprocess_sweep" else ""), "",
             "| working voxel mm | CSF fraction | border mm | opening mm | mean Dice | min Dice | mean HD95 mm | "
             + " | ".join(modalities) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(modalities)]
    mean_dice = {}
    for setting in settings:
        voxel, fraction, border, opening = setting
        own = [r for r in rows
               if (r["working_voxel_mm"], r["csf_fraction"], r["border_mm"], r["opening_mm"]) == setting]
        dice = np.array([r["dice"] for r in own])
        mean = mean_dice[setting] = float(dice.mean())
        per_modality = [np.mean([r["dice"] for r in own if r["modality"] == m]) for m in modalities]
        lines.append(f"| {voxel:g} | {fraction:g} | {border:g} | {opening:g} | {mean:.4f} | {dice.min():.4f} | "
                     f"{np.mean([r['hd95_mm'] for r in own]):.2f} | "
                     + " | ".join(f"{value:.4f}" for value in per_modality) + " |")
    defaults = (StripOptions.working_voxel_mm, StripOptions.csf_fraction, StripOptions.border_mm,
                StripOptions.opening_mm)
    chosen = choose_setting(mean_dice, defaults, args.tie)
    voxel, fraction, border, opening = chosen
    lines += ["", f"Chosen: working voxel {voxel:g} mm, CSF fraction {fraction:g}, border {border:g} mm, "
              f"opening {opening:g} mm (mean Dice {mean_dice[chosen]:.4f}; the highest, with settings within "
              f"{args.tie:g} of it tied and going to the one nearest the defaults "
              f"({', '.join(f'{value:g}' for value in defaults)}), working voxel first, then CSF fraction)."]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
