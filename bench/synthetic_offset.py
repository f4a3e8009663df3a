"""How far out or in networks place the whole surface of synthetic heads, per MRI contrast.

Usage: python bench/synthetic_offset.py [--model NAME=FILE ...] [--families t1,t2,flair,pd]
       [--n 4] [--subjects WHICH] [--clean] [--marrow 0.05,0.5,0.8] [--thick-skull 4,6]
       [--name NAME]

The raw network, without any post-processing, on whole synthetic heads of the training
generator (upright, no crop shift, defacing, field-of-view cut or stripping; the heads of
``bench/synthetic_leak.py``), every MRI sample in one named contrast so the families see
the same heads. Per sample and output it takes ``train.surface_offset``: the mean signed
error of the predicted distances within ``train.OFFSET_BAND_MM`` of the true surface
(negative: the surface lies outside the truth, a mask too big), and the predicted volume
over the target's. On the training subjects (``--subjects training``) without corruption
(``--clean``), an offset that depends on the contrast is an underfit of the network's own
training distribution, the one ``TrainConfig.surface_offset_weight`` pays for.

``--marrow`` repeats every family with the skull's marrow at each given intensity
(``synth.MarrowContrast``; the same heads, only the marrow changes), and ``--thick-skull
LOW,HIGH`` grows every skull by LOW to HIGH mm (``synth.SkullThickening``), to see how the
surface depends on the bone's look.

Writes bench/results/NAME.md and .csv (NAME: synthetic_offset unless ``--name``).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from synthetic_leak import FIRST_SEED, HELD_OUT_SUBJECTS, SHARED, whole_heads_config, write_results

from skullstrip import synth
from skullstrip.infer import load_model
from skullstrip.model import DISTANCE_SCALE_MM
from skullstrip.train import OFFSET_BAND_MM, surface_offset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", action="append", default=[],
                        help="NAME=FILE of a network (.onnx or .pt, repeatable); default: the shipped weights")
    parser.add_argument("--labels", default=str(SHARED / "data" / "labelmaps" / "brainweb"))
    parser.add_argument("--families", default="t1,t2,flair,pd", help="named MRI contrasts, comma-separated")
    parser.add_argument("--n", type=int, default=4, help="samples per family")
    parser.add_argument("--subjects", choices=("held-out", "training"), default="training")
    parser.add_argument("--clean", action="store_true", help="no thick slices, blur, noise, bias or gamma")
    parser.add_argument("--marrow", help="marrow intensities to set, comma-separated (default: the family's own)")
    parser.add_argument("--thick-skull", help="LOW,HIGH: grow every skull by LOW to HIGH mm")
    parser.add_argument("--name", default="synthetic_offset")
    args = parser.parse_args()
    models = dict(spec.split("=", 1) for spec in args.model) or {"shipped": None}
    families = [name.strip() for name in args.families.split(",")]
    unknown = set(families) - set(synth.MRI_FAMILY_MEANS)
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}; choose from {list(synth.MRI_FAMILY_MEANS)}")

    paths = synth.brainweb_paths(args.labels)
    paths = paths[-HELD_OUT_SUBJECTS:] if args.subjects == "held-out" else paths[:HELD_OUT_SUBJECTS]
    anatomies = synth.load_anatomies(paths)
    bone: dict[str, object] = {}
    if args.thick_skull:
        low, high = (int(value) for value in args.thick_skull.split(","))
        bone.update(p_skull_thickening=1.0, skull_thickening_mm=(low, high))
    marrows: list[float | None] = [float(value) for value in args.marrow.split(",")] if args.marrow else [None]
    cases = [(family, marrow) for family in families for marrow in marrows]
    rows = []
    for family, marrow in cases:
        set_marrow = {} if marrow is None else {"p_marrow_contrast": 1.0, "marrow_contrast_range": (marrow, marrow)}
        config = whole_heads_config(args.clean, p_mri_family=1.0, mri_family=family, **bone, **set_marrow)
        generator = synth.SyntheticHeads(anatomies, config)
        for index in range(args.n):
            sample = generator.sample(FIRST_SEED + index, "mri")
            target = torch.from_numpy(np.stack([sample.sdt_brain, sample.sdt_nocsf]))[None]
            for name, path in models.items():
                distances = load_model(path).predict(sample.image)  # (2, X, Y, Z) mm, positive outside
                offset = surface_offset(torch.from_numpy(distances / DISTANCE_SCALE_MM)[None], target)[0]
                volumes = [(distances[c] < 0).sum() / max((target[0, c] < 0).sum().item(), 1) for c in range(2)]
                rows.append({"model": name, "family": family, "marrow": "own" if marrow is None else marrow,
                             "sample": index, "anatomy": sample.anatomy,
                             "offset_mm": round(float(offset[0]) * DISTANCE_SCALE_MM, 2),
                             "volume_ratio": round(float(volumes[0]), 3),
                             "offset_nocsf_mm": round(float(offset[1]) * DISTANCE_SCALE_MM, 2),
                             "volume_ratio_nocsf": round(float(volumes[1]), 3)})
                print(rows[-1], flush=True)

    lines = ["# Surface offsets of the raw network on synthetic heads, per MRI contrast", "",
             f"Command: `python bench/synthetic_offset.py {' '.join(sys.argv[1:])}`", "",
             f"{args.n} samples per family of {HELD_OUT_SUBJECTS} {args.subjects} BrainWeb subjects"
             + (", no corruptions" if args.clean else ", with the generator's corruptions")
             + (f", skulls grown by {args.thick_skull.replace(',', '-')} mm" if args.thick_skull else "")
             + f". Offset: mean signed distance error within {OFFSET_BAND_MM:g} mm of the true surface, mm "
             "(negative: surface outside, mask too big), mean over samples (and the range); volume: "
             "predicted over target, before any post-processing.", "",
             "| model | family | marrow | brain+CSF offset mm | range | volume | no-CSF offset mm | volume |",
             "|---|---|---|---|---|---|---|---|"]
    for name in models:
        for family, marrow in cases:
            shown = "own" if marrow is None else marrow
            own = [row for row in rows if row["model"] == name and row["family"] == family and row["marrow"] == shown]
            offsets = np.array([row["offset_mm"] for row in own])
            lines.append(f"| {name} | {family} | {shown} | {offsets.mean():+.2f} "
                         f"| {offsets.min():+.1f} … {offsets.max():+.1f} "
                         f"| {np.mean([row['volume_ratio'] for row in own]):.3f} "
                         f"| {np.mean([row['offset_nocsf_mm'] for row in own]):+.2f} "
                         f"| {np.mean([row['volume_ratio_nocsf'] for row in own]):.3f} |")
    write_results(args.name, rows, lines)


if __name__ == "__main__":
    main()
