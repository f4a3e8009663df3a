"""Strip a whole cohort: locally with worker processes, or on an existing Dask cluster.

    discover inputs (files, globs, list files, BIDS) -> plan outputs (BIDS derivatives
    or flat) -> skip complete cases -> strip the rest in parallel -> QC report

Each case is independent and written atomically; its JSON sidecar is written last, so
"sidecar present" means "case complete" and an interrupted run resumes where it
stopped. A failing case is recorded with its reason and the others go on. Workers load
the model once (cached per process) and use ``cores // jobs`` threads each, so the
machine is never oversubscribed.
"""

from __future__ import annotations

import glob
import html
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from skullstrip import __version__, qc
from skullstrip.infer import StripOptions
from skullstrip.io import write_atomically

log = logging.getLogger("skullstrip")

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mgz")
BIDS_DATATYPES = ("anat", "func", "dwi", "perf", "fmap")


@dataclass(frozen=True)
class Job:
    """One input scan and where its outputs go."""

    key: str
    image: Path
    mask: Path
    stripped: Path
    sidecar: Path
    thumbnail: Path


@dataclass
class Record:
    """What happened to one case (also what the QC report shows)."""

    key: str
    image: str
    status: str  # done | skipped | failed
    volume_ml: float | None = None
    seconds: float | None = None
    diagnostics: dict = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    error: str = ""
    thumbnail: str = ""


# ------------------------------------------------------------------------ discovery


def _is_image(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def _split_name(path: Path) -> tuple[str, str]:
    name = path.name
    suffix = next(s for s in IMAGE_SUFFIXES if name.lower().endswith(s))
    return name[: -len(suffix)], suffix


def is_bids_root(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_description.json").exists() or any(path.glob("sub-*")))


def bids_entities(path: Path) -> dict[str, str]:
    """``sub-01_ses-2_run-1_T1w.nii.gz`` -> {'sub': '01', 'ses': '2', 'run': '1', 'suffix': 'T1w'}."""
    stem, _ = _split_name(path)
    parts = stem.split("_")
    entities = dict(part.split("-", 1) for part in parts[:-1] if "-" in part)
    entities["suffix"] = parts[-1]
    return entities


def discover_bids(root: Path, modalities: Sequence[str] = (), subjects: Sequence[str] = ()) -> list[Path]:
    """Raw images of a BIDS dataset (not its derivatives), filtered by suffix and subject."""
    found = []
    for datatype in BIDS_DATATYPES:
        for path in sorted(root.glob(f"sub-*/**/{datatype}/*")):
            if not _is_image(path) or "derivatives" in path.relative_to(root).parts:
                continue
            entities = bids_entities(path)
            if modalities and entities["suffix"] not in modalities:
                continue
            if subjects and entities.get("sub") not in {s.removeprefix("sub-") for s in subjects}:
                continue
            found.append(path)
    return found


def discover(inputs: Sequence[str], modalities: Sequence[str] = (), subjects: Sequence[str] = ()) -> list[Path]:
    """Input images from files, glob patterns, ``.txt`` lists of paths and BIDS roots."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if is_bids_root(path):
            found += discover_bids(path, modalities, subjects)
        elif path.suffix == ".txt" and path.is_file():
            lines = [line.strip() for line in path.read_text().splitlines()]
            found += [Path(line) for line in lines if line and not line.startswith("#")]
        elif any(ch in item for ch in "*?["):
            found += [Path(p) for p in sorted(glob.glob(item, recursive=True)) if _is_image(p)]
        else:
            found.append(path)  # a missing file is reported as that case's failure, not here
    unique = list(dict.fromkeys(found))
    return unique


# ------------------------------------------------------------------------- planning


def plan_bids(images: Sequence[Path], bids_root: Path, out_root: Path) -> list[Job]:
    """BIDS-derivatives outputs in ``derivatives/skullstrip/sub-X/[ses-Y/]TYPE/``.

    ``sub-01_T1w.nii.gz`` gives ``sub-01_desc-brain_T1w.nii.gz`` (stripped) and
    ``sub-01_desc-brainT1w_mask.nii.gz`` (+ ``.json``): the mask's ``desc`` carries the
    source contrast, so the masks of a T1w and a FLAIR of one session do not collide.
    """
    derivatives = out_root / "derivatives" / "skullstrip"
    jobs = []
    for image in images:
        relative = image.relative_to(bids_root)
        stem, suffix = _split_name(image)
        parts = stem.split("_")
        entities = [p for p in parts[:-1] if not p.startswith("desc-")]
        contrast = re.sub(r"[^A-Za-z0-9]", "", parts[-1])
        mask_base = "_".join([*entities, f"desc-brain{contrast}", "mask"])
        folder = derivatives / relative.parent
        jobs.append(Job(key=stem, image=image, mask=folder / f"{mask_base}{suffix}",
                        stripped=folder / "_".join([*entities, "desc-brain", parts[-1] + suffix]),
                        sidecar=folder / f"{mask_base}.json", thumbnail=derivatives / "qc" / f"{stem}.png"))
    return jobs


def plan_flat(images: Sequence[Path], out_dir: Path) -> list[Job]:
    """Flat outputs: ``OUT/NAME_mask.nii.gz``, ``OUT/NAME_brain.nii.gz``, ``OUT/NAME_mask.json``."""
    jobs, seen = [], {}
    for image in images:
        stem, suffix = _split_name(image) if _is_image(image) else (image.name, ".nii.gz")
        if stem in seen:
            raise ValueError(f"{image} and {seen[stem]} would write the same outputs in {out_dir}; "
                             "use a BIDS layout or rename one")
        seen[stem] = image
        jobs.append(Job(key=stem, image=image, mask=out_dir / f"{stem}_mask{suffix}",
                        stripped=out_dir / f"{stem}_brain{suffix}", sidecar=out_dir / f"{stem}_mask.json",
                        thumbnail=out_dir / "qc" / f"{stem}.png"))
    return jobs


def is_complete(job: Job) -> bool:
    """Outputs all present and the sidecar (written last) says so."""
    if not (job.mask.exists() and job.stripped.exists() and job.sidecar.exists()):
        return False
    try:
        return bool(json.loads(job.sidecar.read_text()).get("complete"))
    except (OSError, ValueError):
        return False


# ------------------------------------------------------------------------ execution


def run_job(job: Job, options: StripOptions) -> Record:
    """Strip one case and write its outputs, sidecar and thumbnail; never raises.

    Outputs of an incomplete earlier attempt are replaced (the caller skips complete
    cases); an output path that is the input itself is refused.
    """
    started = time.perf_counter()
    try:
        from skullstrip.infer import strip_file

        for path in (job.mask, job.stripped, job.sidecar, job.thumbnail):
            if path.exists() and job.image.exists() and os.path.samefile(path, job.image):
                raise ValueError(f"{path}: output would overwrite the input")
            path.parent.mkdir(parents=True, exist_ok=True)
        result = strip_file(str(job.image), stripped_path=str(job.stripped), mask_path=str(job.mask),
                            json_path=str(job.sidecar), options=options, overwrite=True)
        mask = result.mask if result.mask.ndim == 3 else result.mask[..., 0]
        source = result.data
        qc.overlay_png(job.thumbnail, source if source.ndim == 3 else source[..., 0], mask, result.reference.affine,
                       title=f"{job.key}  {result.volume_ml:.0f} mL", dpi=50)
        record = Record(job.key, str(job.image), "done", result.volume_ml, time.perf_counter() - started,
                        dict(result.diagnostics), thumbnail=str(job.thumbnail))
        record.flags = qc_flags(record)
        sidecar = json.loads(job.sidecar.read_text())
        sidecar.update({"qc_flags": record.flags, "complete": True})
        write_atomically(job.sidecar, lambda temporary: temporary.write_text(json.dumps(sidecar, indent=2)))
        return record
    except Exception as error:  # a failing case is a result, not a crash of the batch
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return Record(job.key, str(job.image), "failed", seconds=time.perf_counter() - started, error=message)


def record_from_sidecar(job: Job) -> Record:
    """The record of a case completed by an earlier run."""
    sidecar = json.loads(job.sidecar.read_text())
    return Record(job.key, str(job.image), "skipped", sidecar.get("brain_volume_ml"), sidecar.get("seconds"),
                  sidecar.get("diagnostics", {}), sidecar.get("qc_flags", []),
                  thumbnail=str(job.thumbnail) if job.thumbnail.exists() else "")


def qc_flags(record: Record) -> list[str]:
    """Automatic reasons to look at a case (``skullstrip.qc.flags``)."""
    return qc.flags(record.volume_ml, record.diagnostics)


def _limit_threads(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)


def run_batch(jobs: Sequence[Job], options: StripOptions, n_jobs: int = 1, dask_scheduler: str | None = None,
              overwrite: bool = False, progress: bool = True) -> list[Record]:
    """Run every job (locally or on Dask), skipping complete ones; returns one record per job."""
    from tqdm import tqdm

    records: list[Record] = []
    todo = []
    for job in jobs:
        if not overwrite and is_complete(job):
            records.append(record_from_sidecar(job))
        else:
            todo.append(job)
    bar = tqdm(total=len(todo), disable=not progress, unit="scan", desc="stripping", dynamic_ncols=True)
    for record in _execute(todo, options, n_jobs, dask_scheduler):
        records.append(record)
        bar.update(1)
        if record.status == "failed":
            bar.write(f"failed: {record.image}: {record.error}")
    bar.close()
    order = {job.key: index for index, job in enumerate(jobs)}
    return sorted(records, key=lambda r: order[r.key])


def _execute(jobs: Sequence[Job], options: StripOptions, n_jobs: int, dask_scheduler: str | None
             ) -> Iterable[Record]:
    if not jobs:
        return
    if dask_scheduler:
        yield from _execute_dask(jobs, options, dask_scheduler)
        return
    cores = os.cpu_count() or 1
    n_jobs = max(1, min(n_jobs, len(jobs)))
    threads = options.threads or max(1, cores // n_jobs)
    options = StripOptions(**{**asdict(options), "threads": threads})
    if n_jobs == 1:
        for job in jobs:
            yield run_job(job, options)
        return
    with ProcessPoolExecutor(max_workers=n_jobs, initializer=_limit_threads, initargs=(threads,)) as pool:
        futures = [pool.submit(run_job, job, options) for job in jobs]
        for future in as_completed(futures):
            yield future.result()


def _execute_dask(jobs: Sequence[Job], options: StripOptions, scheduler: object) -> Iterable[Record]:
    """Send the jobs to a Dask cluster (an address like tcp://host:8786, or a Client)."""
    from distributed import Client
    from distributed import as_completed as dask_completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        if options.threads is None:  # one thread per Dask worker thread: no oversubscription
            options = StripOptions(**{**asdict(options), "threads": 1})
        futures = client.map(run_job, list(jobs), options=options, pure=False)
        for future in dask_completed(futures):
            yield future.result()
    finally:
        if client is not scheduler:
            client.close()


# ------------------------------------------------------------------- BIDS and report


def write_dataset_description(out_root: Path) -> Path:
    derivatives = out_root / "derivatives" / "skullstrip"
    derivatives.mkdir(parents=True, exist_ok=True)
    path = derivatives / "dataset_description.json"
    path.write_text(json.dumps({
        "Name": "skullstrip brain masks", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "skullstrip", "Version": __version__,
                         "Description": "brain extraction for any modality, trained on synthetic data"}],
    }, indent=2))
    return path


def write_report(records: Sequence[Record], path: Path) -> Path:
    """A static HTML page (works offline): thumbnails, volumes, times, flags; sortable table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = {s: sum(r.status == s for r in records) for s in ("done", "skipped", "failed")}
    flagged = sum(bool(r.flags) for r in records)
    rows = []
    for r in records:
        picture = ""
        if r.thumbnail and Path(r.thumbnail).exists():
            relative = os.path.relpath(r.thumbnail, path.parent)
            picture = f"<img src='{html.escape(relative)}' alt='{html.escape(r.key)}'>"
        flags = " ".join(f"<span class='flag'>{html.escape(f)}</span>" for f in r.flags)
        if r.status == "failed":
            flags = f"<span class='flag fail'>failed: {html.escape(r.error)}</span>"
        d = r.diagnostics
        rows.append(
            f"<tr data-flags='{len(r.flags) + (10 if r.status == 'failed' else 0)}'>"
            f"<td>{html.escape(r.key)}</td><td>{r.status}</td><td>{flags}</td>"
            f"<td>{_number(r.volume_ml, 0)}</td><td>{_number(r.seconds, 1)}</td>"
            f"<td>{_number(d.get('edge_fraction'), 3)}</td><td>{_number(d.get('uncertain_fraction'), 3)}</td>"
            f"<td>{_number(d.get('flip_dice'), 3)}</td><td>{_number(d.get('height_to_length'), 2)}</td>"
            f"<td>{picture}</td></tr>")
    flag_legend = "; ".join(f"<b>{name}</b> {html.escape(meaning)}" for name, meaning in qc.FLAG_MEANINGS.items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>skullstrip QC report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
th {{ cursor: pointer; background: #eee; }} img {{ height: 120px; }}
.flag {{ background: #f7c948; border-radius: 3px; padding: 1px 4px; margin-right: 2px; }}
.fail {{ background: #e5533d; color: white; }}
</style></head><body>
<h1>skullstrip QC report</h1>
<p>{len(records)} scans: {counts['done']} stripped now, {counts['skipped']} complete from an earlier run,
{counts['failed']} failed; {flagged} flagged. skullstrip {__version__}. Click a column header to sort.</p>
<p>Flags: {flag_legend}.</p>
<table id="cases"><thead><tr><th>case</th><th>status</th><th data-key="flags">flags</th><th>volume (mL)</th>
<th>seconds</th><th>edge fraction</th><th>uncertain fraction</th><th>flip Dice</th><th>height / length</th>
<th>overlay</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
<script>
document.querySelectorAll('#cases th').forEach((th, column) => th.addEventListener('click', () => {{
  const body = document.querySelector('#cases tbody');
  const rows = Array.from(body.rows);
  const cell = r => r.cells[column].innerText;
  const value = r => th.dataset.key === 'flags' ? -Number(r.dataset.flags)
      : (isNaN(parseFloat(cell(r))) ? cell(r) : parseFloat(cell(r)));
  const descending = th.dataset.order !== 'asc';
  rows.sort((a, b) => (value(a) > value(b) ? 1 : value(a) < value(b) ? -1 : 0) * (descending ? -1 : 1));
  th.dataset.order = descending ? 'asc' : 'desc';
  rows.forEach(r => body.appendChild(r));
}}));
</script>
</body></html>
"""
    return write_atomically(path, lambda temporary: temporary.write_text(page))


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def summary_lines(records: Sequence[Record]) -> list[str]:
    counts = {s: sum(r.status == s for r in records) for s in ("done", "skipped", "failed")}
    lines = [f"{len(records)} scans: {counts['done']} done, {counts['skipped']} skipped (complete), "
             f"{counts['failed']} failed, {sum(bool(r.flags) for r in records)} flagged"]
    lines += [f"  failed: {r.image}: {r.error}" for r in records if r.status == "failed"]
    return lines


__all__ = ["Job", "Record", "discover", "discover_bids", "plan_bids", "plan_flat", "run_batch", "run_job",
           "write_report", "write_dataset_description", "is_complete", "qc_flags", "summary_lines"]
