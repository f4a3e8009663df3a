"""Train the network on synthetic heads only, on a CPU, resumably.

A run lives in one output folder: ``config.json`` (the recipe), ``checkpoint.pt``
(model, optimiser, step; replaced atomically every few minutes), ``log.csv`` (one row
per logged step, validation rows included) and ``curves.png``. ``--resume`` continues
from the checkpoint with the same seeds, so a run split over several sessions sees the
same sample sequence as an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from skullstrip import synth
from skullstrip.io import write_atomically
from skullstrip.model import (
    DISTANCE_SCALE_MM,
    ModelConfig,
    StripNet,
    count_parameters,
    network_from_checkpoint,
    shipped_weights,
)

LOSS_CLIP_MM = 20.0
SOFT_BOUNDARY_MM = 1.5
# tissue further than this outside the brain is never a boundary call: calling it brain
# is the leak (neck, skull base, scalp) that Dice and the surface-weighted L1 let pass
FAR_OUTSIDE_MM = 6.0
# voxels this close to the true surface measure where a sample's predicted surface lies
# (surface_offset): the band a mask's boundary moves through when it is too big or small
OFFSET_BAND_MM = 6.0
# channels-last 3D tensors let oneDNN skip a reorder around every convolution: a training
# step of run38's network on its own training crops takes 1.39 s instead of 2.28 s here, the
# same numbers to float rounding (bench/train_step.py, bench/results/train_step.md)
TRAINING_LAYOUT = torch.channels_last_3d
# at batch 1 PyTorch's CPU convolution uses oneDNN for a 3x3x3 kernel only when the input's
# N*C*X*Y exceeds this (aten use_mkldnn; "for some case, native is faster"), see axis_order
ONEDNN_MIN_INPUT = 20480
# compute precision of the network's forward and backward passes (TrainConfig.precision).
# bfloat16 autocast runs the convolutions on the CPU's bfloat16 units (AMX, avx512_bf16);
# the weights, Adam, the moving average and the loss stay float32 (bench/train_step.py)
PRECISIONS = ("float32", "bfloat16")
# brain+CSF is the product; the no-CSF output is a helper and a user option
CHANNEL_WEIGHTS = torch.tensor([1.0, 0.5])


def check_precision(precision: str) -> None:
    """Refuse a compute precision the training loop does not know (one message for all callers)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")


def cpu_has_bfloat16() -> bool:
    """Whether this CPU has bfloat16 units that oneDNN uses (avx512_bf16 or AMX on x86).

    oneDNN's own answer (``_is_mkldnn_bf16_supported``) is yes on any AVX-512 CPU, where it
    emulates bfloat16: on a 2-core Xeon with AVX-512 but neither avx512_bf16 nor AMX, a
    training step of run53's network took 2.69 s in bfloat16 against 1.04 s in float32.
    On x86 the instructions themselves decide; elsewhere (Arm) oneDNN's answer stands.
    """
    if platform.machine().lower() in {"x86_64", "amd64", "i686", "x86"}:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def compute_precision(requested: str, native_bfloat16: bool | None = None) -> str:
    """The precision a training step can afford on this CPU: ``requested``, or float32 in place of bfloat16.

    Without bfloat16 units oneDNN runs bfloat16 convolutions in reference kernels: on a
    2-core AMD EPYC (Zen 3, avx2 only) run49's step took 150 s instead of 2.4 s in float32.
    float32 computes the same network more exactly, so the recipe stays the same recipe.
    """
    check_precision(requested)
    if native_bfloat16 is None:
        native_bfloat16 = cpu_has_bfloat16()
    return "float32" if requested == "bfloat16" and not native_bfloat16 else requested


@dataclass
class TrainConfig:
    """The whole recipe of a training run (saved as ``config.json`` in the run folder)."""

    seed: int = 20261124
    steps: int = 10000
    learning_rate: float = 1e-3
    final_learning_rate: float = 5e-5
    warmup_steps: int = 200
    decay_start: int = 7000
    validation_subjects: int = 3  # the last N label maps are held out for validation
    procedural_heads: int = 6
    validation_samples: int = 12
    validate_every: int = 250
    log_every: int = 10
    checkpoint_minutes: float = 5.0
    threads: int = 2
    # processes making samples beside the training process; the sample sequence is the same
    # for any number. 0 on two cores: a worker takes a core from the convolutions, and the
    # generator (0.3 s a sample) costs less than that. run49's recipe on a 2-core AMD EPYC
    # in float32: 2.85 s a step with 0, 3.62 with 1 (session 48); on the session-30 machine
    # 1.93 against 2.04 (training/README.md)
    workers: int = 0
    model: dict = field(default_factory=lambda: ModelConfig().to_dict())
    synth: dict = field(default_factory=dict)  # overrides of SynthConfig fields
    # coarse to fine: the training steps before ``small_crop_steps`` draw each crop axis
    # from ``small_crop_range`` (voxels, multiples of 4) instead of ``synth``'s
    # shape_range, so the early high-rate steps learn local features on crops of about
    # half the voxels and the later ones the whole-head context; validation keeps the full
    # crops. 0 keeps every crop at shape_range, as in the runs before run50
    small_crop_steps: int = 0
    small_crop_range: list[int] | None = None
    # atrophy of each BrainWeb subject, drawn from these thicknesses (synth.atrophy);
    # run3 used [0, 0, 1, 2] and its network then took bright scalp fat for CSF on T2/T1
    atrophy_mm: list[int] = field(default_factory=lambda: [0])
    # [low, high] mm: the label maps' last slice continues down into the neck this far
    # (synth.add_neck's junction_mm) so no flat plane marks where the brain ends; None
    # keeps the necks of the runs before run16
    neck_junction_mm: list[int] | None = None
    # the BrainWeb eyeballs (muscle/skin in the label maps) become fluid, CSF-bright on
    # T2w as real vitreous (synth.fluid_eyes); False keeps the anatomy of the runs before run51
    eyes_fluid: bool = False
    # checkpoint whose network weights start this run (the optimiser and step start
    # afresh); layers the checkpoint lacks, e.g. new refine blocks, keep their own init
    init_from: str | None = None
    # decay of the exponential moving average of the weights (e.g. 0.998: about the last
    # 500 steps); validation, monitoring and export then use the average. None: no EMA
    ema_decay: float | None = None
    # extra L1 weight on voxels more than FAR_OUTSIDE_MM outside the brain that the
    # network calls brain (loss_function); 0 keeps the loss of the runs before run15
    far_false_positive_weight: float = 0.0
    # weight of contrast_consistency: each MRI step also trains on its head in another
    # contrast (synth.SyntheticHeads.contrast_twin) and pays for the difference of the
    # two predictions; 0 keeps the one-sample steps of the runs before run21
    contrast_consistency_weight: float = 0.0
    # weight of surface_offset: each sample pays for the mean signed error of its
    # distances near the surface, i.e. for a whole surface too far out or in; 0 keeps the
    # loss of the runs before run41
    surface_offset_weight: float = 0.0
    # "float32", or "bfloat16" for autocast (PRECISIONS); every run up to run38 is float32, run39 onwards bfloat16
    precision: str = "float32"

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.small_crop_steps and self.small_crop_range is None:
            raise ValueError("small_crop_steps needs small_crop_range, the [low, high] voxels of the small crops")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        values = json.loads(Path(path).read_text())
        unknown = set(values) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"{path}: unknown training settings {sorted(unknown)}")
        return cls(**values)

    def synth_config(self) -> synth.SynthConfig:
        """The generator's settings; its images are normalised as the model expects."""
        values = dict(self.synth)
        for key in ("shape", "shape_range"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        if "input_normalisation" in values:
            raise ValueError("input_normalisation belongs to the model settings, not the synth ones")
        values["input_normalisation"] = ModelConfig.from_dict(self.model).input_normalisation
        return synth.config_with(**values)

    def small_crop_synth_config(self) -> synth.SynthConfig | None:
        """The generator's settings for the steps before ``small_crop_steps``, or None."""
        if not self.small_crop_steps:
            return None
        return replace(self.synth_config(), shape_range=tuple(self.small_crop_range))

    def learning_rate_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        if step < self.decay_start:
            return self.learning_rate
        progress = min(1.0, (step - self.decay_start) / max(1, self.steps - self.decay_start))
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.final_learning_rate + (self.learning_rate - self.final_learning_rate) * cosine


class SyntheticStream(IterableDataset):
    """Endless stream of training batches; seed of step ``k`` is ``seed + k``.

    A batch is one sample, or with ``twins`` an MRI sample and its contrast twin (the
    same head in another contrast). Each worker process loads the anatomies once, then
    takes every n-th step, so the sequence does not depend on the number of workers.
    Steps before ``small_crop_steps`` are made with ``small_crop_config`` (coarse to fine,
    :attr:`TrainConfig.small_crop_steps`); the step decides, so a resumed run continues
    the same sequence.
    """

    def __init__(self, anatomy_factory: Callable[[], list[synth.Anatomy]], config: synth.SynthConfig,
                 seed: int, first_step: int, twins: bool = False,
                 small_crop_config: synth.SynthConfig | None = None, small_crop_steps: int = 0) -> None:
        self.anatomy_factory = anatomy_factory
        self.config = config
        self.seed = seed
        self.first_step = first_step
        self.twins = twins
        self.small_crop_config = small_crop_config
        self.small_crop_steps = small_crop_steps

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        anatomies = self.anatomy_factory()
        full_crops = synth.SyntheticHeads(anatomies, self.config)
        small_crops = synth.SyntheticHeads(anatomies, self.small_crop_config or self.config)
        step = self.first_step + worker
        while True:
            generator = small_crops if step < self.small_crop_steps else full_crops
            samples = [generator.sample(self.seed + step)]
            if self.twins and samples[0].modality == "mri":
                samples.append(generator.contrast_twin(self.seed + step, samples[0].contrast))
            yield to_tensors(*samples)
            step += n_workers


def to_tensors(*samples: synth.Sample) -> dict:
    """A batch: images (N, 1, X, Y, Z), targets (N, 2, X, Y, Z) in mm, voxel size in mm."""
    return {
        "image": torch.from_numpy(np.stack([s.image[None] for s in samples])),
        "sdt": torch.from_numpy(np.stack([np.stack([s.sdt_brain, s.sdt_nocsf]) for s in samples])),
        "voxel_mm": float(abs(samples[0].affine[0, 0])),
    }


def training_forward(model: StripNet, image: torch.Tensor, precision: str = "float32") -> torch.Tensor:
    """The network's prediction for a training step, in float32 whatever ``precision``.

    Under bfloat16 autocast the convolutions compute in bfloat16 and keep float32 weights
    (mixed precision, Micikevicius et al., ICLR 2018, with bfloat16's float32 range so no
    loss scaling is needed); the loss is computed on the float32 cast of the prediction.
    A crop on which the CPU convolution would leave oneDNN goes through the network
    turned, its two largest axes first and the kernels' axes permuted alike
    (:func:`axis_order`): the same function, because every layer is isotropic.
    """
    check_precision(precision)
    order = axis_order(image.shape[2:], model.config.core_channels)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
        if order == (0, 1, 2):
            return model(image.to(memory_format=TRAINING_LAYOUT)).float()
        dims = (0, 1, *(2 + axis for axis in order))
        # the 3x3x3 kernels (out, in, x, y, z) turn with the image; the other parameters stay
        turned = {name: p.permute(dims) if p.dim() == 5 else p for name, p in model.named_parameters()}
        prediction = functional_call(model, turned, (image.permute(dims).contiguous(memory_format=TRAINING_LAYOUT),))
    return prediction.permute(tuple(int(i) for i in np.argsort(dims))).float()


def axis_order(shape: Sequence[int], core_channels: int) -> tuple[int, int, int]:
    """The order of a crop's spatial axes for the training step: as it is, or largest first.

    Why: at batch 1 PyTorch's CPU convolution takes oneDNN for a 3x3x3 kernel only when
    N*C*X*Y (the input without its last axis) exceeds ``ONEDNN_MIN_INPUT``, and otherwise
    its reference kernels at about three times the cost. The core runs on the 4 mm grid,
    so a crop whose first two axes are small (68x68x88: 3.8 s a step, 88x68x68: 1.2 s, on
    a 2-core AMD EPYC; training/README.md, run50) pays that in every core layer. The
    other crops keep their order, so their steps compute exactly as before.
    """
    core_x, core_y = ((n + 1) // 2 for n in shape[:2])
    if core_channels * core_x * core_y > ONEDNN_MIN_INPUT:
        return (0, 1, 2)
    return tuple(sorted(range(3), key=lambda axis: -shape[axis]))


def _surface_weight(sdt_mm: torch.Tensor) -> torch.Tensor:
    """5x at the brain's surface, fading over ~4 mm: the effort goes where masks are decided."""
    return 1 + 4 * torch.exp(-sdt_mm.abs() / 4.0)


def loss_function(prediction: torch.Tensor, sdt_mm: torch.Tensor, far_false_positive_weight: float = 0.0,
                  surface_offset_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Boundary-weighted L1 on clipped signed distances plus soft Dice of the masks.

    The L1 term teaches a distance field (needed for smooth resampling and borders);
    the weight (:func:`_surface_weight`) spends the effort where masks are decided, and
    the Dice term directly optimises what users measure. Both barely
    notice a few tens of mL called brain far below the cerebellum (a 30 mL leak costs
    about 1 % of Dice), so ``far_false_positive_weight`` adds weight to exactly those
    voxels: more than ``FAR_OUTSIDE_MM`` outside and predicted inside.
    ``surface_offset_weight`` adds :func:`surface_offset`'s penalty on each sample's
    mean offset of the whole surface.
    """
    target = sdt_mm.clamp(-LOSS_CLIP_MM, LOSS_CLIP_MM) / DISTANCE_SCALE_MM
    weight = _surface_weight(sdt_mm)
    if far_false_positive_weight:
        far_false_positive = (sdt_mm > FAR_OUTSIDE_MM) & (prediction.detach() < 0)
        weight = weight + far_false_positive_weight * far_false_positive.float()
    l1 = (weight * (prediction - target).abs()).mean(dim=(0, 2, 3, 4))
    probability = torch.sigmoid(-prediction * DISTANCE_SCALE_MM / SOFT_BOUNDARY_MM)
    truth = (sdt_mm < 0).float()
    overlap = (probability * truth).sum(dim=(0, 2, 3, 4))
    dice = 2 * overlap / (probability.sum(dim=(0, 2, 3, 4)) + truth.sum(dim=(0, 2, 3, 4)) + 1.0)
    total = (CHANNEL_WEIGHTS[: prediction.shape[1]] * (l1 + (1 - dice))).sum()
    offset = surface_offset(prediction, sdt_mm)
    if surface_offset_weight:
        total = total + surface_offset_weight * (CHANNEL_WEIGHTS[: prediction.shape[1]] * offset.abs().mean(0)).sum()
    return total, {"l1": float(l1[0].detach()), "dice": float(dice[0].detach()),
                   "dice_nocsf": float(dice[-1].detach()),
                   "offset_mm": float(offset[:, 0].detach().abs().mean() * DISTANCE_SCALE_MM)}


def surface_offset(prediction: torch.Tensor, sdt_mm: torch.Tensor) -> torch.Tensor:
    """(N, C) mean signed error of each sample's distances within ``OFFSET_BAND_MM`` of the surface.

    In units of ``DISTANCE_SCALE_MM``; negative when the predicted surface lies outside
    the true one (a mask too big). Voxel-wise L1 pays the same for an error that moves
    the whole surface as for scattered ones that cancel, so a network can keep a
    per-image offset: run40 placed the brain+CSF surface of clean synthetic T2 heads of
    its own training subjects 1.9 mm out and of FLAIR heads 0.6 mm out, and on the real
    scans of one head (openms patient04) its T2w mask is 17 % larger than its FLAIR one.
    The absolute value of this mean is a per-sample size error, like the size penalties
    of constrained CNN losses (Kervadec et al., Medical Image Analysis 2019), measured
    where the boundary is. Tried in run41 (weight 1): every real mask shrank and the
    FLAIR/T2w split barely moved, because the largest offsets are leaks into brain-grey
    bone rather than a moved surface (training/README.md, run41).
    """
    band = (sdt_mm.abs() < OFFSET_BAND_MM).float()  # inside the band no distance reaches the loss's clip
    error = prediction - sdt_mm / DISTANCE_SCALE_MM
    return (band * error).sum(dim=(2, 3, 4)) / band.sum(dim=(2, 3, 4)).clamp(min=1.0)


def contrast_consistency(prediction: torch.Tensor, sdt_mm: torch.Tensor) -> torch.Tensor:
    """Surface-weighted L1 between the predictions for two contrasts of one head.

    ``prediction`` (2, C, X, Y, Z) holds a sample and its contrast twin, ``sdt_mm``
    (C, X, Y, Z) their common target. The supervised loss alone leaves each contrast its
    own bias (held-out FLAIR heads 0.92 of the target volume, T2 0.98, with run18):
    where a contrast hides the CSF's outer edge, the network falls back on a prior of
    its own for that contrast. Paying for the difference asks for one surface from the
    anatomy whatever the contrast, as networks trained on several simulated contrasts of
    one head do (Brain-ID, Liu et al., ECCV 2024; Chalcroft et al., MIDL 2025, who enforce
    consistent features across the contrasts). Distances beyond the loss's clip are
    clipped: far from the brain only the sign matters.
    """
    limit = LOSS_CLIP_MM / DISTANCE_SCALE_MM
    clipped = prediction.clamp(-limit, limit)
    difference = (_surface_weight(sdt_mm) * (clipped[0] - clipped[1]).abs()).mean(dim=(1, 2, 3))
    return (CHANNEL_WEIGHTS[: prediction.shape[1]] * difference).sum()


def hard_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    denominator = prediction.sum() + truth.sum()
    return 1.0 if denominator == 0 else float(2 * (prediction & truth).sum() / denominator)


def split_label_maps(labels_dir: str | Path, n_validation: int) -> tuple[list[Path], list[Path]]:
    paths = synth.brainweb_paths(labels_dir)
    if n_validation >= len(paths):
        raise ValueError(f"need more than {n_validation} label maps in {labels_dir} to hold some out")
    return paths[: len(paths) - n_validation], paths[len(paths) - n_validation :]


class _TrainingAnatomies:
    """Picklable factory so worker processes load the label maps themselves."""

    def __init__(self, paths: list[Path], procedural: int, seed: int, atrophy_mm: Sequence[int] = (0,),
                 neck_junction_mm: Sequence[int] | None = None, eyes_fluid: bool = False) -> None:
        self.paths, self.procedural, self.seed, self.atrophy_mm = paths, procedural, seed, tuple(atrophy_mm)
        self.neck_junction_mm = neck_junction_mm
        self.eyes_fluid = eyes_fluid

    def __call__(self) -> list[synth.Anatomy]:
        return (synth.load_anatomies(self.paths, self.atrophy_mm, self.neck_junction_mm, self.eyes_fluid)
                + synth.procedural_anatomies(self.procedural, self.seed))


def train(labels_dir: str | Path, out_dir: str | Path, config: TrainConfig, resume: bool = False,
          monitor: Callable[[StripNet, int], dict] | None = None, progress: bool = True,
          max_minutes: float | None = None) -> Path:
    """Run (or continue) training; returns the checkpoint path.

    ``monitor(model, step)`` is called at every validation, e.g. to measure Dice on real
    scans for monitoring only; its numbers go in the log, never into the loss.
    ``max_minutes`` stops cleanly (checkpoint written) after that much wall time.
    Sets PyTorch's flush-denormal mode for the rest of the process (see below).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / "checkpoint.pt"
    # A trained network's activations and gradients hold denormal floats (below 1.2e-38),
    # which x86 cores compute in slow microcode: on a 2-core Xeon one step of run53's
    # network on an 88^3 cube took 2.2-3.4 s with its step-6046 weights against 1.3 s with
    # fresh ones, and 1.3-1.4 s with both once denormals flush to zero. Before the first
    # parallel region: OpenMP's worker threads copy the flag when they are created.
    torch.set_flush_denormal(True)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    # before the optimiser and any loading, which copy into these parameters in place
    model = StripNet(ModelConfig.from_dict(config.model)).to(memory_format=TRAINING_LAYOUT)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    step = 0
    resumed = resume and checkpoint_path.exists()
    if resumed:
        state = _read_checkpoint(checkpoint_path)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        step = state["step"]
    elif checkpoint_path.exists():
        raise FileExistsError(f"{checkpoint_path} exists: pass --resume to continue it, or choose another --out")
    elif config.init_from is not None:
        initialise_from(model, config.init_from)
    average = _moving_average(model, config.ema_decay)
    if average is not None and resumed and state.get("ema") is not None:
        average.module.load_state_dict(state["ema"])
        average.n_averaged.fill_(state["ema_updates"])
    shipped = model if average is None else average.module
    (out_dir / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")

    train_paths, validation_paths = split_label_maps(labels_dir, config.validation_subjects)
    synth_config = config.synth_config()
    validation_set = _validation_samples(validation_paths, synth_config, config)
    anatomies = _TrainingAnatomies(train_paths, config.procedural_heads, config.seed, config.atrophy_mm,
                                   config.neck_junction_mm, config.eyes_fluid)
    stream = SyntheticStream(anatomies, synth_config, config.seed, step,
                             twins=config.contrast_consistency_weight > 0,
                             small_crop_config=config.small_crop_synth_config(),
                             small_crop_steps=config.small_crop_steps)
    loader = DataLoader(stream, batch_size=None, num_workers=config.workers,
                        persistent_workers=config.workers > 0, prefetch_factor=2 if config.workers else None)
    log = _CsvLog(out_dir / "log.csv")
    started = time.monotonic()
    last_checkpoint = started
    running: list[dict] = []
    bar = _progress(config.steps, step, progress)
    params = count_parameters(model)
    print(f"training {params} parameters from step {step} to {config.steps} in {out_dir}", flush=True)
    precision = compute_precision(config.precision)
    if precision != config.precision:
        print(f"this CPU has no bfloat16 units: computing in {precision} instead of {config.precision}", flush=True)

    for batch in loader:
        if step >= config.steps:
            break
        model.train()
        for group in optimiser.param_groups:
            group["lr"] = config.learning_rate_at(step)
        prediction = training_forward(model, batch["image"], precision)
        loss, parts = loss_function(prediction, batch["sdt"], config.far_false_positive_weight,
                                    config.surface_offset_weight)
        if len(prediction) == 2:
            consistency = contrast_consistency(prediction, batch["sdt"][0])
            loss = loss + config.contrast_consistency_weight * consistency
            parts["consistency"] = float(consistency.detach())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if average is not None:
            average.update_parameters(model)
        step += 1
        running.append({"loss": float(loss.detach()), **parts})
        bar.update(1)
        if step % config.log_every == 0:
            # a row's keys vary: only steps with a twin have a consistency term
            keys = dict.fromkeys(k for r in running for k in r)
            means = {k: float(np.mean([r[k] for r in running if k in r])) for k in keys}
            log.write({"step": step, "minutes": (time.monotonic() - started) / 60,
                       "lr": config.learning_rate_at(step), **means})
            bar.set_postfix(loss=f"{means['loss']:.3f}", dice=f"{means['dice']:.3f}")
            running = []
        if step % config.validate_every == 0 or step == config.steps:
            row = {"step": step, "minutes": (time.monotonic() - started) / 60, **validate(shipped, validation_set)}
            if monitor is not None:
                row.update(monitor(shipped, step))
            log.write(row)
            plot_curves(out_dir / "log.csv", out_dir / "curves.png")
        out_of_time = max_minutes is not None and time.monotonic() - started > max_minutes * 60
        if time.monotonic() - last_checkpoint > config.checkpoint_minutes * 60 or out_of_time or step == config.steps:
            save_checkpoint(checkpoint_path, model, optimiser, step, config, average)
            last_checkpoint = time.monotonic()
        if out_of_time:
            print(f"stopping after {max_minutes} minutes at step {step}; continue with --resume", flush=True)
            break
        if _stop_requested(out_dir):
            save_checkpoint(checkpoint_path, model, optimiser, step, config, average)
            (out_dir / "STOP").unlink()
            print(f"stopped on request at step {step}; continue with --resume", flush=True)
            break
    bar.close()
    save_checkpoint(checkpoint_path, model, optimiser, step, config, average)
    plot_curves(out_dir / "log.csv", out_dir / "curves.png")
    return checkpoint_path


def _moving_average(model: StripNet, decay: float | None) -> torch.optim.swa_utils.AveragedModel | None:
    """Exponential moving average of the weights (Polyak averaging), or None when off.

    With one sample per step the raw weights of consecutive checkpoints differ by about
    0.01 in real-scan Dice (run7); the average removes that step-to-step noise.
    """
    if decay is None:
        return None
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema_decay must be between 0 and 1, got {decay}")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))


def initialise_from(model: StripNet, checkpoint_path: str | Path) -> list[str]:
    """Copy a checkpoint's shipped weights into ``model``; returns the layers it lacked.

    Used to grow a trained network (e.g. add zero-initialised refine blocks) without
    starting over. Every weight of the checkpoint must fit the model: a changed layer
    shape or a layer the model does not have is an error, not a silent partial load.
    """
    state = _read_checkpoint(checkpoint_path)
    result = model.load_state_dict(shipped_weights(state), strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{checkpoint_path} has layers this model lacks: {result.unexpected_keys}")
    print(f"initialised from {checkpoint_path} (step {state['step']}); new layers: {result.missing_keys}", flush=True)
    return list(result.missing_keys)


def _stop_requested(out_dir: Path) -> bool:
    """A file named STOP in the run folder ends the run cleanly at the next step."""
    return (out_dir / "STOP").exists()


def _validation_samples(paths: list[Path], config: synth.SynthConfig, train_config: TrainConfig) -> list[dict]:
    anatomies = synth.load_anatomies(paths, train_config.atrophy_mm, train_config.neck_junction_mm,
                                     train_config.eyes_fluid)
    # uncapped crops: the validation set every run since run50 was measured on, so the
    # monitors of recipes with and without max_crop_voxels compare step for step
    generator = synth.SyntheticHeads(anatomies, replace(config, max_crop_voxels=None))
    modalities = synth.MODALITIES
    return [to_tensors(generator.sample(10**9 + i, modalities[i % len(modalities)]))
            for i in range(train_config.validation_samples)]


@torch.no_grad()
def validate(model: StripNet, samples: list[dict]) -> dict:
    model.eval()
    dices, dices_nocsf, losses, far_ml = [], [], [], []
    for sample in samples:
        prediction = model(sample["image"].to(memory_format=TRAINING_LAYOUT))
        loss, _ = loss_function(prediction, sample["sdt"])
        losses.append(float(loss))
        predicted = (prediction[0] < 0).numpy()
        distance = sample["sdt"][0].numpy()
        truth = distance < 0
        dices.append(hard_dice(predicted[0], truth[0]))
        dices_nocsf.append(hard_dice(predicted[1], truth[1]))
        voxel_ml = sample["voxel_mm"] ** 3 / 1000
        far_ml.append(float((predicted[0] & (distance[0] > FAR_OUTSIDE_MM)).sum() * voxel_ml))
    # val_far_ml: brain+CSF mask called brain far outside it (mL per sample), the leak
    return {"val_loss": float(np.mean(losses)), "val_dice": float(np.mean(dices)),
            "val_dice_min": float(np.min(dices)), "val_dice_nocsf": float(np.mean(dices_nocsf)),
            "val_far_ml": float(np.mean(far_ml))}


def save_checkpoint(path: Path, model: StripNet, optimiser: torch.optim.Optimizer, step: int,
                    config: TrainConfig, average: torch.optim.swa_utils.AveragedModel | None = None) -> None:
    """Write the checkpoint next to its destination and rename: never half a file.

    ``model`` holds the raw weights training resumes from; ``ema`` the moving average
    that is exported (``shipped_weights``), with its update count for resuming.
    """
    checkpoint = {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "step": step,
                  "model_config": model.config.to_dict(), "train_config": asdict(config)}
    if average is not None:
        checkpoint.update(ema=average.module.state_dict(), ema_updates=int(average.n_averaged))
    _write_checkpoint(checkpoint, path)


def _read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's content (weights, optimiser state, configs), loaded on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=False)


def _write_checkpoint(content: dict, path: Path) -> None:
    write_atomically(path, lambda temporary: torch.save(content, temporary))


class _CsvLog:
    """Appends rows to a CSV whose columns grow as new keys appear (rewrites the header)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, row: dict) -> None:
        rows = list(csv.DictReader(self.path.open())) if self.path.exists() else []
        columns = list(rows[0].keys()) if rows else []
        columns += [k for k in row if k not in columns]
        if rows and columns == list(rows[0].keys()):
            with self.path.open("a", newline="") as handle:
                csv.DictWriter(handle, columns).writerow(_formatted(row))
            return
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(rows)
            writer.writerow(_formatted(row))


def _formatted(row: dict) -> dict:
    return {k: (f"{v:.5g}" if isinstance(v, float) else v) for k, v in row.items()}


def plot_curves(log_path: Path, png_path: Path) -> None:
    """Training loss (smoothed) and validation Dice against step (and the far leak, when logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(log_path.open())) if log_path.exists() else []
    if not rows:
        return
    train_rows = [r for r in rows if r.get("loss")]
    val_rows = [r for r in rows if r.get("val_dice")]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if train_rows:
        steps = np.array([int(r["step"]) for r in train_rows])
        loss = np.array([float(r["loss"]) for r in train_rows])
        left.plot(steps, loss, alpha=0.3, color="C0")
        window = min(20, len(loss))
        left.plot(steps[window - 1 :], np.convolve(loss, np.ones(window) / window, "valid"), color="C0",
                  label="train loss")
    if val_rows:
        left.plot([int(r["step"]) for r in val_rows], [float(r["val_loss"]) for r in val_rows], "o-",
                  color="C1", label="validation loss (held-out subjects)")
        right.plot([int(r["step"]) for r in val_rows], [float(r["val_dice"]) for r in val_rows], "o-",
                   label="synthetic validation Dice")
        real = [r for r in val_rows if r.get("real_dice")]
        if real:
            right.plot([int(r["step"]) for r in real], [float(r["real_dice"]) for r in real], "s-",
                       label="real scans Dice (monitoring only)")
        right.set_ylim(0.7, 1.0)
        far = [r for r in val_rows if r.get("val_far_ml")]
        if far:
            leak_axis = right.twinx()
            leak_axis.plot([int(r["step"]) for r in far], [float(r["val_far_ml"]) for r in far], "^--",
                           color="C3", label="synthetic: mL called brain > 6 mm outside")
            leak_axis.set_ylabel("mL")
            leak_axis.set_ylim(bottom=0)
            leak_axis.legend(loc="upper right")
    left.set_xlabel("step")
    left.set_yscale("log")
    left.legend()
    right.set_xlabel("step")
    if val_rows:  # a resumed run's first minutes have no validation yet
        right.legend(loc="lower left")
    right.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png_path, dpi=80)
    plt.close(figure)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", mininterval=5, dynamic_ncols=True)


def average_checkpoints(checkpoint_paths: Sequence[str | Path], out_path: str | Path) -> Path:
    """A checkpoint whose weights are the uniform average of the checkpoints' shipped weights.

    A "model soup" (Wortsman et al., ICML 2022): networks fine-tuned from one start lie
    in one basin, and the average of their weights is a network in its own right, often
    better than each on data unlike the training data. All checkpoints must have the same
    architecture. The result exports like any checkpoint (``export_weights``) and names
    its ingredients.
    """
    states = [_read_checkpoint(path) for path in checkpoint_paths]
    if not states:
        raise ValueError("average_checkpoints needs at least one checkpoint")
    config = states[0]["model_config"]
    for path, state in zip(checkpoint_paths, states):
        if state["model_config"] != config:
            raise ValueError(f"{path} has another architecture than {checkpoint_paths[0]}")
    weights = [shipped_weights(state) for state in states]
    average = {name: torch.stack([w[name].float() for w in weights]).mean(dim=0).to(weights[0][name].dtype)
               for name in weights[0]}
    out_path = Path(out_path)
    _write_checkpoint({"model": average, "model_config": config, "step": max(int(s["step"]) for s in states),
                       "ingredients": [str(p) for p in checkpoint_paths]}, out_path)
    return out_path


def export_weights(checkpoint_path: str | Path, weights_path: str | Path) -> Path:
    """Export a checkpoint to the shipped ONNX model (~0.6 MB) with its provenance.

    Metadata: trained step, the distance scale, the architecture and the checkpoint's
    SHA-256, so a shipped file can be traced back to its training run. The graph takes
    any (even) spatial size.
    """
    import hashlib
    import io

    import onnx

    state = _read_checkpoint(checkpoint_path)
    network = network_from_checkpoint(state)
    buffer = io.BytesIO()
    example = torch.zeros(1, 1, 32, 32, 32)
    with warnings.catch_warnings():  # tracer chatter; instance norm without running stats is intended
        warnings.simplefilter("ignore")
        torch.onnx.export(network, example, buffer, input_names=["image"], output_names=["distance"],
                          dynamic_axes={"image": {2: "x", 3: "y", 4: "z"}, "distance": {2: "x", 3: "y", 4: "z"}},
                          opset_version=17, dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    metadata = {
        "trained_steps": str(state["step"]),
        "distance_scale_mm": str(DISTANCE_SCALE_MM),
        "model_config": json.dumps(state["model_config"]),
        "checkpoint_sha256": hashlib.sha256(Path(checkpoint_path).read_bytes()).hexdigest(),
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return write_atomically(Path(weights_path), lambda temporary: onnx.save(proto, str(temporary)))
