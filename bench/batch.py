"""Cohort throughput: 20 scans with 1 and 2 local workers and through a Dask LocalCluster.

Usage: python bench/batch.py [--n 20]

The scans are generated 1 mm whole-head phantoms (176x208x176, int16), written once.
Each configuration strips all of them into a fresh folder (flip check on, as the batch
command's default); we report scans per minute and the peak RSS of the worker
processes (ru_maxrss of the children for the local pool, the Dask workers' own
reports for Dask). Writes bench/results/batch.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from skullstrip import batch, synth
from skullstrip.infer import StripOptions

RESULTS = Path(__file__).parent / "results"


def make_cohort(folder: Path, n: int) -> list[Path]:
    sample = synth.make_phantom(seed=4, voxel_mm=2.0, shape=(88, 104, 88))
    image = ndi.zoom(sample.image, 2, order=1)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -np.asarray(image.shape) / 2
    paths = []
    for index in range(n):
        path = folder / f"scan{index:02d}.nii.gz"
        scaled = np.round(image * (900 + 10 * index)).astype(np.int16)
        nib.Nifti1Image(scaled, affine).to_filename(path)
        paths.append(path)
    return paths


def _worker_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(paths: list[Path], out: Path, jobs: int, dask: bool) -> dict:
    out.mkdir()
    planned = batch.plan_flat(paths, out)
    options = StripOptions(flip_check=True)
    started = time.perf_counter()
    if dask:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            records = batch.run_batch(planned, options, dask_scheduler=client, progress=False)
            peak = max(client.run(_worker_peak_mb).values())
    else:
        records = batch.run_batch(planned, options, n_jobs=jobs, progress=False)
        peak = (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if jobs > 1
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024
    seconds = time.perf_counter() - started
    failed = sum(r.status != "done" for r in records)
    return {"seconds": seconds, "per_minute": len(paths) / seconds * 60, "peak_mb": peak, "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = make_cohort(folder, args.n)
        for label, jobs, dask in (("local, 1 worker", 1, False), ("local, 2 workers", 2, False),
                                  ("Dask LocalCluster, 2 workers x 1 thread", 2, True)):
            result = run(paths, folder / label.replace(" ", "_").replace(",", ""), jobs, dask)
            rows.append((label, result))
            print(label, result, flush=True)
    lines = ["# Cohort throughput", "",
             f"Command: `python bench/batch.py --n {args.n}` ({platform.machine()}, {os.cpu_count()} cores). "
             f"{args.n} generated 1 mm whole-head scans (176×208×176 int16), mask + stripped image + JSON + QC "
             "thumbnail per scan, flip check on (two model passes per scan).", "",
             "| configuration | wall time (s) | scans / minute | peak RSS of a worker (MB) | failed |",
             "|---|---|---|---|---|"]
    for label, r in rows:
        lines.append(f"| {label} | {r['seconds']:.1f} | {r['per_minute']:.1f} | {r['peak_mb']:.0f} | {r['failed']} |")
    lines += ["", "Local workers get `cores // jobs` threads each; Dask workers one thread each. The in-process run "
              "(1 worker) reports the peak of the whole benchmark process."]
    (RESULTS / "batch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
