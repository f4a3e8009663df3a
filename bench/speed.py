"""End-to-end speed and peak memory of the `skullstrip` command, with a stage breakdown.

Usage: python bench/speed.py [--real ../shared/data/qc/cases/brainchop_t1/image.nii.gz]
                             [--model WEIGHTS.onnx --name speed_NAME]

Each input is stripped by a fresh `skullstrip` process (process start to files written)
under /usr/bin/time, which reports wall time and peak RSS; the JSON sidecar gives the
stage breakdown. Inputs: a 256^3 1 mm real T1 (skipped if absent), a generated 256^3
1 mm phantom, a 512^3 0.5 mm phantom, and a 4D 64x64x40x60 fMRI-like series.
Writes bench/results/speed.md and speed.csv (``--name`` changes the stem: to time other
weights on the same machine in the same session, since this machine's speed varies between
sessions by tens of percent).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from skullstrip import synth

RESULTS = Path(__file__).parent / "results"
SHARED_QC = Path(__file__).resolve().parents[2] / "shared" / "data" / "qc" / "cases"
DEFAULT_REAL = SHARED_QC / "brainchop_t1" / "image.nii.gz"


def phantom_file(folder: Path, voxel_mm: float, shape: tuple[int, int, int], name: str) -> Path:
    """A whole-head phantom generated at 2 mm and resampled to the requested grid (int16)."""
    sample = synth.make_phantom(seed=1, voxel_mm=2.0, shape=(96, 112, 104))
    zoom = [n / s for n, s in zip(shape, sample.image.shape)]
    image = ndi.zoom(sample.image, zoom, order=1)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = -np.asarray(shape) * voxel_mm / 2
    path = folder / f"{name}.nii.gz"
    nib.Nifti1Image(np.round(image * 1000).astype(np.int16), affine).to_filename(path)
    return path


def fmri_file(folder: Path) -> Path:
    sample = synth.make_phantom(seed=2, voxel_mm=3.0, shape=(64, 64, 40), modality="epi")
    rng = np.random.default_rng(0)
    series = np.stack([sample.image * (1 + 0.01 * rng.standard_normal()) for _ in range(60)], axis=-1)
    affine = np.diag([3.0, 3.0, 3.5, 1.0])
    path = folder / "fmri_64x64x40x60.nii.gz"
    nib.Nifti1Image(np.round(series * 1000).astype(np.int16), affine).to_filename(path)
    return path


def timed_strip(image: Path, folder: Path, options: list[str]) -> dict:
    mask = folder / f"{image.name.split('.')[0]}_mask.nii.gz"
    stripped = folder / f"{image.name.split('.')[0]}_brain.nii.gz"
    sidecar = folder / f"{image.name.split('.')[0]}.json"
    command = ["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "skullstrip.cli", "-i", str(image),
               "-m", str(mask), "-o", str(stripped), "--json", str(sidecar), "--force", "-q", *options]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    wall, peak_kb = completed.stderr.strip().splitlines()[-1].split()
    stages = json.loads(sidecar.read_text())["stage_seconds"]
    return {"wall_s": float(wall), "peak_rss_mb": int(peak_kb) / 1024, **stages}


def import_cost() -> dict:
    code = "import time; t=time.perf_counter(); import skullstrip.infer, onnxruntime; print(time.perf_counter()-t)"
    completed = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-c", code], capture_output=True,
                               text=True, check=True)
    return {"import_s": float(completed.stdout.strip()), "import_rss_mb": int(completed.stderr.split()[-1]) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--real", default=str(DEFAULT_REAL))
    parser.add_argument("--repeats", type=int, default=2, help="runs per input; the best is reported")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", default=None, help="ONNX weights to time instead of the shipped ones")
    parser.add_argument("--name", default="speed", help="stem of the result files in bench/results")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    options = (["-t", str(args.threads)] if args.threads else []) + (["--model", args.model] if args.model else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        inputs = []
        if Path(args.real).exists():
            inputs.append(("real T1 256³ 1 mm (brainchop_t1)", Path(args.real)))
        inputs.append(("phantom 256³ 1 mm", phantom_file(folder, 1.0, (256, 256, 256), "phantom_1mm")))
        inputs.append(("phantom 512³ 0.5 mm", phantom_file(folder, 0.5, (512, 512, 512), "phantom_05mm")))
        inputs.append(("fMRI 64×64×40×60", fmri_file(folder)))
        imports = import_cost()
        for label, path in inputs:
            runs = [timed_strip(path, folder, options) for _ in range(args.repeats)]
            best = min(runs, key=lambda r: r["wall_s"])
            rows.append({"input": label, **best, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)})
            print(rows[-1], flush=True)
    stages = ["load", "conform", "model", "postprocess", "resample_back", "intensity_rules", "write"]
    command = " ".join(["python bench/speed.py", *sys.argv[1:]])
    lines = ["# skullstrip speed and memory", "",
             f"Command: `{command}` ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
             f"{os.cpu_count()} cores, ONNX Runtime threads: {args.threads or 'all cores'}, "
             f"best of {args.repeats} runs, peak RSS the largest)", "",
             f"Start-up: `import skullstrip.infer, onnxruntime` takes {imports['import_s']:.2f} s and "
             f"{imports['import_rss_mb']:.0f} MB.", "",
             "| input | wall time (s) | peak RSS (MB) | " + " | ".join(stages) + " |",
             "|---|---|---|" + "---|" * len(stages)]
    for row in rows:
        lines.append(f"| {row['input']} | {row['wall_s']:.2f} | {row['peak_rss_mb']:.0f} | "
                     + " | ".join(f"{row.get(s, 0):.2f}" for s in stages) + " |")
    lines += ["", "Wall time is the whole process (Python start, imports, model load, all outputs written: mask, "
              "stripped image, JSON). Stage columns are seconds inside the process."]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    with (RESULTS / f"{args.name}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["input", "wall_s", "peak_rss_mb", *stages])
        writer.writeheader()
        writer.writerows({k: row.get(k) for k in ["input", "wall_s", "peak_rss_mb", *stages]} for row in rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
