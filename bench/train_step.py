"""Time one training step (forward, loss, backward, Adam) per memory layout.

Usage: python bench/train_step.py [--config training/runN/config.json ...] [--size 88] [--n 5]
Writes bench/results/train_step.md. Each recipe's network runs on a random crop of
``--size``^3 voxels, batch 1, with the recipe's thread count, once with PyTorch's default
contiguous tensors and once with channels-last 3D tensors (``train.TRAINING_LAYOUT``),
starting from the same weights; the layouts alternate so that a change in the machine's
load falls on both. The last column is the largest difference between the two layouts'
predictions on the same input, to show they compute the same network.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import torch

from skullstrip.model import ModelConfig, StripNet, count_parameters
from skullstrip.train import TRAINING_LAYOUT, TrainConfig, loss_function

LAYOUTS = {"contiguous": torch.contiguous_format, "channels-last": TRAINING_LAYOUT}


def step_seconds(model: StripNet, image: torch.Tensor, target: torch.Tensor, n: int) -> float:
    """Mean wall time of ``n`` training steps after one warm-up step."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        loss, _ = loss_function(model(image), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    step()
    clock = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - clock) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", action="append", help="training recipe(s); default: run37's")
    parser.add_argument("--size", type=int, default=88, help="crop edge in voxels (training's median)")
    parser.add_argument("--n", type=int, default=5, help="timed steps per layout and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_step.md"))
    args = parser.parse_args()
    configs = args.config or ["training/run37/config.json"]

    rows = []
    for path in configs:
        recipe = TrainConfig.load(path)
        torch.set_num_threads(recipe.threads)
        torch.manual_seed(0)
        base = StripNet(ModelConfig.from_dict(recipe.model))
        for parameter in base.parameters():  # zero-initialised residual scales would hide the core
            parameter.data.normal_(0.0, 0.05)
        image = torch.randn(1, 1, args.size, args.size, args.size)
        target = 20 * torch.randn(1, 2, args.size, args.size, args.size)
        models = {name: copy.deepcopy(base).to(memory_format=layout) for name, layout in LAYOUTS.items()}
        with torch.no_grad():
            outputs = [models[name](image.to(memory_format=layout)) for name, layout in LAYOUTS.items()]
        difference = float((outputs[0] - outputs[1]).abs().max())
        seconds: dict[str, list[float]] = {name: [] for name in LAYOUTS}
        for _ in range(args.rounds):
            for name, layout in LAYOUTS.items():
                seconds[name].append(step_seconds(models[name], image.to(memory_format=layout), target, args.n))
        best = {name: min(values) for name, values in seconds.items()}
        speed_up = best["contiguous"] / best["channels-last"]
        rows.append(f"| {path} | {count_parameters(base):,} | {recipe.threads} | {best['contiguous']:.2f} | "
                    f"{best['channels-last']:.2f} | {speed_up:.2f} | {difference:.1e} |")
        print(rows[-1], flush=True)

    lines = ["# Training step time per memory layout", "",
             f"Command: `python bench/train_step.py {' '.join('--config ' + c for c in configs)} "
             f"--size {args.size} --n {args.n} --rounds {args.rounds}`",
             f"Machine: {platform.machine()}, torch {torch.__version__}; one step = forward, loss, backward "
             f"and Adam on a {args.size}³ crop, batch 1; the best of {args.rounds} rounds of {args.n} steps.", "",
             "| recipe | parameters | threads | contiguous s/step | channels-last s/step | speed-up "
             "| max output difference |",
             "|---|---|---|---|---|---|---|", *rows, ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
