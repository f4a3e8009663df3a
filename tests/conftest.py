"""Shared fixtures: synthetic phantoms made by the package itself (no external data)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from skullstrip import synth

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def procedural_anatomy() -> synth.Anatomy:
    return synth.procedural_anatomies(1, seed=7)[0]


@pytest.fixture(scope="session")
def phantom(procedural_anatomy) -> synth.Sample:
    """A T1-like upright head at 2 mm with its true brain mask."""
    return synth.make_phantom(seed=3, voxel_mm=2.0, shape=(80, 96, 88), modality="mri",
                              anatomies=[procedural_anatomy])


@pytest.fixture(scope="session")
def phantom_world_affine(phantom) -> np.ndarray:
    """The phantom placed in scanner space like a real scan (origin near the head centre)."""
    affine = phantom.affine.copy()
    affine[:3, 3] = -np.asarray(phantom.image.shape) / 2 * 2.0 + np.array([3.0, -12.0, 20.0])
    return affine


@pytest.fixture
def phantom_file(tmp_path, phantom, phantom_world_affine) -> Path:
    """The phantom written as an int16 NIfTI with both qform and sform set."""
    data = np.round(phantom.image * 1000).astype(np.int16)
    image = nib.Nifti1Image(data, phantom_world_affine)
    image.set_qform(phantom_world_affine, code=1)
    image.set_sform(phantom_world_affine, code=1)
    path = tmp_path / "phantom.nii.gz"
    image.to_filename(path)
    return path


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * (a & b).sum() / total


needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
