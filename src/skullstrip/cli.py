"""Command line: ``skullstrip -i IN -o OUT -m MASK`` and the subcommands.

The main form strips one scan, with flags SynthStrip users know. Subcommands:
``synth`` (make synthetic training images), ``train`` (train the model), ``eval``
(measure masks against references), ``qc`` (overlay pictures without references).
Errors print one line naming the file and the problem and exit non-zero; ``-v`` adds
the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from skullstrip import __version__

if TYPE_CHECKING:
    from skullstrip.infer import StripOptions

log = logging.getLogger("skullstrip")

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

STRIP_EXAMPLES = """examples:
  skullstrip -i t1.nii.gz -o brain.nii.gz -m mask.nii.gz
  skullstrip -i flair.nii.gz -m mask.nii.gz -b 2          # 2 mm larger mask
  skullstrip -i ct.nii.gz -m mask.nii.gz -d sdt.nii.gz    # also the distance map
  skullstrip -i bold.nii.gz -o bold_brain.nii.gz           # 4D: one mask from the mean
subcommands: skullstrip {batch,synth,train,eval,qc} --help
"""


class UserError(Exception):
    """A problem with the user's input or environment: reported in one line, no traceback."""


def _strip_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skullstrip",
        description="Remove skull and non-brain tissue from a head scan of any modality (MRI, CT, PET, DWI, fMRI).",
        epilog=STRIP_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-i", "--image", required=True, help="input image (NIfTI .nii/.nii.gz or FreeSurfer .mgz)")
    parser.add_argument("-o", "--out", help="stripped image (input's grid, header and data type)")
    parser.add_argument("-m", "--mask", help="binary brain mask (uint8)")
    parser.add_argument("-d", "--sdt", help="signed distance to the brain surface in mm (negative inside)")
    parser.add_argument("-b", "--border", type=float, default=None,
                        help="mask border in mm from the surface --csf-fraction picks: positive grows, negative "
                             "shrinks (default: the model's setting, 0)")
    parser.add_argument("--opening", type=float, default=None,
                        help="cut bridges thinner than twice this many mm between the brain and non-brain "
                             "parts wrongly joined to it; 0 turns it off (default: the model's setting)")
    _add_csf_flags(parser)
    parser.add_argument("--volumes", choices=("mean", "first", "each"), default="mean",
                        help="4D input: one mask from the mean or first volume (default mean), or one per volume")
    parser.add_argument("--mirror-average", action=argparse.BooleanOptionalAction, default=None,
                        help="average with the prediction on the left-right mirrored scan (default on; "
                             "--no-mirror-average halves the model time)")
    _add_grid_flags(parser)
    _add_intensity_rule_flags(parser)
    parser.add_argument("--fill", type=float, default=None,
                        help="value of non-brain voxels in the stripped image (default: the image minimum, "
                             "0 for unsigned data)")
    parser.add_argument("--json", help="JSON sidecar path (default: next to the first output)")
    parser.add_argument("--no-json", action="store_true", help="write no JSON sidecar")
    parser.add_argument("--force", action="store_true", help="allow overwriting existing outputs")
    parser.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--model", help="weights file to use instead of the shipped model")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="print stage timings and tracebacks")
    parser.add_argument("--version", action="version", version=f"skullstrip {__version__}")
    return parser


def _add_csf_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-csf", action="store_true", help="exclude the CSF around the brain from the mask")
    group.add_argument("--csf-fraction", type=float, default=None, metavar="F",
                       help="place the surface between the brain without (0) and with (1) the CSF around "
                            "it (default 0.25)")


def _add_grid_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--focus", type=float, default=None, metavar="MM",
                        help="half-size of the box around the first pass's brain in which the network looks "
                             "again when the scan shows more (neck, body); 0: one pass (default: 112)")
    parser.add_argument("--working-voxel", type=float, default=None, metavar="MM",
                        help="voxel size of the grid the network runs on, 1-4 mm: a finer grid shows the head "
                             "larger to the network, at (2/MM)^3 times the model time (default: the model's "
                             "setting, 2)")


def _add_intensity_rule_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-ct-window", action="store_true",
                        help="keep bone and air in the mask of a CT in Hounsfield units (by default voxels "
                             "outside -50..150 HU are dropped)")
    parser.add_argument("--no-keep-stripped", action="store_true",
                        help="on an image another tool already skull-stripped, use the network's mask "
                             "instead of keeping the image's nonzero region")


def _run_strip(args: argparse.Namespace) -> int:
    from skullstrip import qc
    from skullstrip.infer import options_with, strip_file

    if not (args.out or args.mask or args.sdt):
        raise UserError("nothing to write: give at least one of -o/--out, -m/--mask, -d/--sdt")
    options = options_with(border_mm=args.border, opening_mm=args.opening, no_csf=args.no_csf,
                           csf_fraction=args.csf_fraction, volumes=args.volumes, fill=args.fill,
                           threads=args.threads, device=args.device, model_path=args.model,
                           mirror_average=args.mirror_average, focus_mm=args.focus,
                           working_voxel_mm=args.working_voxel,
                           ct_window=not args.no_ct_window, keep_stripped=not args.no_keep_stripped)
    result = strip_file(args.image, stripped_path=args.out, mask_path=args.mask, sdt_path=args.sdt,
                        json_path=None if args.no_json else (args.json or "auto"), options=options,
                        overwrite=args.force)
    if not args.quiet:
        print(f"{args.image}: brain volume {result.volume_ml:.0f} mL, {result.seconds:.1f} s")
    # the mask is written either way: a flag asks for a look, it is not an error
    for flag in qc.flags(result.volume_ml, result.diagnostics):
        print(f"skullstrip: warning: {args.image}: {flag}: {qc.FLAG_MEANINGS[flag]}; check the mask", file=sys.stderr)
    return EXIT_OK


def _synth_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skullstrip synth", description="Write synthetic training images.")
    parser.add_argument("--labels", help="folder of 1 mm label maps (BrainWeb labels); default: procedural heads")
    parser.add_argument("--n", type=int, default=16, help="number of samples (default 16)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modality", choices=("mri", "ct", "pet", "epi", "mra"), help="force one modality family")
    parser.add_argument("--preview", action="store_true", help="also write preview.png (three planes, mask outline)")
    parser.add_argument("--real", nargs="*", default=(), help="real scans to show beside the synthetic ones")
    return parser


def _run_synth(args: argparse.Namespace) -> int:
    from skullstrip.synth import write_samples

    write_samples(labels_dir=args.labels, n=args.n, out_dir=args.out, seed=args.seed, modality=args.modality,
                  preview=args.preview, real_images=args.real)
    return EXIT_OK


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skullstrip train", description="Train the model on synthetic heads.")
    parser.add_argument("--labels", required=True, help="folder of 1 mm label maps (BrainWeb labels)")
    parser.add_argument("--config", help="training recipe (JSON; fields of skullstrip.train.TrainConfig)")
    parser.add_argument("--out", required=True, help="run folder (checkpoint, log, curves)")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    parser.add_argument("--eval-manifest", help="real scans to monitor Dice on at each validation (never trained on)")
    parser.add_argument("--max-minutes", type=float, help="stop cleanly after this many minutes")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def _run_train(args: argparse.Namespace) -> int:
    from skullstrip.train import TrainConfig, train

    config = TrainConfig.load(args.config) if args.config else TrainConfig()
    monitor = None
    if args.eval_manifest:
        from skullstrip.evaluate import real_scan_monitor

        monitor = real_scan_monitor(args.eval_manifest)
    train(args.labels, args.out, config, resume=args.resume, monitor=monitor, progress=not args.quiet,
          max_minutes=args.max_minutes)
    return EXIT_OK


def _eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skullstrip eval",
        description="Dice, HD95, ASSD and volume errors against reference masks; per-modality tables, Wilcoxon "
                    "tests and plots.",
        epilog="example: skullstrip eval ../shared/data/eval/manifest.csv --out results/ "
               "--method synthstrip=masks/synthstrip",
    )
    parser.add_argument("manifest", help="CSV with columns case, modality, image, mask (paths relative to it)")
    parser.add_argument("--out", required=True, help="report folder (cases.csv, summary.md, dice.png, hd95.png)")
    parser.add_argument("--method", action="append", default=[], metavar="NAME=FOLDER",
                        help="another tool's masks, FOLDER/CASE.nii.gz; repeatable")
    parser.add_argument("--no-model", action="store_true", help="only score the --method folders")
    parser.add_argument("-b", "--border", type=float, default=None,
                        help="border for our model (mm; default: the model's)")
    _add_csf_flags(parser)
    parser.add_argument("--model", help="weights file instead of the shipped model")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def _run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from skullstrip.evaluate import evaluate_manifest

    methods = {}
    for item in args.method:
        name, _, folder = item.partition("=")
        if not name or not folder or not Path(folder).is_dir():
            raise UserError(f"--method {item!r}: expected NAME=FOLDER with an existing folder")
        methods[name] = Path(folder)
    rows = evaluate_manifest(args.manifest, args.out, methods, run_model=not args.no_model,
                             options=_model_options(args), progress=not args.quiet)
    if not args.quiet:
        print(Path(args.out, "summary.md").read_text())
    return EXIT_OK if rows else EXIT_ERROR


def _model_options(args: argparse.Namespace) -> StripOptions:
    """Our model's settings from the eval and qc commands' flags; the rest are its defaults."""
    from skullstrip.infer import options_with

    return options_with(border_mm=args.border, no_csf=args.no_csf, csf_fraction=args.csf_fraction,
                        model_path=args.model)


def _qc_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skullstrip qc",
                                     description="Overlay pictures and an index page for scans without masks.")
    parser.add_argument("manifest", help="CSV with columns case, modality, image")
    parser.add_argument("--out", required=True, help="folder for CASE.png, index.html and qc.csv")
    parser.add_argument("-b", "--border", type=float, default=None, help="mask border (mm; default: the model's)")
    _add_csf_flags(parser)
    parser.add_argument("--model", help="weights file instead of the shipped model")
    parser.add_argument("-q", "--quiet", action="store_true")
    return parser


def _run_qc(args: argparse.Namespace) -> int:
    from skullstrip.evaluate import qc_manifest

    rows = qc_manifest(args.manifest, args.out, options=_model_options(args), progress=not args.quiet)
    failed = [r for r in rows if r.get("error")]
    for row in failed:
        print(f"skullstrip: {row['case']}: {row['error']}", file=sys.stderr)
    return EXIT_ERROR if failed else EXIT_OK


def _batch_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skullstrip batch",
        description="Strip many scans: files, globs, .txt lists or a BIDS dataset; resumable; QC report.",
        epilog="examples:\n  skullstrip batch /data/bids --out /data/bids --modality T1w,FLAIR --jobs 2\n"
               "  skullstrip batch 'scans/*.nii.gz' --out masks/ --dask-scheduler tcp://head:8786",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", help="image files, glob patterns, .txt lists of paths, or a BIDS root")
    parser.add_argument("--out", required=True,
                        help="output root (BIDS: derivatives/skullstrip is created inside it) or flat folder")
    parser.add_argument("--flat", action="store_true", help="flat output folder even for a BIDS input")
    parser.add_argument("--modality", default="", help="BIDS suffixes to take, e.g. T1w,T2w,FLAIR,bold")
    parser.add_argument("--subject", default="", help="BIDS subjects to take, e.g. 01,02")
    parser.add_argument("--jobs", type=int, default=1, help="local worker processes (default 1)")
    parser.add_argument("--dask-scheduler", help="address of an existing Dask scheduler (tcp://host:8786)")
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose outputs are complete")
    parser.add_argument("-b", "--border", type=float, default=None, help="mask border (mm; default: the model's)")
    parser.add_argument("--opening", type=float, default=None, help="as for skullstrip strip")
    _add_csf_flags(parser)
    parser.add_argument("--no-flip-check", action="store_true",
                        help="skip the flip-disagreement QC number (with --no-mirror-average too, "
                             "the mirrored pass and half the model time)")
    parser.add_argument("--mirror-average", action=argparse.BooleanOptionalAction, default=None,
                        help="average with the mirrored-scan prediction (default on; free when the flip check runs)")
    _add_grid_flags(parser)
    _add_intensity_rule_flags(parser)
    parser.add_argument("-t", "--threads", type=int, default=None, help="threads per worker (default cores/jobs)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def _run_batch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from skullstrip import batch
    from skullstrip.infer import options_with

    # options first: bad settings are refused before any folder is made or scan read
    options = options_with(border_mm=args.border, opening_mm=args.opening, no_csf=args.no_csf,
                           csf_fraction=args.csf_fraction, threads=args.threads,
                           flip_check=not args.no_flip_check, mirror_average=args.mirror_average,
                           focus_mm=args.focus, working_voxel_mm=args.working_voxel,
                           ct_window=not args.no_ct_window,
                           keep_stripped=not args.no_keep_stripped)
    split = [s.strip() for s in args.modality.split(",") if s.strip()]
    subjects = [s.strip() for s in args.subject.split(",") if s.strip()]
    images = batch.discover(args.inputs, split, subjects)
    if not images:
        raise UserError("no input images found")
    out = Path(args.out)
    bids_root = Path(args.inputs[0]) if len(args.inputs) == 1 and batch.is_bids_root(Path(args.inputs[0])) else None
    if bids_root is not None and not args.flat:
        jobs = batch.plan_bids(images, bids_root, out)
        batch.write_dataset_description(out)
        report = out / "derivatives" / "skullstrip" / "qc" / "index.html"
    else:
        out.mkdir(parents=True, exist_ok=True)
        jobs = batch.plan_flat(images, out)
        report = out / "qc" / "index.html"
    records = batch.run_batch(jobs, options, n_jobs=args.jobs, dask_scheduler=args.dask_scheduler,
                              overwrite=args.overwrite, progress=not args.quiet)
    batch.write_report(records, report)
    for line in batch.summary_lines(records):
        print(line, file=sys.stderr if line.startswith("  failed") else sys.stdout)
    print(f"QC report: {report}")
    return EXIT_ERROR if any(r.status == "failed" for r in records) else EXIT_OK


SUBCOMMANDS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {
    "synth": (_synth_parser, _run_synth),
    "train": (_train_parser, _run_train),
    "eval": (_eval_parser, _run_eval),
    "qc": (_qc_parser, _run_qc),
    "batch": (_batch_parser, _run_batch),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        make_parser, run = SUBCOMMANDS[argv[0]]
        args = make_parser().parse_args(argv[1:])
    else:
        args = _strip_parser().parse_args(argv)
        run = _run_strip
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING if getattr(args, "quiet", False)
                        else logging.INFO, format="%(message)s")
    try:
        return run(args)
    except KeyboardInterrupt:
        print("skullstrip: interrupted", file=sys.stderr)
        return 130
    except (UserError, FileNotFoundError, FileExistsError, PermissionError, ValueError, OSError) as error:
        if verbose:
            raise
        print(f"skullstrip: error: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
