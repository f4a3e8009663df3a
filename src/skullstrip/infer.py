"""From a head scan to a brain mask, on one readable path.

    load -> conform (2 mm RAS head box) -> predict signed distance -> clean (largest
    brain, holes, border) -> resample the distance to the native grid -> intensity rules
    (CT bone and air, already-stripped input) -> threshold -> write

Only the continuous distance map crosses grids, so the mask's edge keeps sub-voxel
precision on any native grid (0.3 mm or 7 mm, oblique, thick slices) and is never
shifted by a nearest-neighbour round trip. Outputs reuse the input's header.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from skullstrip import __version__, conform, postprocess
from skullstrip.io import (
    ImageError,
    LoadedImage,
    check_affine,
    check_data,
    check_output_path,
    image_like,
    load_image,
    save_atomic,
    write_atomically,
)

log = logging.getLogger("skullstrip")

WEIGHTS_RESOURCE = "skullstrip.onnx"
OUTSIDE_MM = 25.0  # distance given to native voxels the working grid does not cover
OUTSIDE_HEAD_MM = 5.0  # least distance of voxels outside the head (conform.head_mask)
SOFT_EDGE_MM = 1.0  # width of the logistic that turns distance into a probability


@dataclass(frozen=True)
class StripOptions:
    """What to compute; defaults match ``skullstrip -i IN -m MASK``."""

    # the mask is distance < border, the distance being to the surface csf_fraction picks.
    # 0 with csf_fraction 0.25 since session 41: chosen with csf_fraction on five qc scans
    # outside eval/, against HD-BET's masks as the stand-in reference, for run46 (mean Dice
    # 0.9555) and again for run54 in session 60 (0.9589; bench/results/
    # calibration_hdbet_run54.md, training/README.md). The references
    # of our real scans hug the brain closer than the brain+CSF surface the network learnt
    # from BrainWeb (a thick CSF rim at the vertex). Sessions 35-40 (run40): -0.5 with 0.25;
    # session 34 (run38): -1 with 0.5, chosen the same way; until session 33, -1.5 on the
    # brain+CSF surface alone (chosen on eval/)
    border_mm: float = 0.0
    # cut bridges thinner than twice this (mm) between the brain and what the network
    # wrongly joined to it (neck, orbits); 0 keeps the whole largest component. 4 mm:
    # run4: mean Dice 0.9290 -> 0.9296 at border -1.5 (bench/results/postprocess_sweep_openings.md)
    opening_mm: float = 4.0
    # where the surface lies between the network's two outputs: 1 the brain with the CSF
    # around it (SynthStrip's convention), 0 the brain without it, between a weighted
    # mean of the two distances (references differ in how much of the CSF rim they keep;
    # HD-BET's, the experts' and the templates' keep part of it). 0.25 since
    # session 35, with border 0 since session 41 (see border_mm)
    csf_fraction: float = 0.25
    no_csf: bool = False  # the same as csf_fraction=0
    volumes: str = "mean"  # 4D: "mean", "first" or "each"
    fill: float | None = None
    threads: int | None = None
    device: str = "cpu"
    model_path: str | None = None
    # QC: agreement with the prediction on the left-right flipped scan (the pass that
    # mirror_average runs anyway; without it, twice the model time)
    flip_check: bool = False
    # average the distances of the scan and its left-right mirror (test-time augmentation;
    # twice the model time): the mask no longer depends on which hemisphere is on the left.
    # On by default since session 39: run40 0.9518 -> 0.9526 mean Dice on the calibration
    # scans (same chosen settings), then 0.94638 -> 0.94720 on eval/, 14 of 15 cases higher
    # (bench/results/calibration_hdbet_run40_mirror.md, training/README.md)
    mirror_average: bool = True
    # half-size (mm) of the box around the first pass's brain in which the network runs a
    # second time when the scan shows more than that (a neck, a whole-body FOV); 0: one
    # pass. Training crops are 128-224 mm boxes around the brain (shape_range 64-112 at
    # 2 mm, centre within 20 mm of the brain's): 112 is the largest, a view like those
    # the network learnt from that still holds a 190 mm brain whole (88, the median,
    # cut the poles of a large one). On heads with necks the first pass calls the skull
    # base brain: run18 0.9349 -> 0.9373 mean Dice, worst 0.888 -> 0.901 (docs/model.md)
    focus_mm: float = 112.0
    # voxel size (mm) of the grid the network runs on. The network learnt 2 mm grids
    # (``conform.WORKING_VOXEL_MM``) of BrainWeb heads, which are larger than most adults'
    # (brain+CSF about 1/0.9 of theirs in each direction, training/README.md run46): a
    # grid of v mm shows a head 2/v times its size, and the distances come back in mm.
    # The focus box scales with it, so the network sees as many voxels as it learnt from.
    # 2 mm: 1.95 won on the calibration scans (0.9571 against 0.9555) and tied on eval/
    # (0.94693 against 0.94726; training/README.md, session 42)
    working_voxel_mm: float = conform.WORKING_VOXEL_MM
    # native-grid intensity rules (postprocess): in a CT in Hounsfield units drop mask
    # voxels outside the brain-tissue window (bone, air); keep the region of an image
    # that another tool already skull-stripped instead of shrinking it again
    ct_window: bool = True
    keep_stripped: bool = True

    def __post_init__(self) -> None:
        # checked where options are made, so a batch refuses them once, before any scan
        if self.volumes not in ("mean", "first", "each"):
            raise ImageError(f"volumes must be mean, first or each, not {self.volumes!r}")
        if not 1.0 <= self.working_voxel_mm <= 4.0:
            raise ImageError(f"working_voxel_mm must lie in 1..4 mm (the network learnt 2), "
                             f"not {self.working_voxel_mm}")
        if not 0.0 <= self.csf_fraction <= 1.0:
            raise ImageError(f"csf_fraction must lie in 0..1 (0: no CSF, 1: all of it), not {self.csf_fraction}")


def options_with(**settings: object) -> StripOptions:
    """``StripOptions`` with the given settings; a setting of None keeps the default.

    The command line passes every flag, given or not; this keeps the model's defaults
    (e.g. its border) in one place, ``StripOptions``.
    """
    return StripOptions(**{name: value for name, value in settings.items() if value is not None})


@dataclass
class Result:
    """A stripping result on the input's native grid."""

    mask: np.ndarray  # uint8, 3D (or 4D with volumes="each")
    stripped: np.ndarray  # input dtype, input shape
    sdt: np.ndarray  # float32 mm to the (bordered) surface, negative inside
    volume_ml: float
    seconds: float
    reference: nib.spatialimages.SpatialImage
    data: np.ndarray  # the input as loaded (no second read for pictures or QC numbers)
    model: dict[str, object] = field(default_factory=dict)  # provenance: source, sha256, trained_steps
    stage_seconds: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, float] = field(default_factory=dict)

    @property
    def probability(self) -> np.ndarray:
        """A continuous brain map in [0, 1] (logistic of the distance, 0.5 on the surface)."""
        return (1 / (1 + np.exp(np.clip(self.sdt / SOFT_EDGE_MM, -50, 50)))).astype(np.float32)

    def mask_image(self) -> nib.spatialimages.SpatialImage:
        return image_like(self.mask, self.reference, np.uint8)

    def stripped_image(self) -> nib.spatialimages.SpatialImage:
        return image_like(self.stripped, self.reference, self.reference.get_data_dtype())

    def sdt_image(self) -> nib.spatialimages.SpatialImage:
        return image_like(self.sdt, self.reference, np.float32)


class Model:
    """A loaded network behind one method, ``predict``: working-grid image -> distances (mm).

    Two backends: ONNX Runtime for the shipped ``.onnx`` weights (the default: imports
    in a fraction of a second and runs the dilated convolutions about twice as fast as
    PyTorch on a CPU, so PyTorch is not needed to strip), and PyTorch for ``.pt``
    checkpoints, ``--device cuda`` and the network being trained.
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], source: str, sha256: str,
                 trained_steps: int, input_normalisation: str = "percentile") -> None:
        self._predict = predict
        self.source, self.sha256, self.trained_steps = source, sha256, trained_steps
        # conform.normalize_intensity's method for this network's input (its training's)
        self.input_normalisation = input_normalisation

    def predict(self, working: np.ndarray) -> np.ndarray:
        """(X, Y, Z) normalised image -> (2, X, Y, Z) signed distances in mm (brain, no-CSF brain)."""
        return self._predict(working)

    @classmethod
    def from_network(cls, network: object, device: str = "cpu", source: str = "network", step: int = 0) -> Model:
        """Wrap a PyTorch ``StripNet`` (e.g. the one being trained)."""
        import torch

        from skullstrip.model import DISTANCE_SCALE_MM

        def predict(working: np.ndarray) -> np.ndarray:
            network.eval()
            with torch.inference_mode():
                tensor = torch.from_numpy(np.ascontiguousarray(working))[None, None].to(device)
                return network(tensor)[0].float().cpu().numpy() * DISTANCE_SCALE_MM

        return cls(predict, source, "", step, network.config.input_normalisation)


def load_model(path: str | os.PathLike | None = None, device: str = "cpu", threads: int | None = None) -> Model:
    """The shipped weights (inside the package, offline) or a given ``.onnx``/``.pt`` file."""
    return _load_model_cached(str(path) if path else None, device, threads)


@functools.lru_cache(maxsize=4)
def _load_model_cached(path: str | None, device: str, threads: int | None) -> Model:
    if path is None:
        source = resources.files("skullstrip") / "weights" / WEIGHTS_RESOURCE
        if not source.is_file():
            raise ImageError(f"the package has no model weights ({source}); reinstall skullstrip")
        raw, label = source.read_bytes(), f"skullstrip/weights/{WEIGHTS_RESOURCE}"
    else:
        if not os.path.isfile(path):
            raise ImageError(f"{path}: no such weights file")
        raw, label = Path(path).read_bytes(), path
    digest = hashlib.sha256(raw).hexdigest()[:16]
    if raw[:2] == b"PK":  # a PyTorch zip archive (checkpoint or exported state dict)
        return _torch_model(raw, label, digest, device)
    if device != "cpu":
        raise ImageError(f"device {device!r} needs PyTorch weights (.pt); the ONNX model runs on the CPU")
    return _onnx_model(raw, label, digest, threads)


def _onnx_model(raw: bytes, label: str, digest: str, threads: int | None) -> Model:
    import onnxruntime

    session_options = onnxruntime.SessionOptions()
    session_options.intra_op_num_threads = threads or os.cpu_count() or 1
    session_options.inter_op_num_threads = 1
    # no memory arena: the arena keeps every block it ever took, and the passes of one scan
    # (whole head, focus box, each with its mirror) have different shapes. Peak RSS of the
    # command on a 256^3 T1 with the mirror average: about 1 GB with the arena, half that
    # without, for about 5 % more time a pass (session 39, docs/model.md)
    session_options.enable_cpu_mem_arena = False
    session = onnxruntime.InferenceSession(raw, session_options, providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    scale = float(metadata.get("distance_scale_mm", 10.0))
    input_name = session.get_inputs()[0].name

    def predict(working: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(working, dtype=np.float32)[None, None]
        return session.run(None, {input_name: batch})[0][0] * np.float32(scale)

    # exports made before the setting existed were all trained on percentile scaling
    normalisation = json.loads(metadata.get("model_config", "{}")).get("input_normalisation", "percentile")
    return Model(predict, label, digest, int(metadata.get("trained_steps", 0)), normalisation)


def _torch_model(raw: bytes, label: str, digest: str, device: str) -> Model:
    try:
        import torch
    except ImportError:
        raise ImageError(f"{label}: PyTorch weights need PyTorch: pip install 'skullstrip[train]'") from None
    from skullstrip.model import network_from_checkpoint

    state = torch.load(BytesIO(raw), map_location=device, weights_only=False)
    network = network_from_checkpoint(state).to(device)
    model = Model.from_network(network, device, label, int(state.get("step", 0)))
    model.sha256 = digest
    return model


def predict_distance(volume: np.ndarray, affine: np.ndarray, model: Model, options: StripOptions,
                     timings: dict[str, float] | None = None,
                     diagnostics: dict[str, float] | None = None) -> np.ndarray:
    """Signed distance (mm) to the cleaned, bordered brain surface on the volume's own grid.

    The network first sees the whole head. When the head box is larger than the focus
    box (``options.focus_mm`` around the first pass's brain), it runs again on that box
    only, so that it sees the brain in a field of view like its training crops; coarse
    to fine, with the first pass only locating the brain.

    ``diagnostics`` receives QC numbers: ``uncertain_fraction`` (voxels within 1 mm of
    the surface per brain voxel: a confident network draws a thin band), ``focus_pass``
    (1 when the second pass ran) and, with ``options.flip_check``, ``flip_dice``
    (agreement with the prediction on the left-right mirrored scan; a brain is nearly
    symmetric, a confused model is not). ``options.mirror_average`` averages the two
    predictions (test-time augmentation).
    """
    timings = {} if timings is None else timings
    diagnostics = {} if diagnostics is None else diagnostics
    clock = time.perf_counter()
    reduced, reduced_affine = conform.reduce_to_working_resolution(volume, affine, options.working_voxel_mm)
    finite = np.isfinite(reduced)
    if not finite.all():  # NaN/Inf become background (a new array: the input stays untouched)
        reduced = np.where(finite, reduced, reduced[finite].min() if finite.any() else 0.0)
    head = conform.head_box(reduced, reduced_affine)
    timings["conform"] = timings.get("conform", 0) + time.perf_counter() - clock

    cleaned, grid = _predict_in_box(reduced, reduced_affine, volume.shape, affine, head, model, options,
                                    timings, diagnostics)
    focus = focus_box(cleaned, grid.affine, head, options) if options.focus_mm > 0 else None
    diagnostics["focus_pass"] = float(focus is not None)
    if focus is not None:
        cleaned, grid = _predict_in_box(reduced, reduced_affine, volume.shape, affine, focus, model, options,
                                        timings, diagnostics)

    clock = time.perf_counter()
    native = conform.resample(cleaned, grid.affine, volume.shape[:3], affine, order=1, cval=OUTSIDE_MM)
    timings["resample_back"] = timings.get("resample_back", 0) + time.perf_counter() - clock
    return native


def focus_box(cleaned: np.ndarray, grid_affine: np.ndarray, head: tuple[np.ndarray, np.ndarray] | None,
              options: StripOptions) -> tuple[np.ndarray, np.ndarray] | None:
    """World box of half-size ``options.focus_mm`` (times ``options.working_voxel_mm`` / 2 mm)
    around the brain of a first pass, cut to the head box; None when the head already fits
    in it or no brain was found.

    ``cleaned`` is the first pass's cleaned distance (already bordered: the mask is < 0).
    """
    inside = cleaned < 0
    if not inside.any():
        return None
    centre = conform.apply_affine(grid_affine, np.asarray([ndi.center_of_mass(inside)]))[0]
    half_size = options.focus_mm * options.working_voxel_mm / conform.WORKING_VOXEL_MM
    low, high = centre - half_size, centre + half_size
    if head is None:  # no head box: the first pass saw the whole (RAS) grid, first to last voxel
        ends = conform.apply_affine(grid_affine, np.array([np.zeros(3), np.subtract(cleaned.shape, 1)]))
        head = ends[0], ends[1]
    if np.all(head[0] >= low) and np.all(head[1] <= high):
        return None
    return np.maximum(head[0], low), np.minimum(head[1], high)


def _predict_in_box(reduced: np.ndarray, reduced_affine: np.ndarray, native_shape: tuple[int, ...],
                    native_affine: np.ndarray, box: tuple[np.ndarray, np.ndarray] | None, model: Model,
                    options: StripOptions, timings: dict[str, float],
                    diagnostics: dict[str, float]) -> tuple[np.ndarray, conform.WorkingGrid]:
    """One network pass on the working grid over ``box``: the cleaned distance and the grid."""
    clock = time.perf_counter()
    voxel_mm = options.working_voxel_mm
    grid = conform.working_grid_for(native_shape, native_affine, box, voxel_mm)
    working = conform.resample(reduced, reduced_affine, grid.shape, grid.affine, order=1, cval=float(reduced.min()),
                               prefilter_sigma_vox=conform.antialias_sigma(reduced_affine, voxel_mm))
    working = conform.normalize_intensity(working, model.input_normalisation)
    timings["conform"] = timings.get("conform", 0) + time.perf_counter() - clock

    clock = time.perf_counter()
    distance = _surface_distance(model.predict(working), options)
    if options.flip_check or options.mirror_average:  # working grids are RAS: axis 0 is left-right
        mirrored = _surface_distance(model.predict(np.ascontiguousarray(working[::-1])), options)[::-1]
        if options.flip_check:
            inside, inside_mirrored = distance < options.border_mm, mirrored < options.border_mm
            diagnostics["flip_dice"] = float(2 * (inside & inside_mirrored).sum()
                                             / max(inside.sum() + inside_mirrored.sum(), 1))
        if options.mirror_average:
            distance = 0.5 * (distance + mirrored)
    distance = np.where(conform.head_mask(working), distance, np.maximum(distance, OUTSIDE_HEAD_MM))
    inside = distance < options.border_mm
    band = np.abs(distance - options.border_mm) < 1.0
    diagnostics["uncertain_fraction"] = float(band.sum() / max(inside.sum(), 1))
    timings["model"] = timings.get("model", 0) + time.perf_counter() - clock

    clock = time.perf_counter()
    cleaned = postprocess.clean_distance_map(distance, options.border_mm, options.opening_mm, voxel_mm)
    timings["postprocess"] = timings.get("postprocess", 0) + time.perf_counter() - clock
    return cleaned, grid


def _surface_distance(outputs: np.ndarray, options: StripOptions) -> np.ndarray:
    """The distance (mm) to the surface the options ask for, from the network's two outputs.

    The network measures in its own 2 mm voxels; on a grid of other voxels the weights of
    the mean also rescale to mm, so the conversion costs no pass of its own.
    """
    fraction = 0.0 if options.no_csf else options.csf_fraction
    to_mm = options.working_voxel_mm / conform.WORKING_VOXEL_MM
    return np.float32(fraction * to_mm) * outputs[0] + np.float32((1.0 - fraction) * to_mm) * outputs[1]


def apply_intensity_rules(sdt: np.ndarray, volume: np.ndarray, options: StripOptions,
                          diagnostics: dict[str, float], timings: dict[str, float] | None = None) -> np.ndarray:
    """The native-grid distance after the intensity rules that apply to this scan.

    ``diagnostics`` records which rule changed the mask (``already_stripped``,
    ``ct_removed_fraction``: the share of the network's mask outside the CT brain window).
    """
    clock = time.perf_counter()
    if options.keep_stripped:
        # the previous tool's edge lies near the network's unbordered surface (the one
        # csf_fraction picks), not near the bordered one
        stripped = postprocess.already_stripped_brain(volume, sdt, surface_mm=-options.border_mm)
        diagnostics["already_stripped"] = float(stripped is not None)
        if stripped is not None:
            log.info("the input looks already skull-stripped: keeping its nonzero region")
            sdt = postprocess.with_mask(sdt, stripped)
    inside = sdt < 0
    if options.ct_window and postprocess.is_hounsfield(volume, inside):
        brain = postprocess.hounsfield_brain(volume, inside)
        diagnostics["ct_removed_fraction"] = float(1 - brain.sum() / inside.sum())
        sdt = postprocess.with_mask(sdt, brain)
    if timings is not None:
        timings["intensity_rules"] = timings.get("intensity_rules", 0) + time.perf_counter() - clock
    return sdt


def strip(image: nib.spatialimages.SpatialImage | str | os.PathLike | tuple[np.ndarray, np.ndarray],
          options: StripOptions | None = None, **option_values: object) -> Result:
    """Brain-extract one image (3D or 4D). Accepts a nibabel image, a path or ``(array, affine)``.

    Keyword arguments override fields of :class:`StripOptions`, e.g.
    ``strip("t1.nii.gz", border_mm=0, no_csf=True)``.
    """
    started = time.perf_counter()
    options = _options(options, option_values)
    timings: dict[str, float] = {}
    diagnostics: dict[str, float] = {}
    clock = time.perf_counter()
    loaded = _as_loaded(image)
    check_affine(loaded)
    timings["load"] = time.perf_counter() - clock
    model = load_model(options.model_path, options.device, options.threads)
    data, affine = loaded.data, loaded.affine

    def distance(volume: np.ndarray) -> np.ndarray:
        native = predict_distance(volume, affine, model, options, timings, diagnostics)
        return apply_intensity_rules(native, volume, options, diagnostics, timings)

    if data.ndim == 4 and options.volumes == "each":
        sdt = np.stack([distance(data[..., t]) for t in range(data.shape[3])], axis=-1)
    else:
        if data.ndim == 4:
            reference = data[..., 0] if options.volumes == "first" else data.mean(axis=3, dtype=np.float32)
        else:
            reference = data
        sdt = distance(reference)
    mask = (sdt < 0).astype(np.uint8)
    first_mask = mask if mask.ndim == 3 else mask[..., 0]
    diagnostics["edge_fraction"] = _edge_fraction(first_mask)
    diagnostics["height_to_length"] = _height_to_length(first_mask, affine)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    volume_ml = float(mask.sum() * voxel_ml / (mask.shape[3] if mask.ndim == 4 else 1))
    stripped = _apply_mask(data, mask, options.fill)
    return Result(mask=mask, stripped=stripped, sdt=sdt.astype(np.float32, copy=False), volume_ml=volume_ml,
                  seconds=time.perf_counter() - started, reference=loaded.image, data=data,
                  model={"source": model.source, "sha256": model.sha256, "trained_steps": model.trained_steps,
                         "input_normalisation": model.input_normalisation},
                  stage_seconds=timings,
                  diagnostics=diagnostics)


def strip_file(image_path: str, stripped_path: str | None = None, mask_path: str | None = None,
               sdt_path: str | None = None, json_path: str | None = "auto", options: StripOptions | None = None,
               overwrite: bool = False) -> Result:
    """Strip a file and write the requested outputs atomically (all or nothing)."""
    options = options or StripOptions()
    wanted = {"stripped": stripped_path, "mask": mask_path, "sdt": sdt_path}
    outputs = {kind: check_output_path(p, [image_path], overwrite) for kind, p in wanted.items() if p}
    if not outputs:
        raise ImageError("nothing to write: give a stripped image, a mask or a distance map path")
    if len({str(p.resolve()) for p in outputs.values()}) < len(outputs):
        raise ImageError("two outputs have the same path")
    result = strip(image_path, options)
    clock = time.perf_counter()
    images = {}
    for kind, path in outputs.items():
        images[path] = {"stripped": result.stripped_image, "mask": result.mask_image, "sdt": result.sdt_image}[kind]()
    save_atomic(images)
    result.stage_seconds["write"] = time.perf_counter() - clock
    if json_path:
        sidecar = _sidecar_path(next(iter(outputs.values()))) if json_path == "auto" else Path(json_path)
        _write_json(sidecar, _provenance(image_path, result, options, outputs))
    log.debug("stage seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in result.stage_seconds.items()))
    return result


def _options(options: StripOptions | None, values: dict[str, object]) -> StripOptions:
    options = options or StripOptions()
    if values:
        import dataclasses

        unknown = set(values) - set(StripOptions.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown options {sorted(unknown)}")
        options = dataclasses.replace(options, **values)
    return options


def _as_loaded(image: object) -> LoadedImage:
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, tuple) and len(image) == 2:
        array, affine = image
        array = check_data(np.asanyarray(array), "array input")
        nifti = nib.Nifti1Image(array, np.asarray(affine, dtype=float))
        return LoadedImage(image=nifti, data=array, path="array input")
    if isinstance(image, nib.spatialimages.SpatialImage):
        name = image.get_filename() or "image"
        return LoadedImage(image=image, data=check_data(np.asanyarray(image.dataobj), name), path=name)
    raise TypeError("image must be a nibabel image, a path, or an (array, affine) tuple")


def _edge_fraction(mask: np.ndarray) -> float:
    """Fraction of mask voxels on the field-of-view faces (a brain cut by the scan's edge)."""
    total = int(mask.sum())
    if total == 0:
        return 0.0
    faces = np.zeros(mask.shape, dtype=bool)
    for axis in range(3):
        index = [slice(None)] * 3
        for end in (0, -1):
            index[axis] = end
            faces[tuple(index)] = True
    return float((mask.astype(bool) & faces).sum() / total)


def _height_to_length(mask: np.ndarray, affine: np.ndarray) -> float:
    """The mask's superior-inferior extent over its anterior-posterior extent, in world mm.

    A brain is longer than it is tall: the reference masks of ../shared/data/eval span
    0.71-0.84, a head-and-neck T1 masked down to the foramen magnum 0.88. A mask that
    leaked through the skull base into the neck becomes taller than long (1.08 for such
    a leak), which neither the volume nor the field-of-view edge shows. A head whose
    header swaps the superior and anterior axes also measures above 1, which is as
    worth a look.
    """
    # the uint8 mask is used as it is: argmax finds a column's first 1 without a boolean copy
    columns = mask.any(axis=2)
    if not columns.any():
        return 0.0
    # a linear function of (i, j, k) is extreme at a column's first or last mask voxel, so
    # two 2D index maps give exact world extents without listing every voxel
    i, j = np.nonzero(columns)
    first_k = mask.argmax(axis=2)[columns]
    last_k = mask.shape[2] - 1 - mask[..., ::-1].argmax(axis=2)[columns]
    ends = np.stack([np.concatenate([i, i]), np.concatenate([j, j]), np.concatenate([first_k, last_k])])
    # world y and z of those voxel centres; only two rows of the affine are needed
    posterior_anterior, inferior_superior = (affine[row, :3] @ ends for row in (1, 2))
    length = float(np.ptp(posterior_anterior))
    return float(np.ptp(inferior_superior)) / length if length > 0 else 0.0


def _apply_mask(data: np.ndarray, mask: np.ndarray, fill: float | None) -> np.ndarray:
    if fill is None:
        fill = 0 if data.dtype.kind == "u" or float(np.nanmin(data)) >= 0 else float(np.nanmin(data))
    keep = mask.astype(bool)
    if data.ndim == 4 and keep.ndim == 3:
        keep = keep[..., None]
    return np.where(keep, data, np.asarray(fill).astype(data.dtype))


def _sidecar_path(output: Path) -> Path:
    name = output.name
    for suffix in (".nii.gz", ".nii", ".mgz", ".mgh"):
        if name.endswith(suffix):
            return output.with_name(name[: -len(suffix)] + ".json")
    return output.with_suffix(".json")


def _provenance(image_path: str, result: Result, options: StripOptions, outputs: dict[str, Path]) -> dict:
    return {
        "skullstrip_version": __version__,
        "model": result.model,
        "input": os.path.abspath(image_path),
        "outputs": {kind: str(path) for kind, path in outputs.items()},
        "brain_volume_ml": round(result.volume_ml, 2),
        "seconds": round(result.seconds, 3),
        "stage_seconds": {k: round(v, 3) for k, v in result.stage_seconds.items()},
        "diagnostics": {k: round(v, 4) for k, v in result.diagnostics.items()},
        "parameters": {"border_mm": options.border_mm, "opening_mm": options.opening_mm, "no_csf": options.no_csf,
                       "csf_fraction": options.csf_fraction, "volumes": options.volumes, "fill": options.fill,
                       "threads": options.threads, "device": options.device, "flip_check": options.flip_check,
                       "mirror_average": options.mirror_average, "focus_mm": options.focus_mm,
                       "working_voxel_mm": options.working_voxel_mm,
                       "ct_window": options.ct_window,
                       "keep_stripped": options.keep_stripped},
    }


def _write_json(path: Path, content: dict) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(json.dumps(content, indent=2)))
