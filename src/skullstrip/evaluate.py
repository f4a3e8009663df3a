"""Measure brain masks against reference masks, the way skull-stripping papers do.

Metrics (``mask_metrics``), computed on the reference grid in physical units:
Dice, Jaccard, 95th-percentile Hausdorff distance and average symmetric surface
distance (medpy's definitions: HD95 is the larger of the two directed 95th percentiles,
ASSD the mean of the two directed mean distances; surfaces are the mask voxels with a
6-neighbour outside; distances use ``distance_transform_edt(sampling=voxel size)`` so
anisotropic voxels count in mm), volume difference (mL and %), false-positive and
false-negative volume (mL). One empty mask gives Dice 0 and NaN distances; two empty
masks give Dice 1 and distance 0.

Reports (``evaluate_manifest``): a per-case CSV, a markdown summary with mean ± SD and
median per modality and method, paired Wilcoxon signed-rank tests between methods
(``scipy.stats.wilcoxon``; n and p per modality and overall, as in the MindGrab paper),
and box/strip plots of Dice and HD95 per modality.
"""

from __future__ import annotations

import csv
import logging
import math
import resource
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from skullstrip.conform import resample

if TYPE_CHECKING:
    from skullstrip.infer import StripOptions

log = logging.getLogger("skullstrip")

METRICS = ("dice", "jaccard", "hd95_mm", "assd_mm", "volume_diff_ml", "volume_diff_pct", "fp_ml", "fn_ml")
OURS = "skullstrip"


class GridMismatchError(ValueError):
    """Two masks on grids that cannot be the same scan."""


# ----------------------------------------------------------------------------- metrics


def mask_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """All metrics between two binary masks on the same grid with voxel size ``spacing`` (mm)."""
    prediction = np.asarray(prediction).astype(bool)
    reference = np.asarray(reference).astype(bool)
    if prediction.shape != reference.shape:
        raise GridMismatchError(f"mask shapes differ: {prediction.shape} vs {reference.shape}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    overlap = int((prediction & reference).sum())
    n_pred, n_ref = int(prediction.sum()), int(reference.sum())
    union = n_pred + n_ref - overlap
    dice = 1.0 if n_pred + n_ref == 0 else 2.0 * overlap / (n_pred + n_ref)
    jaccard = 1.0 if union == 0 else overlap / union
    hd95, assd = surface_distances(prediction, reference, spacing)
    reference_ml = n_ref * voxel_ml
    difference_ml = (n_pred - n_ref) * voxel_ml
    return {
        "dice": dice,
        "jaccard": jaccard,
        "hd95_mm": hd95,
        "assd_mm": assd,
        "volume_diff_ml": difference_ml,
        "volume_diff_pct": 100.0 * difference_ml / reference_ml if reference_ml else math.nan,
        "fp_ml": (n_pred - overlap) * voxel_ml,
        "fn_ml": (n_ref - overlap) * voxel_ml,
    }


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """(HD95, ASSD) in mm between the surfaces of two binary masks."""
    if not a.any() and not b.any():
        return 0.0, 0.0
    if not a.any() or not b.any():
        return math.nan, math.nan
    # crop to the joint bounding box (+1 voxel) so the distance transforms stay small
    box = tuple(slice(max(lo - 2, 0), hi + 3) for lo, hi in zip(*_bounds(a | b)))
    a, b = a[box], b[box]
    surface_a, surface_b = _surface(a), _surface(b)
    to_b = ndi.distance_transform_edt(~surface_b, sampling=spacing)[surface_a]
    to_a = ndi.distance_transform_edt(~surface_a, sampling=spacing)[surface_b]
    hd95 = max(np.percentile(to_b, 95), np.percentile(to_a, 95))
    assd = (to_b.mean() + to_a.mean()) / 2
    return float(hd95), float(assd)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndi.binary_erosion(mask, border_value=0)


def _bounds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index = np.argwhere(mask)
    return index.min(axis=0), index.max(axis=0)


def binary_mask(image: nib.spatialimages.SpatialImage) -> np.ndarray:
    """A mask file's first volume as booleans (masks saved 4D with one volume are common)."""
    data = np.asanyarray(image.dataobj)
    return (data[..., 0] if data.ndim == 4 else data) > 0.5


def on_reference_grid(prediction: nib.spatialimages.SpatialImage,
                      reference: nib.spatialimages.SpatialImage) -> np.ndarray:
    """The prediction as a boolean array on the reference grid.

    Same shape and affines within a voxel: used as is. Same shape but affines that put
    a corner more than one voxel away: refused (a header mistake, not a resampling
    job). Different shapes: nearest-neighbour resampling into the reference grid.
    """
    mask = binary_mask(prediction)
    ref_shape = reference.shape[:3]
    if mask.shape == ref_shape:
        corners = np.array([[0, 0, 0], np.array(ref_shape) - 1], dtype=float)
        ref_world = corners @ reference.affine[:3, :3].T + reference.affine[:3, 3]
        pred_world = corners @ prediction.affine[:3, :3].T + prediction.affine[:3, 3]
        voxel = float(np.sqrt((reference.affine[:3, :3] ** 2).sum(axis=0)).max())
        shift = float(np.abs(ref_world - pred_world).max())
        if shift > voxel:
            raise GridMismatchError(
                f"{prediction.get_filename() or 'prediction'}: same shape as the reference but its affine places "
                f"voxels {shift:.1f} mm away (more than one voxel); check the headers")
        return mask
    moved = resample(mask.astype(np.float32), prediction.affine, ref_shape, reference.affine, order=0)
    return moved > 0.5


# -------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class Case:
    case: str
    modality: str
    image: Path
    mask: Path | None


def choose_setting(mean_dice: dict[tuple[float, ...], float], preferred: Sequence[float],
                   tolerance: float = 0.0005) -> tuple[float, ...]:
    """The setting with the highest mean Dice; near-ties go to the one nearest ``preferred``.

    Settings within ``tolerance`` of the best are tied: on a handful of calibration scans
    such differences are noise, and moving the defaults for noise makes users' masks
    change between releases for nothing. Among the tied, the nearest to ``preferred``
    (the defaults in force) wins, compared coordinate by coordinate in order (for the
    post-processing sweep: CSF fraction, then border), so the first coordinate moves only
    when it must.
    """
    if not mean_dice:
        raise ValueError("no settings to choose from")
    best = max(mean_dice.values())
    tied = [setting for setting, dice in mean_dice.items() if best - dice <= tolerance]
    return min(tied, key=lambda setting: tuple(abs(a - b) for a, b in zip(setting, preferred)))


def read_manifest(path: str | Path) -> list[Case]:
    """Cases from a CSV with columns case, modality, image[, mask]; paths relative to it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such manifest")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"case", "modality", "image"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: manifest lacks the columns {sorted(missing)}")
    return [Case(r["case"], r["modality"], path.parent / r["image"],
                 path.parent / r["mask"] if r.get("mask") else None) for r in rows]


def method_mask_path(folder: Path, case: str) -> Path | None:
    """A tool's mask for a case: ``FOLDER/CASE.nii.gz`` (or .nii/.mgz) or ``FOLDER/CASE/mask.nii.gz``."""
    for candidate in (folder / f"{case}.nii.gz", folder / f"{case}.nii", folder / f"{case}.mgz",
                      folder / case / "mask.nii.gz"):
        if candidate.exists():
            return candidate
    return None


# ------------------------------------------------------------------------ our model


def run_ours_isolated(image: Path, mask_out: Path, options: StripOptions) -> dict:
    """Run skullstrip on one image in a fresh process: wall time and that process's peak RSS."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_strip_and_measure, (str(image), str(mask_out), options))


def _strip_and_measure(image: str, mask_out: str, options: StripOptions) -> dict:
    started = time.perf_counter()
    from skullstrip.infer import strip_file

    strip_file(image, mask_path=mask_out, json_path=None, options=options, overwrite=True)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_kb / 1024}


# ---------------------------------------------------------------------------- reports


def evaluate_manifest(manifest: str | Path, out_dir: str | Path, methods: dict[str, Path] | None = None,
                      run_model: bool = True, options: StripOptions | None = None,
                      progress: bool = True) -> list[dict]:
    """Per-case metrics for our model and/or other tools' mask folders, and the reports.

    ``options``: our model's settings and weights (default: the shipped ones).
    """
    from tqdm import tqdm

    from skullstrip.infer import StripOptions

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = options or StripOptions()
    cases = read_manifest(manifest)
    methods = dict(methods or {})
    if run_model:
        (out_dir / "masks").mkdir(exist_ok=True)
    rows, failures = [], []
    for case in tqdm(cases, disable=not progress, desc="cases", unit="case"):
        if case.mask is None:
            failures.append((case.case, "manifest has no reference mask"))
            continue
        try:
            reference = nib.load(str(case.mask))
            ref_mask = binary_mask(reference)
            spacing = reference.header.get_zooms()[:3]
        except Exception as error:  # one unreadable case must not stop the others
            failures.append((case.case, f"reference mask unreadable: {error}"))
            continue
        candidates: list[tuple[str, Path | None, dict]] = []
        if run_model:
            mask_out = out_dir / "masks" / f"{case.case}.nii.gz"
            try:
                cost = run_ours_isolated(case.image, mask_out, options)
                candidates.append((OURS, mask_out, cost))
            except Exception as error:
                failures.append((case.case, f"{OURS} failed: {error}"))
        for name, folder in methods.items():
            candidates.append((name, method_mask_path(Path(folder), case.case), {}))
        for name, path, cost in candidates:
            if path is None:
                failures.append((case.case, f"{name}: no mask found"))
                continue
            try:
                prediction = on_reference_grid(nib.load(str(path)), reference)
                metrics = mask_metrics(prediction, ref_mask, spacing)
            except Exception as error:
                log.debug(traceback.format_exc())
                failures.append((case.case, f"{name}: {error}"))
                continue
            rows.append({"case": case.case, "modality": case.modality, "method": name, **metrics, **cost})
    write_case_csv(rows, out_dir / "cases.csv")
    (out_dir / "summary.md").write_text(summary_markdown(rows, failures))
    if rows:
        plot_metrics(rows, out_dir)
    for case, reason in failures:
        log.warning(f"{case}: {reason}")
    return rows


def write_case_csv(rows: list[dict], path: Path) -> None:
    columns = ["case", "modality", "method", *METRICS, "seconds", "peak_rss_mb"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})


def read_case_csv(path: str | Path) -> list[dict]:
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in (*METRICS, "seconds", "peak_rss_mb"):
            if row.get(key) not in (None, ""):
                row[key] = float(row[key])
    return rows


def summary_markdown(rows: list[dict], failures: Sequence[tuple[str, str]] = ()) -> str:
    """Per-modality tables (mean ± SD, median), overall row, Wilcoxon tests, failures."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    modalities = sorted({r["modality"] for r in rows})
    lines = ["# Evaluation summary", ""]
    for metric, label in (("dice", "Dice"), ("hd95_mm", "HD95 (mm)"), ("assd_mm", "ASSD (mm)"),
                          ("volume_diff_pct", "volume difference (%)")):
        lines += [f"## {label}: mean ± SD (median) per modality", "",
                  "| method | " + " | ".join(modalities) + " | all | min | n |",
                  "|---|" + "---|" * (len(modalities) + 3)]
        for method in methods:
            cells = [_stat_cell([r[metric] for r in rows if r["method"] == method and r["modality"] == m])
                     for m in modalities]
            values = [r[metric] for r in rows if r["method"] == method]
            finite = [v for v in values if np.isfinite(v)]
            low = f"{min(finite):.3f}" if finite else "–"
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {_stat_cell(values)} | {low} | {len(values)} |")
        lines.append("")
    lines += wilcoxon_lines(rows, methods, modalities)
    cost = [r for r in rows if r.get("seconds") not in (None, "")]
    if cost:
        seconds = [float(r["seconds"]) for r in cost]
        peaks = [float(r["peak_rss_mb"]) for r in cost]
        lines += ["## Cost of running skullstrip (one fresh process per case)", "",
                  f"- wall time per case: mean {np.mean(seconds):.1f} s, max {np.max(seconds):.1f} s",
                  f"- peak RSS per case: mean {np.mean(peaks):.0f} MB, max {np.max(peaks):.0f} MB", ""]
    if failures:
        lines += ["## Failures", ""] + [f"- {case}: {reason}" for case, reason in failures] + [""]
    return "\n".join(lines)


def _stat_cell(values: Sequence[float]) -> str:
    finite = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if finite.size == 0:
        return "–"
    sd = finite.std(ddof=1) if finite.size > 1 else 0.0
    return f"{finite.mean():.3f} ± {sd:.3f} ({np.median(finite):.3f})"


def wilcoxon_lines(rows: list[dict], methods: list[str], modalities: list[str]) -> list[str]:
    """Paired two-sided Wilcoxon signed-rank tests of Dice between each pair of methods."""
    if len(methods) < 2:
        return []
    lines = ["## Paired Wilcoxon signed-rank tests (Dice)", "",
             "| method A | method B | modality | n | median A − B | p |", "|---|---|---|---|---|---|"]
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            for modality in [*modalities, "all"]:
                pairs = _paired(rows, a, b, modality)
                if len(pairs) < 2:
                    lines.append(f"| {a} | {b} | {modality} | {len(pairs)} | – | – |")
                    continue
                differences = np.array([x - y for x, y in pairs])
                p = paired_wilcoxon_p(differences)
                lines.append(f"| {a} | {b} | {modality} | {len(pairs)} | {np.median(differences):+.4f} | {p:.3g} |")
    return lines + [""]


def paired_wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences (1 when all are zero,
    where scipy's test is undefined)."""
    from scipy.stats import wilcoxon

    differences = np.asarray(differences, dtype=float)
    return 1.0 if np.allclose(differences, 0) else float(wilcoxon(differences).pvalue)


def _paired(rows: list[dict], a: str, b: str, modality: str) -> list[tuple[float, float]]:
    def by_case(method: str) -> dict[str, float]:
        return {r["case"]: r["dice"] for r in rows
                if r["method"] == method and (modality == "all" or r["modality"] == modality)}

    first, second = by_case(a), by_case(b)
    return [(first[c], second[c]) for c in first if c in second]


def plot_metrics(rows: list[dict], out_dir: Path) -> None:
    """Box plots with the cases as points: Dice and HD95 per modality and method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    modalities = sorted({r["modality"] for r in rows})
    for metric, label, filename in (("dice", "Dice", "dice.png"), ("hd95_mm", "HD95 (mm)", "hd95.png")):
        figure, ax = plt.subplots(figsize=(max(5, 1.6 * len(modalities) * len(methods) / 2 + 2), 4))
        width = 0.8 / len(methods)
        for k, method in enumerate(methods):
            positions, data = [], []
            for j, modality in enumerate(modalities):
                values = [r[metric] for r in rows if r["method"] == method and r["modality"] == modality
                          and np.isfinite(r[metric])]
                positions.append(j + (k - (len(methods) - 1) / 2) * width)
                data.append(values)
            ax.boxplot([d if d else [np.nan] for d in data], positions=positions, widths=width * 0.8,
                       showfliers=False, patch_artist=True, boxprops={"facecolor": f"C{k}", "alpha": 0.35},
                       medianprops={"color": f"C{k}"})
            for position, values in zip(positions, data):
                jitter = np.random.default_rng(0).uniform(-width / 5, width / 5, len(values))
                ax.scatter(np.full(len(values), position) + jitter, values, s=12, color=f"C{k}",
                           label=method if position == positions[0] else None, zorder=3)
        ax.set_xticks(range(len(modalities)), modalities)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(out_dir / filename, dpi=90)
        plt.close(figure)


# --------------------------------------------------------------------- QC (no masks)


def qc_manifest(manifest: str | Path, out_dir: str | Path, options: StripOptions | None = None,
                progress: bool = True) -> list[dict]:
    """Run our model on every case, write one overlay PNG per case and ``index.html``.

    The table also gives numbers a person checks by eye: brain volume, the mean image
    value inside the mask (HU for CT), the fraction of the image's nonzero voxels kept
    (for an already skull-stripped input it should be close to 1), and the mask's height
    over its length (above 1 when it leaked into the neck).
    """
    from tqdm import tqdm

    from skullstrip.infer import StripOptions, strip
    from skullstrip.qc import overlay_png

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = options or StripOptions()
    rows = []
    for case in tqdm(read_manifest(manifest), disable=not progress, desc="cases", unit="case"):
        try:
            result = strip(case.image, options)
            volume = result.data.mean(axis=3) if result.data.ndim == 4 else result.data
            mask = result.mask.astype(bool) if result.mask.ndim == 3 else result.mask[..., 0].astype(bool)
            nonzero = volume != 0
            overlay_png(out_dir / f"{case.case}.png", volume, mask, result.reference.affine,
                        title=f"{case.case} ({case.modality}) {result.volume_ml:.0f} mL")
            rows.append({"case": case.case, "modality": case.modality, "volume_ml": result.volume_ml,
                         "mean_inside": float(volume[mask].mean()) if mask.any() else math.nan,
                         "nonzero_kept": float((mask & nonzero).sum() / max(nonzero.sum(), 1)),
                         "height_to_length": result.diagnostics["height_to_length"],
                         "seconds": result.seconds, "error": ""})
        except Exception as error:
            rows.append({"case": case.case, "modality": case.modality, "error": str(error).splitlines()[0]})
    _write_qc_index(rows, out_dir)
    return rows


def _write_qc_index(rows: list[dict], out_dir: Path) -> None:
    import html

    lines = ["<!doctype html><meta charset='utf-8'><title>skullstrip QC</title>",
             "<style>body{font-family:sans-serif;background:#111;color:#eee}td,th{padding:4px 8px}"
             "img{height:170px}</style><h1>skullstrip QC</h1><table><tr><th>case</th><th>modality</th>"
             "<th>volume (mL)</th><th>mean inside</th><th>nonzero kept</th><th>height / length</th><th>s</th>"
             "<th>overlay</th></tr>"]
    for row in rows:
        if row.get("error"):
            lines.append(f"<tr><td>{html.escape(row['case'])}</td><td>{html.escape(row['modality'])}</td>"
                         f"<td colspan=6>failed: {html.escape(row['error'])}</td></tr>")
            continue
        lines.append(f"<tr><td>{html.escape(row['case'])}</td><td>{html.escape(row['modality'])}</td>"
                     f"<td>{row['volume_ml']:.0f}</td><td>{row['mean_inside']:.1f}</td>"
                     f"<td>{row['nonzero_kept']:.3f}</td><td>{row['height_to_length']:.2f}</td>"
                     f"<td>{row['seconds']:.1f}</td>"
                     f"<td><img src='{html.escape(row['case'])}.png'></td></tr>")
    lines.append("</table>")
    (out_dir / "index.html").write_text("\n".join(lines))
    with (out_dir / "qc.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["case", "modality", "volume_ml", "mean_inside", "nonzero_kept",
                                         "height_to_length", "seconds", "error"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------- training monitor


def real_scan_monitor(manifest: str | Path, border_mm: float = 0.0,
                      every_nth_case: int = 1) -> Callable[[object, int], dict]:
    """A training hook: mean/min Dice of the network being trained on real scans.

    For monitoring only: the numbers are logged, never used in the loss.
    """
    from skullstrip.infer import Model, StripOptions, predict_distance

    cases = [c for c in read_manifest(manifest) if c.mask is not None][::every_nth_case]
    loaded = []
    for case in cases:
        image = nib.load(str(case.image))
        data = np.asanyarray(image.dataobj).astype(np.float32)
        loaded.append((data[..., 0] if data.ndim == 4 else data, image.affine, binary_mask(nib.load(str(case.mask)))))

    def monitor(network, step: int) -> dict:
        model = Model.from_network(network, source="training", step=step)
        dices = []
        for data, affine, reference in loaded:
            # one view: the monitor stays as cheap as, and comparable with, that of runs before
            # mirror averaging became the default (session 39)
            sdt = predict_distance(data, affine, model, StripOptions(border_mm=border_mm, mirror_average=False))
            prediction = sdt < 0
            dices.append(2 * (prediction & reference).sum() / (prediction.sum() + reference.sum()))
        return {"real_dice": float(np.mean(dices)), "real_dice_min": float(np.min(dices))}

    return monitor


__all__ = ["mask_metrics", "surface_distances", "evaluate_manifest", "qc_manifest", "read_manifest",
           "summary_markdown", "real_scan_monitor", "on_reference_grid"]
