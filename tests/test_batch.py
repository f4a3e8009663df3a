"""Cohorts: BIDS discovery, resume, failure isolation, Dask equals serial, the QC page."""

from __future__ import annotations

import json
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

from skullstrip import batch
from skullstrip.cli import main
from skullstrip.infer import StripOptions

OPTIONS = StripOptions(border_mm=0, threads=1, flip_check=True)


@pytest.fixture(scope="module")
def bids_root(tmp_path_factory, phantom, phantom_world_affine):
    """sub-01 (T1w, FLAIR), sub-02/ses-1 (T1w, bold 4D), plus a derivatives folder to ignore."""
    root = tmp_path_factory.mktemp("bids")
    (root / "dataset_description.json").write_text('{"Name": "mini", "BIDSVersion": "1.9.0"}')
    data = np.round(phantom.image * 1000).astype(np.int16)
    files = {
        "sub-01/anat/sub-01_T1w.nii.gz": data,
        "sub-01/anat/sub-01_FLAIR.nii.gz": (data * 0.8).astype(np.int16),
        "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz": data[::-1].copy(),
        "sub-02/ses-1/func/sub-02_ses-1_task-rest_bold.nii.gz": np.stack([data] * 3, axis=-1),
        "derivatives/other/sub-01/anat/sub-01_T1w.nii.gz": data,
    }
    for relative, array in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.Nifti1Image(array, phantom_world_affine).to_filename(path)
    return root


def test_bids_discovery_and_filters(bids_root):
    everything = batch.discover([str(bids_root)])
    assert len(everything) == 4 and not any("derivatives" in str(p) for p in everything)
    t1 = batch.discover([str(bids_root)], modalities=["T1w"])
    assert {p.name for p in t1} == {"sub-01_T1w.nii.gz", "sub-02_ses-1_T1w.nii.gz"}
    assert [p.name for p in batch.discover([str(bids_root)], subjects=["sub-02"], modalities=["bold"])] == [
        "sub-02_ses-1_task-rest_bold.nii.gz"]
    assert batch.bids_entities(t1[1]) == {"sub": "02", "ses": "1", "suffix": "T1w"}


def test_glob_and_list_inputs(tmp_path, bids_root):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# scans\n{bids_root / 'sub-01/anat/sub-01_T1w.nii.gz'}\n\n")
    found = batch.discover([str(listing), str(bids_root / "sub-0*/anat/*FLAIR.nii.gz")])
    assert [p.name for p in found] == ["sub-01_T1w.nii.gz", "sub-01_FLAIR.nii.gz"]


def test_bids_derivatives_layout(tmp_path, bids_root):
    jobs = batch.plan_bids(batch.discover([str(bids_root)], modalities=["T1w"]), bids_root, tmp_path)
    relative = {str(j.mask.relative_to(tmp_path)) for j in jobs}
    assert "derivatives/skullstrip/sub-02/ses-1/anat/sub-02_ses-1_desc-brainT1w_mask.nii.gz" in relative
    stripped = {j.stripped.name for j in jobs}
    assert stripped == {"sub-01_desc-brain_T1w.nii.gz", "sub-02_ses-1_desc-brain_T1w.nii.gz"}


def test_flat_layout_refuses_collisions(tmp_path):
    with pytest.raises(ValueError, match="same outputs"):
        batch.plan_flat([tmp_path / "a" / "x.nii.gz", tmp_path / "b" / "x.nii.gz"], tmp_path)


def test_cli_batch_refuses_bad_options_before_writing(tmp_path, bids_root, capsys):
    out = tmp_path / "out"
    assert main(["batch", str(bids_root), "--out", str(out), "-q", "--csf-fraction", "2"]) == 1
    assert "csf_fraction" in capsys.readouterr().err and not out.exists()


def test_cli_bids_run_resume_and_failure(tmp_path, bids_root, capsys):
    root = tmp_path / "bids"
    shutil.copytree(bids_root, root)
    corrupt = root / "sub-03" / "anat" / "sub-03_T1w.nii.gz"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"\x1f\x8b not really gzip")
    arguments = [str(root), "--out", str(root), "--modality", "T1w,FLAIR", "-q", "--no-flip-check"]

    assert main(["batch", *arguments]) == 1  # one failure: non-zero exit, the rest done
    out = capsys.readouterr()
    assert "3 done" in out.out and "1 failed" in out.out and "sub-03_T1w.nii.gz" in out.err
    derivatives = root / "derivatives" / "skullstrip"
    masks = sorted(derivatives.rglob("*_desc-brain*_mask.nii.gz"))
    assert len(masks) == 3
    assert json.loads((derivatives / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    assert (derivatives / "qc" / "index.html").exists()

    # an interrupted case (no sidecar) is redone, complete ones are skipped
    sidecar = derivatives / "sub-01" / "anat" / "sub-01_desc-brainT1w_mask.json"
    sidecar.unlink()
    corrupt.unlink()
    assert main(["batch", *arguments]) == 0
    out = capsys.readouterr().out
    assert "1 done, 2 skipped" in out
    assert json.loads(sidecar.read_text())["complete"] is True


def test_dask_cluster_gives_the_serial_result(tmp_path, bids_root):
    distributed = pytest.importorskip("distributed")
    images = batch.discover([str(bids_root)], modalities=["T1w", "FLAIR"])
    serial_jobs = batch.plan_flat(images, tmp_path / "serial")
    dask_jobs = batch.plan_flat(images, tmp_path / "dask")
    for folder in ("serial", "dask"):
        (tmp_path / folder).mkdir()
    serial = batch.run_batch(serial_jobs, OPTIONS, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            on_dask = batch.run_batch(dask_jobs, OPTIONS, dask_scheduler=client, progress=False)
    assert [r.status for r in serial] == [r.status for r in on_dask] == ["done"] * 3
    for a, b in zip(serial_jobs, dask_jobs):
        np.testing.assert_array_equal(np.asanyarray(nib.load(a.mask).dataobj), np.asanyarray(nib.load(b.mask).dataobj))
    assert all("flip_dice" in r.diagnostics for r in serial)


def test_two_local_workers_match_one(tmp_path, bids_root):
    images = batch.discover([str(bids_root)], modalities=["T1w"])
    results = {}
    for n in (1, 2):
        folder = tmp_path / f"jobs{n}"
        folder.mkdir()
        jobs = batch.plan_flat(images, folder)
        records = batch.run_batch(jobs, StripOptions(border_mm=0, threads=1), n_jobs=n, progress=False)
        assert [r.status for r in records] == ["done", "done"]
        results[n] = [np.asanyarray(nib.load(j.mask).dataobj) for j in jobs]
    for a, b in zip(results[1], results[2]):
        np.testing.assert_array_equal(a, b)


def test_flags():
    record = batch.Record("x", "x.nii", "done", volume_ml=500.0,
                          diagnostics={"edge_fraction": 0.2, "uncertain_fraction": 0.01, "flip_dice": 0.5,
                                       "height_to_length": 1.08})
    assert batch.qc_flags(record) == ["volume", "fov-edge", "flip-disagreement", "taller-than-long"]
    fine = batch.Record("y", "y.nii", "done", volume_ml=1300.0,
                        diagnostics={"flip_dice": 0.99, "height_to_length": 0.8})
    assert batch.qc_flags(fine) == []


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed")
def test_report_renders_in_chromium(tmp_path):
    records = [batch.Record("case-a", "a.nii.gz", "done", 1250.0, 2.0, {"flip_dice": 0.99}),
               batch.Record("case-b", "b.nii.gz", "failed", error="cannot be read")]
    page = batch.write_report(records, tmp_path / "index.html")
    completed = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                               capture_output=True, text=True, timeout=120)
    assert "case-a" in completed.stdout and "failed: cannot be read" in completed.stdout
