"""Accuracy of the shipped model on the shared real scans, next to the peers' numbers.

Usage: python bench/eval_shared.py [--border MM] [--csf-fraction F] [--model FILE]

1. `skullstrip eval ../shared/data/eval/manifest.csv` into bench/results/eval_shared/
   (cases.csv, summary.md, dice.png, hd95.png; masks are not kept in the repo);
2. bench/results/eval_shared.md: that summary plus a per-modality comparison with the
   Dice the peers reach on the same cases (../shared/peers/README.md);
3. `skullstrip qc ../shared/data/qc/manifest.csv` into bench/results/qc_shared/ and the
   checks the model issue asks for (CT brain HU, already-stripped FLAIR kept, volumes),
   plus the batch report's shape check (a mask taller than long leaked into the neck).
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
from pathlib import Path

import numpy as np

from skullstrip.evaluate import evaluate_manifest, qc_manifest
from skullstrip.infer import options_with
from skullstrip.qc import MAX_HEIGHT_TO_LENGTH

SHARED = Path(__file__).resolve().parents[2] / "shared"
RESULTS = Path(__file__).parent / "results"


def peer_dice() -> dict[str, dict[str, str]]:
    """The per-modality Dice table of ../shared/peers/README.md, by method."""
    text = (SHARED / "peers" / "README.md").read_text()
    table = text[text.index("## Dice on"):]
    rows = [line for line in table.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    peers = {}
    for line in rows[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        peers[cells[0]] = dict(zip(header, cells))
    return peers


def comparison_lines(cases_csv: Path) -> list[str]:
    with cases_csv.open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["method"] == "skullstrip"]
    modalities = ["FLAIR", "PDw", "T1w", "T2w"]
    ours = {m: np.mean([float(r["dice"]) for r in rows if r["modality"] == m]) for m in modalities}
    dice = np.array([float(r["dice"]) for r in rows])
    lines = ["## Dice per modality against the peers (same 15 scans; peers from ../shared/peers/README.md)", "",
             "| method | " + " | ".join(modalities) + " | all (mean ± sd) | min | n |",
             "|---|" + "---|" * (len(modalities) + 3),
             "| **skullstrip** | " + " | ".join(f"{ours[m]:.3f}" for m in modalities)
             + f" | {dice.mean():.3f} ± {dice.std(ddof=1):.3f} | {dice.min():.3f} | {len(dice)} |"]
    for name, values in peer_dice().items():
        lines.append(f"| {name} | " + " | ".join(values.get(m, "–") for m in modalities)
                     + f" | {values.get('all (mean ± sd)', '–')} | {values.get('min', '–')} | {values.get('n', '–')} |")
    mindgrab = peer_dice().get("mindgrab", {})
    verdict = []
    for m in modalities:
        if re.match(r"^[0-9.]+$", mindgrab.get(m, "")):
            verdict.append(f"{m} {'≥' if ours[m] >= float(mindgrab[m]) else '<'} MindGrab")
    lines += ["", "Against MindGrab per modality: " + ", ".join(verdict) + ".", ""]
    return lines


def qc_lines(rows: list[dict]) -> list[str]:
    lines = ["## Scans without reference masks (../shared/data/qc)", "",
             "Overlays: bench/results/qc_shared/index.html. Checks of the model issue:", "",
             "| case | modality | brain volume (mL) | mean value inside mask | nonzero voxels kept | height / length "
             "| check |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        if row.get("error"):
            lines.append(f"| {row['case']} | {row['modality']} | failed: {row['error']} | | | | ✗ |")
            continue
        checks = []
        if row["case"] == "stripped_flair":
            checks.append("keeps ≥ 97% of nonzero: " + _tick(row["nonzero_kept"] >= 0.97))
        elif row["modality"] == "CT" and "template" not in row["case"]:
            checks.append("mean HU in 0–80: " + _tick(0 <= row["mean_inside"] <= 80))
        elif "template" not in row["case"] and not row["case"].startswith("spm_"):
            checks.append("volume in 900–2000 mL: " + _tick(900 <= row["volume_ml"] <= 2000))
        if "template" not in row["case"]:
            checks.append(f"height / length ≤ {MAX_HEIGHT_TO_LENGTH}: "
                          + _tick(row["height_to_length"] <= MAX_HEIGHT_TO_LENGTH))
        lines.append(f"| {row['case']} | {row['modality']} | {row['volume_ml']:.0f} | {row['mean_inside']:.1f} | "
                     f"{row['nonzero_kept']:.3f} | {row['height_to_length']:.2f} | {'; '.join(checks)} |")
    return lines + [""]


def _tick(passed: bool) -> str:
    return "✓" if passed else "✗"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--border", type=float, help="mask border (mm; default: the model's setting)")
    parser.add_argument("--csf-fraction", type=float, help="CSF fraction (0-1; default: the model's setting)")
    parser.add_argument("--model")
    args = parser.parse_args()
    out = RESULTS / "eval_shared"
    options = options_with(border_mm=args.border, csf_fraction=args.csf_fraction, model_path=args.model)
    evaluate_manifest(SHARED / "data" / "eval" / "manifest.csv", out, options=options)
    shutil.rmtree(out / "masks", ignore_errors=True)  # derived from the shared scans: not for the repo
    qc_rows = qc_manifest(SHARED / "data" / "qc" / "manifest.csv", RESULTS / "qc_shared", options=options)
    command = "python bench/eval_shared.py" + (f" --border {args.border}" if args.border is not None else "")
    command += f" --csf-fraction {args.csf_fraction}" if args.csf_fraction is not None else ""
    command += f" --model {args.model}" if args.model else ""
    text = [f"Command: `{command}` (border {options.border_mm} mm, CSF fraction {options.csf_fraction}; "
            "per-case rows in eval_shared/cases.csv)", ""]
    text += comparison_lines(out / "cases.csv")
    text += (out / "summary.md").read_text().splitlines()[1:]
    text += qc_lines(qc_rows)
    (RESULTS / "eval_shared.md").write_text("# Accuracy on the shared real scans\n\n" + "\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
