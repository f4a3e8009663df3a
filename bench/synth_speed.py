"""Time the synthetic generator: seconds per training sample, per modality family.

Usage: python bench/synth_speed.py [--labels ../shared/data/labelmaps/brainweb] [--n 10]
                                   [--config training/runN/config.json]
Writes bench/results/synth_speed.md. Runs numpy/scipy on one core (the training worker's
budget); the target is <= 0.3 s for a 96^3 sample. ``--config`` times the generator
settings of a training recipe (its optional augmentations on) instead of the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from pathlib import Path

import numpy as np

from skullstrip import synth
from skullstrip.train import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--labels", help="BrainWeb label maps (default: procedural heads)")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--config", help="a training recipe whose generator settings to time")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "synth_speed.md"))
    args = parser.parse_args()

    recipe = TrainConfig.load(args.config) if args.config else TrainConfig()
    clock = time.perf_counter()
    anatomies = (synth.load_anatomies(synth.brainweb_paths(args.labels)[:2], recipe.atrophy_mm, recipe.neck_junction_mm,
                                      recipe.eyes_fluid)
                 if args.labels else synth.procedural_anatomies(2))
    load_seconds = (time.perf_counter() - clock) / len(anatomies)
    settings = recipe.synth_config()
    options = (f"--labels {args.labels} " if args.labels else "") + (f"--config {args.config} " if args.config else "")
    lines = ["# Synthetic generator speed", "",
             f"Command: `python bench/synth_speed.py {options}--n {args.n}`",
             f"Generator settings: {'those of ' + args.config if args.config else 'the defaults'}",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
             f"anatomy: {'BrainWeb' if args.labels else 'procedural'} "
             f"(preparing one anatomy: {load_seconds:.1f} s, once per worker)", "",
             "| sample shape | modality | mean s/sample | max s/sample |", "|---|---|---|---|"]
    for shape in ((80, 80, 80), (96, 96, 96)):
        generator = synth.SyntheticHeads(anatomies, dataclasses.replace(settings, shape=shape, shape_range=None))
        generator.sample(0)  # warm caches
        for modality in (*synth.MODALITIES, None):
            times = []
            for seed in range(args.n):
                clock = time.perf_counter()
                generator.sample(seed, modality)
                times.append(time.perf_counter() - clock)
            lines.append(f"| {shape[0]}³ | {modality or 'mixture'} | {np.mean(times):.3f} | {np.max(times):.3f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
