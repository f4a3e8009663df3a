"""Two sets of weights side by side on chosen shared scans: pictures and volumes by region.

Usage: python bench/compare_masks.py --model A=FILE[,FIELD=VALUE...] --model B=FILE [--focus MM] [--border MM]
       [--case NAME ...] [--name NAME]

The check by eye in the rule for replacing the shipped weights ("the overlays right
beside the shipped model's") needs the same slices for both models, at the places
where a new model has gone wrong before: the temporal poles and the skull base.
For each case (of ../shared/data/eval or ../shared/data/qc) this draws, in RAS, three
coronal slices through the front half of the brain (temporal poles, sphenoid, orbits),
the midline sagittal slice and an axial slice through the lowest third, each with
every model's outline (and the reference mask's, when the case has one, in white).
A table gives each mask's volume and the part of it in the lowest, middle and top
third of the first model's brain height, so a cut pole or a leak shows as a number.
A model's entry may set its own post-processing after the file (``csf_fraction`` or
``border_mm``, e.g. ``--model old=shipped,csf_fraction=1,border_mm=-1.5``), so that weights
can be compared at the settings each ships with.
Writes bench/results/compare/NAME_CASE.png and bench/results/compare/NAME.md.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import matplotlib
import nibabel as nib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

from skullstrip.evaluate import binary_mask, read_manifest
from skullstrip.infer import StripOptions, strip

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results" / "compare"
COLOURS = ["lime", "red", "deepskyblue", "gold"]
DEFAULT_CASES = ["vsseg_t1c", "head_neck_t1", "robex_atlas_t1", "openms_patient01_study2_t1w"]
CORONAL_FRACTIONS = (0.55, 0.65, 0.75)  # of the brain's posterior-to-anterior extent
PER_MODEL_FIELDS = ("csf_fraction", "border_mm")


def find_case(name: str) -> tuple[Path, Path | None]:
    """Image and (for eval cases) reference mask of a named shared case."""
    for manifest in (SHARED / "eval" / "manifest.csv", SHARED / "qc" / "manifest.csv"):
        for case in read_manifest(manifest):
            if case.case == name:
                return case.image, case.mask
    raise SystemExit(f"no case {name!r} in {SHARED}/eval or {SHARED}/qc")


def thirds_ml(mask: np.ndarray, low: int, high: int, voxel_ml: float) -> list[float]:
    """Volume (mL) of a RAS mask in the lowest, middle and top third of rows ``low..high``."""
    edges = np.linspace(low, high + 1, 4).round().astype(int)
    per_slice = mask.sum(axis=(0, 1)) * voxel_ml
    return [float(per_slice[:edges[1]].sum()), float(per_slice[edges[1]:edges[2]].sum()),
            float(per_slice[edges[2]:].sum())]


def compare_case(name: str, models: list[tuple[str, StripOptions]], picture: Path) -> list[str]:
    """Draw one case's outlines into ``picture``; its rows of the volume table."""
    image_path, reference_path = find_case(name)
    image = nib.as_closest_canonical(nib.load(str(image_path)))
    volume = np.asarray(image.dataobj, dtype=np.float32)
    if volume.ndim == 4:
        volume = volume.mean(axis=3)
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=float)
    voxel_ml = float(np.prod(zooms)) / 1000.0
    outlines = []
    if reference_path is not None:
        outlines.append(("reference", "white", binary_mask(nib.as_closest_canonical(nib.load(str(reference_path))))))
    for (label, options), colour in zip(models, COLOURS):
        result = strip((volume, image.affine), options)
        outlines.append((label, colour, result.mask > 0))

    first = outlines[1 if reference_path is not None else 0][2]
    ys, zs = np.where(first.any(axis=(0, 2)))[0], np.where(first.any(axis=(0, 1)))[0]
    x_mid = int(round(np.argwhere(first)[:, 0].mean()))
    views = [("coronal", 1, int(ys.min() + f * (ys.max() - ys.min()))) for f in CORONAL_FRACTIONS]
    views += [("sagittal", 0, x_mid), ("axial", 2, int(zs.min() + 0.2 * (zs.max() - zs.min())))]
    figure, axes = plt.subplots(1, len(views), figsize=(4.2 * len(views), 4.6))
    low, high = np.percentile(volume[np.isfinite(volume)], (1, 99.5))
    for ax, (plane, axis, index) in zip(axes, views):
        cut = [slice(None)] * 3
        cut[axis] = index
        row_mm, col_mm = np.delete(zooms, axis)[::-1]
        ax.imshow(np.rot90(volume[tuple(cut)]), cmap="gray", vmin=low, vmax=high, aspect=row_mm / col_mm,
                  interpolation="nearest")
        for _, colour, mask in outlines:
            section = np.rot90(mask[tuple(cut)])
            if section.any() and not section.all():
                ax.contour(section, levels=[0.5], colors=colour, linewidths=0.9)
        ax.set_title(f"{plane} {index}", fontsize=9, color="white")
        ax.set_axis_off()
    figure.suptitle(f"{name}: " + ", ".join(f"{label} ({colour})" for label, colour, _ in outlines),
                    fontsize=9, color="white")
    figure.tight_layout()
    figure.savefig(picture, dpi=75, facecolor="black")
    plt.close(figure)

    rows = []
    for label, _, mask in outlines:
        parts = thirds_ml(mask, int(zs.min()), int(zs.max()), voxel_ml)
        rows.append(f"| {name} | {label} | {mask.sum() * voxel_ml:.0f} | "
                    + " | ".join(f"{part:.0f}" for part in parts) + " |")
    return rows


def model_options(entry: str, common: StripOptions) -> tuple[str, StripOptions]:
    """``LABEL=FILE[,FIELD=VALUE...]`` as a label and that model's options."""
    label, _, rest = entry.partition("=")
    path, *settings = rest.split(",")
    overrides: dict[str, object] = {"model_path": None if path in ("", "shipped") else path}
    for setting in settings:
        field, _, value = setting.partition("=")
        if field not in PER_MODEL_FIELDS:
            raise SystemExit(f"{entry}: a model may set {' or '.join(PER_MODEL_FIELDS)}, not {field!r}")
        overrides[field] = float(value)
    return label, dataclasses.replace(common, **overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", action="append", required=True, metavar="LABEL=FILE[,FIELD=VALUE...]",
                        help="weights to compare (LABEL=shipped for the package's own), with optional "
                             "csf_fraction= and border_mm= for this model alone")
    parser.add_argument("--case", action="append", help=f"shared case name (default: {' '.join(DEFAULT_CASES)})")
    parser.add_argument("--border", type=float, default=StripOptions.border_mm)
    parser.add_argument("--focus", type=float, default=StripOptions.focus_mm)
    parser.add_argument("--threads", type=int, help="CPU threads (default: all)")
    parser.add_argument("--name", default="compare")
    args = parser.parse_args()
    if len(args.model) > len(COLOURS):
        raise SystemExit(f"at most {len(COLOURS)} models")
    common = StripOptions(border_mm=args.border, focus_mm=args.focus, threads=args.threads)
    models = [model_options(entry, common) for entry in args.model]
    lines = ["# Masks side by side", "",
             "Command: `python bench/compare_masks.py " + " ".join(f"--model {m}" for m in args.model)
             + "".join(f" --case {c}" for c in args.case or [])
             + f" --border={args.border:g} --focus {args.focus:g} --name {args.name}`", "",
             "Volumes in mL; thirds of the first model's brain height, from the bottom.", "",
             "| case | mask | volume | lowest third | middle third | top third |", "|---|---|---|---|---|---|"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.case or DEFAULT_CASES:
        picture = RESULTS / f"{args.name}_{name}.png"
        lines += compare_case(name, models, picture)
        print(f"{name}: {picture}", flush=True)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
