"""Where networks call non-brain "brain" on synthetic heads with necks (held-out subjects by default).

Usage: python bench/synthetic_leak.py [--model NAME=FILE ...] [--n 15] [--junction LOW,HIGH]
       [--modality MOD] [--mri-family FAMILY] [--p-low-contrast-t1 P] [--subjects WHICH] [--clean]
       [--csf-fraction F] [--border MM] [--target brain|nocsf] [--head-size F] [--eyes-fluid]
       [--name NAME]

The real head-and-neck scan showed masks running below the cerebellum into the neck; the
15 evaluation scans barely show it (their fields of view stop near the skull base). This
measures the same failure where the truth is known: the held-out BrainWeb subjects (the
last three, never trained on) with their synthetic necks, imaged by the training
generator at whole-head size with the head upright (no axis permutation, so "below" is
the voxel z axis) and with no crop shift, defacing, field-of-view cut or stripping. Each
model runs through ``skullstrip.strip`` (default border, CSF fraction and opening unless
``--border``/``--csf-fraction``), and the mask is compared with the generator's brain+CSF target:

- ``dice``;
- ``volume_ratio``: the mask's volume over the target's (over-reach above 1);
- ``near_ratio``: the same for the mask within 6 mm of the target only, i.e. where the
  surface lies, without the far leaks;
- ``far_ml``: mL called brain more than 6 mm outside the target (leaks, not edges);
- ``below_ml``: mL called brain below the target's lowest slice (the lower edge).

``--junction LOW,HIGH`` builds the necks with ``add_neck``'s ``junction_mm`` (no flat
plane where the label map ended), the necks of run16's recipe. ``--modality mri`` images
every sample as MRI instead of the modalities in turn, and ``--p-low-contrast-t1 1``
gives every MRI sample the clinical spin-echo T1w look (``synth.sample_low_contrast_t1``),
the look on which the networks over-reached on the real clinical T1w. ``--mri-family
flair`` (or t1, t1c, t2, pd) images every MRI sample in that named contrast with the
other random draws unchanged, so runs with different families see the same heads and
their ``near_ratio`` shows how the surface depends on the contrast. ``--subjects training``
images the first three BrainWeb subjects (trained on) instead: equal scores on both mean
the network underfits its own training distribution rather than failing to generalise.
``--clean`` turns off every corruption (thick slices, blur, noise, ghosting,
quantisation, bias field, gamma), so what is left is not the image's ambiguity.
``--target nocsf`` compares with the no-CSF target instead; with ``--csf-fraction 0
--border 0`` that measures the network's no-CSF output itself, whose volume ratio per
``--mri-family`` shows the split between contrasts where the anatomy is the same
(training/README.md, run45). ``--head-size F`` resizes every head by F (``synth.HeadSize``;
BrainWeb's brains are larger than most adults', whose brain+CSF is about 0.9 of theirs
in each direction), so the ratios show how the surfaces depend on the head's size.
``--eyes-fluid`` gives the heads fluid eyeballs (``synth.fluid_eyes``), CSF-bright on T2
as on real T2w scans; the eyes lie more than 6 mm outside the brain, so a network that
takes them shows it in ``far_ml`` (training/README.md, run51).

Writes bench/results/NAME.md and .csv (NAME: synthetic_leak unless ``--name``).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from skullstrip import synth
from skullstrip.infer import StripOptions, strip
from skullstrip.train import FAR_OUTSIDE_MM

SHARED = Path(__file__).resolve().parents[2] / "shared"
RESULTS = Path(__file__).parent / "results"
HELD_OUT_SUBJECTS = 3  # TrainConfig.validation_subjects of every recipe so far
FIRST_SEED = 2 * 10**9  # far from training (0..) and validation (10**9..) seeds
CLEAN = {"p_thick_slices": 0.0, "p_blur": 0.0, "noise_std": (0.0, 0.0), "p_ghosting": 0.0, "p_quantise": 0.0,
         "max_bias_log": 0.0, "gamma_log_std": 0.0}


def leak_metrics(mask: np.ndarray, sdt_brain: np.ndarray, voxel_ml: float) -> dict:
    """Dice, far-outside and below-the-brain volumes of ``mask`` against a target distance map."""
    truth = sdt_brain < 0
    lowest = int(np.nonzero(truth.any(axis=(0, 1)))[0].min())
    dice = 2 * (mask & truth).sum() / max(mask.sum() + truth.sum(), 1)
    return {"dice": round(float(dice), 4),
            "volume_ratio": round(float(mask.sum() / max(truth.sum(), 1)), 3),
            "near_ratio": round(float((mask & (sdt_brain <= FAR_OUTSIDE_MM)).sum() / max(truth.sum(), 1)), 3),
            "far_ml": round(float((mask & (sdt_brain > FAR_OUTSIDE_MM)).sum() * voxel_ml), 1),
            "below_ml": round(float(mask[:, :, :lowest].sum() * voxel_ml), 1)}


def whole_heads_config(clean: bool, **changes: object) -> synth.SynthConfig:
    """The generator at whole-head size, upright, with no crop shift, defacing, cut or stripping.

    ``clean`` also turns off every corruption (``CLEAN``); ``changes`` set other fields.
    """
    return synth.config_with(shape=(104, 112, 112), max_shift_mm=0, p_axis_permutation=0, p_fov_cut=0, p_deface=0,
                             p_skull_stripped=0, **(CLEAN if clean else {}), **changes)


def write_results(name: str, rows: list[dict], lines: list[str]) -> None:
    """bench/results/NAME.csv from the per-sample rows and NAME.md from the report's lines (printed too)."""
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / f"{name}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", action="append", default=[],
                        help="NAME=FILE of an exported network (repeatable); default: the shipped weights")
    parser.add_argument("--labels", default=str(SHARED / "data" / "labelmaps" / "brainweb"))
    parser.add_argument("--n", type=int, default=15)
    parser.add_argument("--junction", help="LOW,HIGH mm of add_neck's junction_mm (default: flat junction)")
    parser.add_argument("--modality", choices=synth.MODALITIES, help="image every sample as this modality")
    parser.add_argument("--mri-family", choices=list(synth.MRI_FAMILY_MEANS),
                        help="every MRI sample in this named contrast (same heads for every family)")
    parser.add_argument("--p-low-contrast-t1", type=float, default=0.0,
                        help="share of MRI samples in the clinical low-contrast T1w look")
    parser.add_argument("--subjects", choices=("held-out", "training"), default="held-out",
                        help="the held-out BrainWeb subjects or three that were trained on")
    parser.add_argument("--clean", action="store_true", help="no thick slices, blur, noise, bias or gamma")
    parser.add_argument("--csf-fraction", type=float, default=StripOptions.csf_fraction,
                        help="surface between the no-CSF (0) and brain+CSF (1) outputs; 1 with --border 0 "
                             "measures the brain+CSF output itself, the surface the target is")
    parser.add_argument("--border", type=float, default=StripOptions.border_mm, help="mask border, mm")
    parser.add_argument("--target", choices=("brain", "nocsf"), default="brain",
                        help="the generator's target the mask is compared with: brain+CSF or no-CSF")
    parser.add_argument("--head-size", type=float, help="resize every head by this factor (default: as drawn)")
    parser.add_argument("--eyes-fluid", action="store_true", help="fluid eyeballs (synth.fluid_eyes)")
    parser.add_argument("--name", default="synthetic_leak")
    args = parser.parse_args()
    models = dict(spec.split("=", 1) for spec in args.model) or {"shipped": None}
    junction = [int(v) for v in args.junction.split(",")] if args.junction else None

    paths = synth.brainweb_paths(args.labels)
    paths = paths[-HELD_OUT_SUBJECTS:] if args.subjects == "held-out" else paths[:HELD_OUT_SUBJECTS]
    anatomies = synth.load_anatomies(paths, neck_junction_mm=junction, eyes_fluid=args.eyes_fluid)
    config = whole_heads_config(args.clean, p_mri_family=1.0 if args.mri_family else 0.8,
                                mri_family=args.mri_family, p_low_contrast_t1=args.p_low_contrast_t1,
                                head_size_range=(args.head_size, args.head_size) if args.head_size else None)
    generator = synth.SyntheticHeads(anatomies, config)
    voxel_ml = config.voxel_mm**3 / 1000
    rows = []
    for index in range(args.n):
        modality = args.modality or synth.MODALITIES[index % len(synth.MODALITIES)]
        sample = generator.sample(FIRST_SEED + index, modality)
        for name, path in models.items():
            result = strip((sample.image, sample.affine), StripOptions(model_path=path, csf_fraction=args.csf_fraction,
                                                                    border_mm=args.border))
            rows.append({"sample": index, "anatomy": sample.anatomy, "modality": modality, "model": name,
                         **leak_metrics(result.mask > 0, getattr(sample, f"sdt_{args.target}"), voxel_ml)})
            print(rows[-1], flush=True)

    options = " ".join(sys.argv[1:])  # the command as given, so the file says how to remake it
    modalities = args.modality or f"modalities in turn ({', '.join(synth.MODALITIES)})"
    look = "".join([f", {args.p_low_contrast_t1:.0%} of MRI in the clinical low-contrast T1w look"
                    if args.p_low_contrast_t1 else "",
                    f", MRI as {args.mri_family}" if args.mri_family else "",
                    f", heads resized by {args.head_size:g}" if args.head_size else ""])
    lines = ["# Leaks on synthetic heads with necks", "",
             f"Command: `python bench/synthetic_leak.py {options}`", "",
             f"{args.n} samples of {HELD_OUT_SUBJECTS} {args.subjects} BrainWeb subjects, {modalities}{look}"
             + (", no corruptions" if args.clean else "") + ", "
             f"CSF fraction {args.csf_fraction:g}, border {args.border:g} mm, default opening, "
             f"against the {'brain+CSF' if args.target == 'brain' else 'no-CSF'} target. "
             f"volume: mask over target (near: within {FAR_OUTSIDE_MM:g} mm of it); "
             f"far: mL called brain more than "
             f"{FAR_OUTSIDE_MM:g} mm outside the target; below: mL below the target's lowest slice.", "",
             "| model | mean Dice | min Dice | volume (mean) | near volume (mean) | far mL (mean) | far mL (max) "
             "| below mL (mean) | below mL (max) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in models:
        own = [row for row in rows if row["model"] == name]
        dice, volume, near, far, below = (np.array([row[key] for row in own])
                                          for key in ("dice", "volume_ratio", "near_ratio", "far_ml", "below_ml"))
        lines.append(f"| {name} | {dice.mean():.3f} | {dice.min():.3f} | {volume.mean():.2f} | {near.mean():.2f} "
                     f"| {far.mean():.1f} | {far.max():.1f} "
                     f"| {below.mean():.1f} | {below.max():.1f} |")
    write_results(args.name, rows, lines)


if __name__ == "__main__":
    main()
