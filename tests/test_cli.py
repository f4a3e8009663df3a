"""The command line: exit codes, one-line errors, no partial outputs, never touching inputs."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from skullstrip.cli import main


def run(arguments, capsys):
    code = main([str(a) for a in arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_version_and_help():
    for flag in ("--version", "--help"):
        completed = subprocess.run([sys.executable, "-m", "skullstrip.cli", flag], capture_output=True, text=True)
        assert completed.returncode == 0
        assert "skullstrip" in completed.stdout


def test_strip_writes_outputs(tmp_path, phantom_file, capsys):
    code, out, _ = run(["-i", phantom_file, "-m", tmp_path / "mask.nii.gz"], capsys)
    assert code == 0 and "brain volume" in out
    assert (tmp_path / "mask.nii.gz").exists() and (tmp_path / "mask.json").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary files left


def test_opening_option_reaches_the_sidecar(tmp_path, phantom_file, capsys):
    import json

    code, _, _ = run(["-i", phantom_file, "-m", tmp_path / "mask.nii.gz", "--opening", "3"], capsys)
    assert code == 0
    assert json.loads((tmp_path / "mask.json").read_text())["parameters"]["opening_mm"] == 3.0


def test_intensity_rule_flags_reach_the_sidecar(tmp_path, phantom_file, capsys):
    import json

    code, _, _ = run(["-i", phantom_file, "-m", tmp_path / "mask.nii.gz", "--no-ct-window", "--no-keep-stripped"],
                     capsys)
    assert code == 0
    sidecar = json.loads((tmp_path / "mask.json").read_text())
    assert sidecar["parameters"]["ct_window"] is False and sidecar["parameters"]["keep_stripped"] is False
    assert "already_stripped" not in sidecar["diagnostics"]


@pytest.mark.parametrize("flags,expected", [([], True), (["--no-mirror-average"], False),
                                             (["--mirror-average"], True)])
def test_mirror_average_is_the_default_and_can_be_turned_off(tmp_path, phantom_file, capsys, flags, expected):
    import json

    code, _, _ = run(["-i", phantom_file, "-m", tmp_path / "mask.nii.gz", *flags], capsys)
    assert code == 0
    assert json.loads((tmp_path / "mask.json").read_text())["parameters"]["mirror_average"] is expected


def test_csf_fraction_reaches_the_sidecar_and_excludes_no_csf(tmp_path, phantom_file, capsys):
    import json

    code, _, _ = run(["-i", phantom_file, "-m", tmp_path / "mask.nii.gz", "--csf-fraction", "0.5"], capsys)
    assert code == 0
    assert json.loads((tmp_path / "mask.json").read_text())["parameters"]["csf_fraction"] == 0.5
    with pytest.raises(SystemExit):
        main(["-i", str(phantom_file), "-m", str(tmp_path / "other.nii.gz"), "--no-csf", "--csf-fraction", "0.5"])
    assert "not allowed with" in capsys.readouterr().err
    code, _, err = run(["-i", phantom_file, "-m", tmp_path / "third.nii.gz", "--csf-fraction", "2"], capsys)
    assert code == 1 and "csf_fraction" in err and not (tmp_path / "third.nii.gz").exists()


def test_working_voxel_reaches_the_sidecar_and_a_bad_one_is_refused(tmp_path, phantom_file, capsys):
    import json

    code, _, _ = run(["-i", phantom_file, "-m", tmp_path / "mask.nii.gz", "--working-voxel", "1.8"], capsys)
    assert code == 0
    assert json.loads((tmp_path / "mask.json").read_text())["parameters"]["working_voxel_mm"] == 1.8
    code, _, err = run(["-i", phantom_file, "-m", tmp_path / "other.nii.gz", "--working-voxel", "0.2"], capsys)
    assert code == 1 and "working_voxel_mm" in err and not (tmp_path / "other.nii.gz").exists()


def test_no_output_requested_is_an_error(phantom_file, capsys):
    code, _, err = run(["-i", phantom_file], capsys)
    assert code == 1 and "nothing to write" in err


def _one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 1
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err


def test_missing_input(tmp_path, capsys):
    code, _, err = run(["-i", tmp_path / "nope.nii.gz", "-m", tmp_path / "m.nii.gz"], capsys)
    _one_line_error(code, err, "nope.nii.gz", "no such file")
    assert not (tmp_path / "m.nii.gz").exists()


def test_truncated_input(tmp_path, phantom_file, capsys):
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(phantom_file.read_bytes()[:5000])
    code, _, err = run(["-i", truncated, "-m", tmp_path / "m.nii.gz"], capsys)
    _one_line_error(code, err, "truncated.nii.gz")
    assert not (tmp_path / "m.nii.gz").exists()


def test_corrupt_and_unsupported_inputs(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(gzip.compress(b"this is not a nifti file" * 20))
    code, _, err = run(["-i", corrupt, "-m", tmp_path / "m.nii.gz"], capsys)
    _one_line_error(code, err, "corrupt.nii.gz")
    text = tmp_path / "scan.txt"
    text.write_text("hello")
    code, _, err = run(["-i", text, "-m", tmp_path / "m.nii.gz"], capsys)
    _one_line_error(code, err, "scan.txt", "unsupported format")


@pytest.mark.parametrize("kind,data,words", [
    ("2d", np.ones((20, 20), np.float32), ("3D volume",)),
    ("zeros", np.zeros((20, 20, 20), np.float32), ("constant",)),
    ("nan", np.full((20, 20, 20), np.nan, np.float32), ("no finite values",)),
])
def test_degenerate_images(tmp_path, capsys, kind, data, words):
    path = tmp_path / f"{kind}.nii.gz"
    nib.Nifti1Image(data, np.eye(4)).to_filename(path)
    code, _, err = run(["-i", path, "-m", tmp_path / "m.nii.gz"], capsys)
    _one_line_error(code, err, f"{kind}.nii.gz", *words)


def test_rgb_image_is_refused(tmp_path, capsys):
    rgb = np.zeros((10, 10, 10), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = tmp_path / "rgb.nii"
    nib.Nifti1Image(rgb, np.eye(4)).to_filename(path)
    code, _, err = run(["-i", path, "-m", tmp_path / "m.nii.gz"], capsys)
    _one_line_error(code, err, "rgb.nii", "RGB")


def test_output_folder_missing(tmp_path, phantom_file, capsys):
    code, _, err = run(["-i", phantom_file, "-m", tmp_path / "missing" / "m.nii.gz"], capsys)
    _one_line_error(code, err, "does not exist")


def test_never_overwrites_input_or_existing_outputs(tmp_path, phantom_file, capsys):
    before = phantom_file.read_bytes()
    code, _, err = run(["-i", phantom_file, "-o", phantom_file], capsys)
    _one_line_error(code, err, "input image")
    assert phantom_file.read_bytes() == before
    existing = tmp_path / "existing.nii.gz"
    existing.write_bytes(b"keep me")
    code, _, err = run(["-i", phantom_file, "-m", existing], capsys)
    _one_line_error(code, err, "exists")
    assert existing.read_bytes() == b"keep me"
    code, _, _ = run(["-i", phantom_file, "-m", existing, "--force"], capsys)
    assert code == 0 and nib.load(existing).shape == nib.load(phantom_file).shape


def test_verbose_shows_the_traceback(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "skullstrip.cli", "-i", str(tmp_path / "x.nii"), "-m",
                                str(tmp_path / "m.nii"), "-v"], capture_output=True, text=True)
    assert completed.returncode != 0 and "Traceback" in completed.stderr


def test_mgz_round_trip(tmp_path, phantom, phantom_world_affine, capsys):
    path = tmp_path / "head.mgz"
    nib.MGHImage((phantom.image * 100).astype(np.float32), phantom_world_affine).to_filename(path)
    code, _, _ = run(["-i", path, "-m", tmp_path / "mask.mgz", "-o", tmp_path / "brain.mgz"], capsys)
    assert code == 0
    mask = nib.load(tmp_path / "mask.mgz")
    np.testing.assert_allclose(mask.affine, phantom_world_affine)
    assert mask.get_data_dtype() == np.uint8


def test_qc_command_writes_overlays_and_reports_a_failed_case(tmp_path, phantom_file, capsys):
    import csv

    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"case,modality,image\nphantom,T1w,{phantom_file}\nbroken,T2w,broken.nii.gz\n")
    code, _, err = run(["qc", manifest, "--out", tmp_path / "qc", "--quiet"], capsys)
    assert code == 1 and "broken" in err
    rows = {row["case"]: row for row in csv.DictReader((tmp_path / "qc" / "qc.csv").open())}
    assert rows["broken"]["error"] and not rows["phantom"]["error"]
    assert 0.5 < float(rows["phantom"]["height_to_length"]) < 1.0
    assert (tmp_path / "qc" / "phantom.png").stat().st_size > 0
    assert "phantom.png" in (tmp_path / "qc" / "index.html").read_text()


def test_qc_command_passes_the_csf_fraction_to_the_model(tmp_path, phantom_file, capsys):
    import csv

    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"case,modality,image\nphantom,T1w,{phantom_file}\n")
    volumes = {}
    for name, flags in {"no_csf": ["--no-csf"], "all_csf": ["--csf-fraction", "1"]}.items():
        assert run(["qc", manifest, "--out", tmp_path / name, "--quiet", *flags], capsys)[0] == 0
        volumes[name] = float(next(csv.DictReader((tmp_path / name / "qc.csv").open()))["volume_ml"])
    assert volumes["no_csf"] < volumes["all_csf"]


def test_strip_warns_about_a_mask_taller_than_long_and_still_writes_it(tmp_path, phantom, phantom_world_affine,
                                                                      capsys):
    upright = tmp_path / "upright.nii.gz"
    nib.Nifti1Image(phantom.image, phantom_world_affine).to_filename(upright)
    code, _, err = run(["-i", upright, "-m", tmp_path / "upright_mask.nii.gz"], capsys)
    assert code == 0 and "taller-than-long" not in err
    # a header with 3 mm slices for 2 mm ones: the head is 1.5 times too tall in world space
    stretched_affine = phantom_world_affine.copy()
    stretched_affine[2, 2] *= 1.5
    stretched = tmp_path / "stretched.nii.gz"
    nib.Nifti1Image(phantom.image, stretched_affine).to_filename(stretched)
    code, _, err = run(["-i", stretched, "-m", tmp_path / "stretched_mask.nii.gz"], capsys)
    assert code == 0 and "warning" in err and "taller-than-long" in err
    assert (tmp_path / "stretched_mask.nii.gz").exists()
