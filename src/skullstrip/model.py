"""The network: a two-level dilated MeshNet that predicts brain signed distances.

MeshNet (Fedorov et al. 2017; MindGrab, Weber et al. 2025) stacks 3x3x3 convolutions
with growing then shrinking dilations at one resolution, so a ~150k-parameter network
sees the whole head. MindGrab runs 25 such layers on a 256^3 1 mm grid (~4.9 TFLOP),
which costs minutes on a CPU. Here the same idea runs where it is cheap:

- input on a 2 mm grid (``conform.WORKING_VOXEL_MM``);
- a stem convolution at 2 mm, one strided convolution to 4 mm;
- the dilated MeshNet core at 4 mm (dilations 1-2-4-8-16-8-4-2-1, residual, so the
  receptive field spans more than a head), where voxels are 64x fewer than at 1 mm;
- trilinear upsampling back to 2 mm, concatenated with the stem features, and two
  2 mm convolutions that place the boundary;
- optionally (``refine_dilations``) residual dilated 2 mm blocks after them, which give
  the boundary decision a wider 2 mm context (e.g. dilations 1-2-4 see +/-14 voxels);
- optionally (``global_context``) one summary of the whole scan's core features, pooled
  with learnt attention, that scales and shifts the core's and the fine layers'
  channels (FiLM), so that every voxel's boundary decision can depend on the scan's
  contrast (is the CSF bright or dark?) and not only on what its receptive field holds;
- two outputs: signed distance (in units of ``DISTANCE_SCALE_MM``, positive outside)
  to the brain+CSF surface and to the brain without extracerebral CSF.

Predicting a signed distance, as SynthStrip does, gives a smooth field that resamples
onto any native grid with sub-voxel boundaries and makes ``--border`` a threshold.

No normalisation layers (``norm="none"``, the default), like SynthStrip's U-Net: the
network is then a purely local operator whose output at a voxel depends only on its
receptive field, so a model trained on 160 mm crops behaves the same on a whole-head
grid. Instance normalisation (MindGrab's parameter-free per-channel norm, kept as
``norm="instance"``) made the statistics depend on the field of view: trained on crops,
it reached Dice 0.80 on synthetic crops but 0.55 on whole synthetic heads (see
docs/model.md). The residual core blocks are scaled by a learnable scalar that starts
at zero (ReZero, Bachlechner et al. 2021), so the deep stack trains stably without norms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from skullstrip.conform import INTENSITY_NORMALISATIONS

DISTANCE_SCALE_MM = 10.0


@dataclass(frozen=True)
class ModelConfig:
    stem_channels: int = 8
    core_channels: int = 22
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 8, 4, 2, 1)
    fine_channels: int = 12
    fine_layers: int = 2
    # residual 2 mm blocks after the fine layers; each is scaled by a zero-initialised
    # scalar, so adding them to a trained network leaves its output unchanged at first
    refine_dilations: tuple[int, ...] = ()
    # a scan-wide summary that modulates the core and fine channels (GlobalContext);
    # zero-initialised, so adding it to a trained network leaves its output unchanged
    global_context: bool = False
    outputs: int = 2
    norm: str = "none"  # "none" or "instance"
    # how the input image is scaled (conform.normalize_intensity's method): part of the
    # model, since a network only works on inputs normalised as in its training
    input_normalisation: str = "percentile"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        values = dict(values)
        values["dilations"] = tuple(values["dilations"])
        values["refine_dilations"] = tuple(values.get("refine_dilations", ()))
        return cls(**values)


class ReZeroBlock(nn.Module):
    """A dilated 3x3x3 convolution whose residual contribution starts at zero.

    One module per block (not one scale vector like the core's) so that a network without
    refine blocks has exactly the state-dict keys of the checkpoints made before them.
    """

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.scale = nn.Parameter(torch.zeros(()))


class GlobalContext(nn.Module):
    """A summary of the whole scan that scales and shifts feature maps (FiLM).

    The core's features are averaged over the scan with weights from a learnt attention
    map (a 1x1x1 convolution, softmax over all voxels; attention pooling as in Ilse et
    al., ICML 2018), and each modulated stage gets per-channel ``scale`` and ``shift``
    from a linear map of that summary (FiLM, Perez et al., AAAI 2018): ``h * (1 + scale)
    + shift``. Why: the shipped network's surface depends on the bone around the brain in
    a way that should depend on the contrast, e.g. a dark band between the brain and a
    bright ring is CSF in a T1w or FLAIR but bone in a T2w. A dilated stack of 16 channels
    has the receptive field to see the ventricles but little room to carry "CSF is
    bright" to every voxel; a summary is that message, for under a thousand weights.
    Attention, not a plain mean, so that the summary can describe the brain whatever else
    the field of view holds (training crops, whole heads with necks, the focus pass).

    Every weight starts at zero: uniform attention, no modulation, so a trained network
    grown with it computes exactly what it did. Tried in run44 (run40 grown with it,
    2000 steps): not shipped; its FiLM weights stayed near zero and the surface's
    dependence on the marrow did not change (training/README.md).
    """

    def __init__(self, channels: int, modulated: tuple[int, ...]) -> None:
        super().__init__()
        self.attention = nn.Conv3d(channels, 1, 1)
        self.film = nn.ModuleList(nn.Linear(channels, 2 * n) for n in modulated)
        for parameter in self.parameters():
            nn.init.zeros_(parameter)

    def summary(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C) attention-weighted mean of (B, C, X, Y, Z) features, scaled to unit RMS, in float32.

        Why the scaling: the mean over a whole scan is diluted by the background (entries
        up to about 0.24 for run40's core on a clean synthetic head), so FiLM weights that Adam moves by about the
        learning rate a step would take thousands of steps to modulate anything (run43).
        At unit scale the modulation can grow as fast as any other weight, and the summary
        keeps its direction, which is what describes the contrast.
        """
        # the 1x1x1 convolution (kept as a Conv3d so that checkpoints keep their layout) applied
        # as a matrix product over channels-last voxels: PyTorch's CPU convolution backward for
        # one output channel added 12 % to a training step, the contraction nothing measurable
        # (bench/train_step.py, training/README.md run55). Outside autocast, which would run
        # both products in bfloat16.
        with torch.autocast(features.device.type, enabled=False):
            voxels = features.movedim(1, -1).flatten(1, 3).float()  # (B, N, C)
            logits = F.linear(voxels, self.attention.weight.flatten(1), self.attention.bias)
            weights = torch.softmax(logits, dim=1)  # (B, N, 1)
            pooled = torch.bmm(weights.transpose(1, 2), voxels)[:, 0]
            return pooled * torch.rsqrt(pooled.pow(2).mean(dim=-1, keepdim=True) + 1e-6)

    def modulate(self, features: torch.Tensor, summary: torch.Tensor, stage: int) -> torch.Tensor:
        scale, shift = self.film[stage](summary).to(features.dtype)[..., None, None, None].chunk(2, dim=1)
        return features * (1 + scale) + shift


class StripNet(nn.Module):
    """Two-level dilated MeshNet; input (B, 1, X, Y, Z) with X, Y, Z even."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config
        self.stem = nn.Conv3d(1, c.stem_channels, 3, padding=1)
        self.down = nn.Conv3d(c.stem_channels, c.core_channels, 3, stride=2, padding=1)
        self.core = nn.ModuleList(
            nn.Conv3d(c.core_channels, c.core_channels, 3, padding=d, dilation=d) for d in c.dilations
        )
        self.fine = nn.Sequential(
            nn.Conv3d(c.core_channels + c.stem_channels, c.fine_channels, 3, padding=1),
            *(nn.Conv3d(c.fine_channels, c.fine_channels, 3, padding=1) for _ in range(c.fine_layers - 1)),
        )
        self.refine = nn.ModuleList(ReZeroBlock(c.fine_channels, d) for d in c.refine_dilations)
        self.head = nn.Conv3d(c.fine_channels, c.outputs, 1)
        # modulates the core's output (stage 0) and the fine layers' output (stage 1)
        self.context = GlobalContext(c.core_channels, (c.core_channels, c.fine_channels)) if c.global_context else None
        if c.norm not in ("none", "instance"):
            raise ValueError(f"norm must be 'none' or 'instance', not {c.norm!r}")
        if c.input_normalisation not in INTENSITY_NORMALISATIONS:
            raise ValueError(f"input_normalisation must be one of {INTENSITY_NORMALISATIONS}, "
                             f"not {c.input_normalisation!r}")
        self.residual_scale = nn.Parameter(torch.zeros(len(c.dilations)) if c.norm == "none"
                                           else torch.ones(len(c.dilations)), requires_grad=c.norm == "none")

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(F.instance_norm(x) if self.config.norm == "instance" else x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self._act(self.stem(x))
        h = self._act(self.down(stem))
        for scale, layer in zip(self.residual_scale, self.core):
            h = h + scale * self._act(layer(h))
        if self.context is not None:
            summary = self.context.summary(h)
            h = self.context.modulate(h, summary, 0)
        h = F.interpolate(h, size=stem.shape[2:], mode="trilinear", align_corners=False)
        h = torch.cat([h, stem], dim=1)
        for layer in self.fine:
            h = self._act(layer(h))
        if self.context is not None:
            h = self.context.modulate(h, summary, 1)
        for block in self.refine:
            h = h + block.scale * self._act(block.conv(h))
        return self.head(h)


def shipped_weights(checkpoint: dict) -> dict:
    """The network weights a checkpoint stands for: its moving average when it has one.

    A training step sees one sample, so the raw weights wander from step to step; the
    exponential moving average (``TrainConfig.ema_decay``) is what is exported and run.
    """
    average = checkpoint.get("ema")
    return checkpoint["model"] if average is None else average


def network_from_checkpoint(checkpoint: dict) -> StripNet:
    """The network a training checkpoint stands for, in eval mode (its shipped weights)."""
    network = StripNet(ModelConfig.from_dict(checkpoint["model_config"]))
    network.load_state_dict(shipped_weights(checkpoint))
    return network.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_voxel(config: ModelConfig) -> float:
    """Multiply-adds x2 per *2 mm working voxel* (the core runs on 1/8 as many)."""
    c = config
    k = 27
    fine = k * (1 * c.stem_channels + (c.core_channels + c.stem_channels) * c.fine_channels
                + (c.fine_layers - 1 + len(c.refine_dilations)) * c.fine_channels**2)
    fine += c.fine_channels * c.outputs
    coarse = k * (c.stem_channels * c.core_channels + len(c.dilations) * c.core_channels**2) / 8
    if c.global_context:  # one multiply-add a channel for attention, pooling and modulation at 4 mm, modulation at 2 mm
        coarse += 3 * c.core_channels / 8
        fine += c.fine_channels
    return 2.0 * (fine + coarse)
