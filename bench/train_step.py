"""Time one training step (forward, loss, backward, Adam) per memory layout and precision.

Usage: python bench/train_step.py [--config training/runN/config.json ...] [--n 5] [--rounds 2]
                                  [--size 88[,72,...] | --labels ../shared/data/labelmaps/brainweb]
                                  [--checkpoint training/runN/checkpoint.pt] [--keep-denormals]
Writes bench/results/train_step.md. Each recipe's network takes the same ``--n`` crops,
batch 1, with the recipe's thread count, three ways from the same weights: PyTorch's
default contiguous tensors in float32, channels-last 3D tensors (``train.TRAINING_LAYOUT``)
in float32, and channels-last under bfloat16 autocast (``TrainConfig.precision``); the
variants alternate so that a change in the machine's load falls on all of them. On a CPU
without bfloat16 units (``train.cpu_has_bfloat16``) the bfloat16 variant is not timed: it
runs in reference kernels there (about 150 s a step) and the trainer never uses it.
The crops are random ``--size``^3 volumes (one row per size), or with ``--labels`` the recipe's own first
training samples (its generator and crop sizes, made before the clock starts, so the
generator's time is not counted). The difference columns are the largest difference
between a variant's prediction on the first crop and the contiguous float32 one (in
network units; 1 = ``model.DISTANCE_SCALE_MM``): the layouts compute the same network,
bfloat16 rounds it.

The weights are random (normal, sd 0.05), or with ``--checkpoint`` a training checkpoint's,
whose activations and gradients hold denormal floats. Like the trainer, the script flushes
denormals to zero before PyTorch's thread pool starts; ``--keep-denormals`` times the cost
of computing them (on a 2-core Xeon, a trained network's step took about twice as long).
"""

from __future__ import annotations

import argparse
import copy
import platform
import re
import time
from pathlib import Path

import torch

from skullstrip import synth
from skullstrip.model import ModelConfig, StripNet, count_parameters
from skullstrip.train import (
    TRAINING_LAYOUT,
    TrainConfig,
    cpu_has_bfloat16,
    loss_function,
    split_label_maps,
    to_tensors,
    training_forward,
)

# name: (memory layout, precision)
VARIANTS = {"contiguous": (torch.contiguous_format, "float32"),
            "channels-last": (TRAINING_LAYOUT, "float32"),
            "channels-last bf16": (TRAINING_LAYOUT, "bfloat16")}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` is empty on Linux)."""
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        found = None
    return found.group(1).strip() if found else platform.processor() or "unknown CPU"


def random_crops(size: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(1, 1, size, size, size), 20 * torch.randn(1, 2, size, size, size)) for _ in range(n)]


def recipe_crops(recipe: TrainConfig, labels: str, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The recipe's first ``n`` training samples (two label maps, to keep loading short)."""
    train_paths, _ = split_label_maps(labels, recipe.validation_subjects)
    anatomies = synth.load_anatomies(train_paths[:2], recipe.atrophy_mm, recipe.neck_junction_mm)
    generator = synth.SyntheticHeads(anatomies, recipe.synth_config())
    batches = [to_tensors(generator.sample(recipe.seed + step)) for step in range(n)]
    return [(batch["image"], batch["sdt"]) for batch in batches]


def prediction(model: StripNet, image: torch.Tensor, layout: torch.memory_format, precision: str) -> torch.Tensor:
    """The training loop's forward pass, or with the contiguous layout its float32 reference."""
    if layout == TRAINING_LAYOUT:
        return training_forward(model, image, precision)
    return model(image)


def step_seconds(model: StripNet, crops: list[tuple[torch.Tensor, torch.Tensor]],
                 layout: torch.memory_format, precision: str) -> float:
    """Mean wall time of one training step over ``crops``, after one untimed warm-up step."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(image: torch.Tensor, target: torch.Tensor) -> None:
        loss, _ = loss_function(prediction(model, image, layout, precision), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    step(*crops[0])
    clock = time.perf_counter()
    for image, target in crops:
        step(image, target)
    return (time.perf_counter() - clock) / len(crops)


def time_variants(base: StripNet, crops: list[tuple[torch.Tensor, torch.Tensor]],
                  variants: dict[str, tuple[torch.memory_format, str]], rounds: int) -> str:
    """The table cells after the parameter count: mean crop, best s/step per variant, speed-ups, differences."""
    mean_voxels = sum(image.numel() for image, _ in crops) / len(crops)
    models = {name: copy.deepcopy(base).to(memory_format=layout) for name, (layout, _) in variants.items()}
    with torch.no_grad():
        outputs = {name: prediction(models[name], crops[0][0], *variant) for name, variant in variants.items()}
    differences = {name: float((outputs[name] - outputs["contiguous"]).abs().max()) for name in variants}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, variant in variants.items():
            seconds[name].append(step_seconds(models[name], crops, *variant))
    best = {name: min(values) for name, values in seconds.items()}
    bf16 = "channels-last bf16"
    return (f"{mean_voxels ** (1 / 3):.0f}³ | "
            + " | ".join(f"{best[name]:.2f}" if name in best else "–" for name in VARIANTS)
            + f" | {best['contiguous'] / best['channels-last']:.2f}"
            + (f" | {best['channels-last'] / best[bf16]:.2f}" if bf16 in best else " | –")
            + f" | {differences['channels-last']:.1e} | "
            + (f"{differences[bf16]:.1e} |" if bf16 in differences else "– |"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", action="append", help="training recipe(s); default: run37's")
    parser.add_argument("--size", default="88", help="edge(s) of the random crops in voxels, comma-separated")
    parser.add_argument("--labels", help="BrainWeb label maps: time the recipe's own samples instead")
    parser.add_argument("--n", type=int, default=5, help="timed steps per layout and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--checkpoint", help="time this training checkpoint's weights (one --config, its recipe)")
    parser.add_argument("--keep-denormals", action="store_true",
                        help="compute denormal floats instead of flushing them to zero as the trainer does")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_step.md"))
    args = parser.parse_args()
    configs = args.config or ["training/run37/config.json"]
    if args.checkpoint and len(configs) != 1:
        parser.error("--checkpoint times one recipe's network: give exactly one --config")
    # before any parallel region: OpenMP's worker threads copy the flag when they are created
    torch.set_flush_denormal(not args.keep_denormals)

    sizes = [int(size) for size in args.size.split(",")]
    native_bfloat16 = cpu_has_bfloat16()
    variants = {name: variant for name, variant in VARIANTS.items() if variant[1] != "bfloat16" or native_bfloat16}
    rows = []
    for path in configs:
        recipe = TrainConfig.load(path)
        torch.set_num_threads(recipe.threads)
        torch.manual_seed(0)
        base = StripNet(ModelConfig.from_dict(recipe.model))
        if args.checkpoint:
            base.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=False)["model"])
        else:
            for parameter in base.parameters():  # zero-initialised residual scales would hide the core
                parameter.data.normal_(0.0, 0.05)
        parameters = count_parameters(base)
        for crops in ([recipe_crops(recipe, args.labels, args.n)] if args.labels
                      else [random_crops(size, args.n) for size in sizes]):
            rows.append(f"| {path} | {parameters:,} | " + time_variants(base, crops, variants, args.rounds))
            print(rows[-1], flush=True)

    crops_text = (f"the recipe's first {args.n} training samples (`--labels {args.labels}`)" if args.labels
                  else f"{args.n} random crops of each size")
    lines = ["# Training step time per memory layout and precision", "",
             f"Command: `python bench/train_step.py {' '.join('--config ' + c for c in configs)} "
             + (f"--labels {args.labels} " if args.labels else f"--size {args.size} ")
             + f"--n {args.n} --rounds {args.rounds}"
             + (f" --checkpoint {args.checkpoint}" if args.checkpoint else "")
             + (" --keep-denormals" if args.keep_denormals else "") + "`",
             f"Machine: {cpu_model()} ({platform.machine()}), bfloat16 units: "
             f"{'yes' if native_bfloat16 else 'no (bfloat16 not timed)'}, torch {torch.__version__}. "
             f"Weights: {args.checkpoint or 'random (normal, sd 0.05)'}; denormals "
             f"{'computed (--keep-denormals)' if args.keep_denormals else 'flushed to zero, as the trainer does'}. "
             "One step = forward, loss, backward "
             f"and Adam, batch 1, on {crops_text}; the best of {args.rounds} rounds, the recipe's "
             "threads. Generator time is not counted.", "",
             "| recipe | parameters | mean crop | contiguous s/step | channels-last s/step "
             "| channels-last bf16 s/step | channels-last speed-up | bf16 speed-up "
             "| channels-last max difference | bf16 max difference |",
             "|---|---|---|---|---|---|---|---|---|---|", *rows, ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
