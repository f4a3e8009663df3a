"""Reading and writing images without losing their geometry.

Every failure a user can cause (missing, unreadable, truncated or unsupported file,
2D/RGB/constant/NaN-only data, unwritable output folder) raises :class:`ImageError`
with one line that names the file and the problem.

Orientation: when a NIfTI file has both an sform and a qform that disagree, the sform
is used (nibabel's rule, also FSL's and FreeSurfer's) and a warning names the size of
the disagreement; outputs keep both matrices and codes exactly as the input had them.
"""

from __future__ import annotations

import gzip
import logging
import os
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

log = logging.getLogger("skullstrip")

SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh")


class ImageError(ValueError):
    """An input or output image problem, stated in one line."""


@dataclass
class LoadedImage:
    """An image with its data (original dtype, scaling applied) and its header."""

    image: nib.spatialimages.SpatialImage
    data: np.ndarray  # 3D or 4D
    path: str

    @property
    def affine(self) -> np.ndarray:
        return self.image.affine

    @property
    def is_4d(self) -> bool:
        return self.data.ndim == 4


def _suffix(path: str | Path) -> str:
    name = str(path).lower()
    return next((s for s in SUPPORTED_SUFFIXES if name.endswith(s)), "")


def load_image(path: str | Path) -> LoadedImage:
    """Load and check a NIfTI-1/2 or MGZ/MGH image."""
    path = str(path)
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a folder, not an image file")
    if not os.access(path, os.R_OK):
        raise ImageError(f"{path}: not readable (permission denied)")
    if not _suffix(path):
        raise ImageError(f"{path}: unsupported format; use NIfTI (.nii, .nii.gz) or FreeSurfer (.mgz, .mgh)")
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError, ValueError) as error:
        raise ImageError(f"{path}: cannot be read as an image ({_short(error)}); is the file complete?") from None
    return LoadedImage(image=image, data=check_data(data, path), path=path)


def check_data(data: np.ndarray, name: str) -> np.ndarray:
    """Refuse data a brain mask cannot be made from; squeeze a trailing singleton axis."""
    if data.dtype.names is not None or data.dtype.kind not in "biuf":
        raise ImageError(f"{name}: data type {data.dtype} is not supported (RGB or complex); convert to scalar")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim < 3 or min(data.shape[:3]) < 2:
        raise ImageError(f"{name}: a 3D volume is needed, got shape {data.shape}")
    if data.ndim > 4:
        raise ImageError(f"{name}: {data.ndim}D data is not supported (3D or 4D only), shape {data.shape}")
    first = data if data.ndim == 3 else data[..., 0]
    finite = np.isfinite(first) if first.dtype.kind == "f" else None
    if finite is not None and not finite.any():
        raise ImageError(f"{name}: the image has no finite values (all NaN or Inf)")
    values = first[finite] if finite is not None else first
    if values.min() == values.max():
        raise ImageError(f"{name}: the image is constant ({values.min()}): nothing to segment")
    return data


def check_affine(loaded: LoadedImage) -> None:
    """Refuse singular affines; warn when a NIfTI's qform and sform disagree."""
    affine = loaded.affine
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ImageError(f"{loaded.path}: the voxel-to-world matrix is singular or not finite; fix the header")
    header = loaded.image.header
    if isinstance(header, nib.Nifti1Header):
        sform, s_code = header.get_sform(coded=True)
        qform, q_code = header.get_qform(coded=True)
        if s_code > 0 and q_code > 0:
            difference = np.abs(sform - qform).max()
            if difference > 1e-3:
                log.warning(f"{loaded.path}: sform and qform differ (up to {difference:.3g} mm); using the sform")


def check_output_path(path: str | Path, inputs: list[str], overwrite: bool) -> Path:
    """An output path is usable: supported suffix, writable folder, not an input."""
    path = Path(path)
    if not _suffix(path):
        raise ImageError(f"{path}: output must end in .nii, .nii.gz, .mgz or .mgh")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ImageError(f"{path}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ImageError(f"{path}: output folder {folder} is not writable")
    for source in inputs:
        if os.path.exists(path) and os.path.samefile(path, source) and not overwrite:
            raise ImageError(f"{path}: is the input image; refusing to overwrite it (use --force to allow)")
    if path.exists() and not overwrite:
        raise ImageError(f"{path}: exists; refusing to overwrite (use --force)")
    return path


def image_like(data: np.ndarray, reference: nib.spatialimages.SpatialImage, dtype: np.dtype | type):
    """A new image of the reference's class with its header, affine and codes, given data/dtype."""
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    if isinstance(header, nib.Nifti1Header):
        # keep the input's intent-free geometry but drop its intensity scaling, which the
        # new data does not share (nibabel recomputes it when the dtype needs it)
        header.set_slope_inter(None, None)
        if data.ndim == 3 and header["dim"][0] > 3:
            header.set_data_shape(data.shape)
    image = reference.__class__(np.asarray(data, dtype=dtype), reference.affine, header)
    if isinstance(header, nib.Nifti1Header):
        sform, s_code = reference.header.get_sform(coded=True)
        qform, q_code = reference.header.get_qform(coded=True)
        image.set_sform(sform, int(s_code))
        image.set_qform(qform, int(q_code))
    return image


def save_atomic(images: dict[Path, nib.spatialimages.SpatialImage]) -> None:
    """Write every image to a temporary file beside its target, then rename them all.

    A failure while writing leaves no partial output: either all files appear or none.
    (nibabel gzips at level 1, several times faster than level 9 for ~10% larger files.)
    """
    temporary: dict[Path, Path] = {}
    try:
        for target, image in images.items():
            handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=_suffix(target), dir=target.parent or ".")
            os.close(handle)
            temporary[target] = Path(name)
            nib.save(image, name)
        for target, name in temporary.items():
            os.replace(name, target)
    except BaseException:
        for name in temporary.values():
            name.unlink(missing_ok=True)
        raise


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:160]


def write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write`` on a hidden sibling of ``path``, then move it over ``path``.

    Readers (a resumed training, a batch that skips finished cases) never see a half
    written file, and a failing ``write`` leaves no temporary file behind.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
