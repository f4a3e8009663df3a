"""One candidate's per-case Dice on the shared scans against other weights', paired.

Usage: python bench/compare_runs.py CANDIDATE.csv NAME=REFERENCE.csv [NAME=REFERENCE.csv ...]
       [--shipped NAME] [--margin 0.001] [--worst 0.905] [--out FILE.md]

The rule for replacing the shipped weights (training/README.md) is paired and
per case: the candidate's mean Dice may fall at most MARGIN below the shipped
weights', and when it is below at all a two-sided Wilcoxon signed-rank test over
the 15 cases must not call the difference (p >= 0.05); no case may fall below
WORST. Each CSV is the cases.csv that bench/eval_shared.py writes (only the
``skullstrip`` rows are used). For every reference this prints the mean, the worst
case and each modality's mean of both, how many cases the candidate wins, and the
Wilcoxon p (skullstrip.evaluate's, the test the evaluation reports use);
for the reference named by --shipped it also prints the Dice part of the verdict.
The QC part of the rule is read from bench/results/eval_shared.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from skullstrip.evaluate import paired_wilcoxon_p, read_case_csv

MODALITIES = ["FLAIR", "PDw", "T1w", "T2w"]


def dice_by_case(path: Path) -> dict[str, tuple[str, float]]:
    """{case: (modality, Dice)} of the ``skullstrip`` rows of one cases.csv."""
    return {r["case"]: (r["modality"], r["dice"]) for r in read_case_csv(path) if r["method"] == "skullstrip"}


def comparison(candidate: dict[str, tuple[str, float]], reference: dict[str, tuple[str, float]],
               name: str) -> tuple[list[str], float]:
    """A markdown table of both runs and the paired test; returns it and the Wilcoxon p."""
    cases = sorted(set(candidate) & set(reference))
    if len(cases) != len(candidate) or len(cases) != len(reference):
        raise SystemExit(f"the candidate and {name} were not measured on the same cases")
    lines = [f"## candidate against {name}", "", "| run | " + " | ".join(MODALITIES) + " | mean | worst |",
             "|---|" + "---|" * (len(MODALITIES) + 2)]
    for method, run in (("candidate", candidate), (name, reference)):
        per_modality = [np.mean([run[c][1] for c in cases if run[c][0] == m]) for m in MODALITIES]
        values = [run[c][1] for c in cases]
        lines.append(f"| {method} | " + " | ".join(f"{v:.4f}" for v in per_modality)
                     + f" | {np.mean(values):.5f} | {min(values):.4f} |")
    wins = sum(candidate[c][1] > reference[c][1] for c in cases)
    p = paired_wilcoxon_p([candidate[c][1] - reference[c][1] for c in cases])
    lines += ["", f"The candidate is higher on {wins} of {len(cases)} cases; "
              f"two-sided Wilcoxon signed-rank p = {p:.3g}.", ""]
    return lines, p


def verdict(candidate: dict[str, tuple[str, float]], shipped: dict[str, tuple[str, float]], p: float,
            margin: float, worst: float) -> list[str]:
    """The Dice part of the replacement rule, each condition with its numbers."""
    mean = float(np.mean([d for _, d in candidate.values()]))
    shipped_mean = float(np.mean([d for _, d in shipped.values()]))
    low = min(d for _, d in candidate.values())
    checks = [(f"mean {mean:.5f} ≥ shipped {shipped_mean:.5f} − {margin} = {shipped_mean - margin:.5f}",
               mean >= shipped_mean - margin),
              (f"below the shipped mean, so p = {p:.3g} must be ≥ 0.05" if mean < shipped_mean
               else "not below the shipped mean, so no test is needed", mean >= shipped_mean or p >= 0.05),
              (f"worst case {low:.4f} ≥ {worst}", low >= worst)]
    lines = ["## Dice part of the rule", ""] + [f"- {'pass' if ok else 'FAIL'}: {text}" for text, ok in checks]
    return lines + ["", f"Dice part: {'passes' if all(ok for _, ok in checks) else 'fails'}.", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidate", type=Path)
    parser.add_argument("references", nargs="+", metavar="NAME=CSV")
    parser.add_argument("--shipped", help="the reference that stands for the shipped weights")
    parser.add_argument("--margin", type=float, default=0.001)
    parser.add_argument("--worst", type=float, default=0.905)
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args()

    references = dict(entry.partition("=")[::2] for entry in args.references)
    malformed = [name for name, path in references.items() if not path]
    if malformed:
        raise SystemExit(f"a reference is NAME=CSV, not {malformed[0]!r}")
    if args.shipped is not None and args.shipped not in references:
        raise SystemExit(f"--shipped {args.shipped!r} names none of the references {list(references)}")
    candidate = dice_by_case(args.candidate)
    lines = [f"# {args.candidate} against other weights, paired by case", ""]
    for name, path in references.items():
        reference = dice_by_case(Path(path))
        table, p = comparison(candidate, reference, name)
        lines += table
        if name == args.shipped:
            lines += verdict(candidate, reference, p, args.margin, args.worst)
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
