"""Metrics against hand-computed cases, reports, and the real-scan evaluation when present."""

from __future__ import annotations

import csv
import math

import nibabel as nib
import numpy as np
import pytest

from skullstrip import evaluate
from tests.conftest import SHARED_DATA, needs_shared


def cube(shape=(40, 40, 40), low=10, high=30, shift=(0, 0, 0)):
    mask = np.zeros(shape, bool)
    lo = [low + s for s in shift]
    mask[lo[0] : high + shift[0], lo[1] : high + shift[1], lo[2] : high + shift[2]] = True
    return mask


def test_identical_masks():
    m = evaluate.mask_metrics(cube(), cube(), (1, 1, 1))
    assert m["dice"] == 1 and m["jaccard"] == 1 and m["hd95_mm"] == 0 and m["assd_mm"] == 0
    assert m["volume_diff_ml"] == 0 and m["fp_ml"] == 0 and m["fn_ml"] == 0


def test_cube_shifted_by_known_millimetres():
    # a 20^3 cube shifted by 2 voxels along x: overlap 18*20*20
    m = evaluate.mask_metrics(cube(shift=(2, 0, 0)), cube(), (1.5, 1, 1))
    assert m["dice"] == pytest.approx(18 / 20)
    assert m["jaccard"] == pytest.approx(18 / 22)
    assert m["fp_ml"] == pytest.approx(2 * 20 * 20 * 1.5 / 1000)
    assert m["fn_ml"] == pytest.approx(m["fp_ml"])
    assert m["volume_diff_ml"] == pytest.approx(0)
    assert m["hd95_mm"] == pytest.approx(3.0)  # the x-faces move by 2 voxels of 1.5 mm


def test_anisotropic_spacing_counts_in_millimetres():
    a, b = cube(), cube(shift=(0, 0, 1))
    along_thick = evaluate.mask_metrics(a, b, (1, 1, 4))["hd95_mm"]
    along_thin = evaluate.mask_metrics(a, b, (4, 1, 1))["hd95_mm"]
    assert along_thick == pytest.approx(4.0) and along_thin == pytest.approx(1.0)


def test_sphere_radius_difference():
    grid = np.indices((61, 61, 61)) - 30
    radius = np.sqrt((grid**2).sum(axis=0))
    small, large = radius <= 20, radius <= 23
    m = evaluate.mask_metrics(small, large, (1, 1, 1))
    assert m["assd_mm"] == pytest.approx(3.0, abs=0.6)
    assert m["hd95_mm"] == pytest.approx(3.0, abs=1.0)
    assert m["volume_diff_pct"] == pytest.approx(100 * ((20 / 23) ** 3 - 1), abs=2)


def test_empty_masks_are_defined():
    empty = np.zeros((10, 10, 10), bool)
    both = evaluate.mask_metrics(empty, empty, (1, 1, 1))
    assert both["dice"] == 1 and both["hd95_mm"] == 0
    one = evaluate.mask_metrics(empty, cube((10, 10, 10), 2, 8), (1, 1, 1))
    assert one["dice"] == 0 and math.isnan(one["hd95_mm"]) and one["fn_ml"] == pytest.approx(0.216)


def test_grids_are_matched_or_refused():
    reference = nib.Nifti1Image(cube().astype(np.uint8), np.eye(4))
    same = nib.Nifti1Image(cube().astype(np.uint8), np.eye(4))
    assert evaluate.on_reference_grid(same, reference).sum() == cube().sum()
    shifted_affine = np.eye(4)
    shifted_affine[0, 3] = 5.0
    with pytest.raises(evaluate.GridMismatchError, match="more than one voxel"):
        evaluate.on_reference_grid(nib.Nifti1Image(cube().astype(np.uint8), shifted_affine), reference)
    # a 2x coarser grid covering the same space is resampled with nearest neighbour
    coarse_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    coarse_affine[:3, 3] = 0.5
    coarse = nib.Nifti1Image(cube((20, 20, 20), 5, 15).astype(np.uint8), coarse_affine)
    moved = evaluate.on_reference_grid(coarse, reference)
    assert evaluate.mask_metrics(moved, cube(), (1, 1, 1))["dice"] > 0.95


def test_report_with_two_methods(tmp_path):
    rng = np.random.default_rng(0)
    rows_csv = tmp_path / "manifest.csv"
    folders = {name: tmp_path / name for name in ("good", "worse")}
    for folder in folders.values():
        folder.mkdir()
    with rows_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "modality", "image", "mask"])
        for index in range(6):
            case = f"case{index}"
            truth = cube(shift=tuple(rng.integers(-2, 3, 3)))
            nib.Nifti1Image(truth.astype(np.uint8), np.eye(4)).to_filename(tmp_path / f"{case}_mask.nii.gz")
            nib.Nifti1Image(truth.astype(np.uint8), np.eye(4)).to_filename(folders["good"] / f"{case}.nii.gz")
            worse = np.roll(truth, 1 + index % 3, axis=0)
            nib.Nifti1Image(worse.astype(np.uint8), np.eye(4)).to_filename(folders["worse"] / f"{case}.nii.gz")
            writer.writerow([case, "T1w" if index % 2 else "T2w", f"{case}_mask.nii.gz", f"{case}_mask.nii.gz"])
    rows = evaluate.evaluate_manifest(rows_csv, tmp_path / "report", folders, run_model=False, progress=False)
    assert len(rows) == 12
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "| good | 1.000 ± 0.000 (1.000) | 1.000 ± 0.000 (1.000) |" in summary
    assert "Wilcoxon" in summary and "| good | worse | all | 6 |" in summary
    for name in ("cases.csv", "dice.png", "hd95.png"):
        assert (tmp_path / "report" / name).stat().st_size > 100
    assert len(evaluate.read_case_csv(tmp_path / "report" / "cases.csv")) == 12


def test_paired_wilcoxon_p():
    # Six differences of one sign: the exact two-sided p is 2 / 2**6.
    assert evaluate.paired_wilcoxon_p([0.01, 0.02, 0.03, 0.04, 0.05, 0.06]) == pytest.approx(2 / 64)
    assert evaluate.paired_wilcoxon_p([-0.01, -0.02, -0.03, -0.04, -0.05, -0.06]) == pytest.approx(2 / 64)
    # Balanced signs are no evidence at all; identical runs have nothing to test.
    assert evaluate.paired_wilcoxon_p([0.01, -0.01, 0.02, -0.02, 0.03, -0.03]) == pytest.approx(1.0)
    assert evaluate.paired_wilcoxon_p([0.0] * 6) == 1.0


def test_missing_masks_are_reported_not_fatal(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("case,modality,image,mask\nonly,T1w,a.nii.gz,a.nii.gz\n")
    nib.Nifti1Image(cube().astype(np.uint8), np.eye(4)).to_filename(tmp_path / "a.nii.gz")
    (tmp_path / "empty").mkdir()
    rows = evaluate.evaluate_manifest(manifest, tmp_path / "out", {"tool": tmp_path / "empty"}, run_model=False,
                                      progress=False)
    assert rows == []
    assert "tool: no mask found" in (tmp_path / "out" / "summary.md").read_text()


@needs_shared
def test_shipped_model_on_one_real_scan(tmp_path):
    """End to end on the 2 mm SPM T1 template (fast): our mask agrees with its reference."""
    manifest = tmp_path / "one.csv"
    case_dir = SHARED_DATA / "eval" / "cases" / "spm_avg152_t1w"
    manifest.write_text(f"case,modality,image,mask\nspm,T1w,{case_dir / 'image.nii.gz'},{case_dir / 'mask.nii.gz'}\n")
    rows = evaluate.evaluate_manifest(manifest, tmp_path / "out", progress=False)
    assert rows and rows[0]["dice"] > 0.85
    assert rows[0]["peak_rss_mb"] > 50 and rows[0]["seconds"] > 0


def test_choose_setting_takes_the_best_unless_a_near_tie_is_nearer_the_defaults():
    means = {(0.5, -1.0): 0.9500, (0.25, -0.5): 0.9518, (0.5, -1.5): 0.9508}
    assert evaluate.choose_setting(means, preferred=(0.5, -1.0)) == (0.25, -0.5)
    # within the tolerance the defaults' neighbour wins, the first coordinate moving last
    means[(0.5, -1.5)] = 0.9515
    assert evaluate.choose_setting(means, preferred=(0.5, -1.0)) == (0.5, -1.5)
    means[(0.25, -1.0)] = 0.9516
    assert evaluate.choose_setting(means, preferred=(0.5, -1.0)) == (0.5, -1.5)
    assert evaluate.choose_setting(means, preferred=(0.5, -1.0), tolerance=0.0) == (0.25, -0.5)
    with pytest.raises(ValueError, match="no settings"):
        evaluate.choose_setting({}, preferred=(0.5, -1.0))
