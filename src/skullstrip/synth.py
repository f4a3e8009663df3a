"""Synthetic head images of any modality, made from anatomical label maps.

This implements the idea of SynthStrip (Hoopes et al., NeuroImage 2022) and of
MindGrab/PUMBA (brainchop): a network trained only on images synthesised from label
maps, with random contrasts and artefacts, learns the *shape* "brain inside a skull"
instead of one scanner's contrast, so one model serves every modality.

Design, after TorchIO: every augmentation is split into a *random* part that only draws
parameters (``sample_*`` functions returning a frozen dataclass) and a *deterministic*
part that applies them (the dataclass's ``__call__``). A sample is therefore fully
reproducible from its seed, and each step can be tested on its own.

Pipeline of one sample (``SyntheticHeads.sample``):

1. anatomy: a 1 mm label map (BrainWeb subject or procedural head), with its brain
   signed distance maps precomputed once;
2. ``SpatialTransform``: affine (rotation, scale, shear, shift) plus a smooth nonlinear
   displacement, mapping the output grid into the label map; optionally
   ``SkullBaseWarp``, a larger displacement of the lower head only;
3. ``TissueContrast``: one intensity per label drawn from a modality family (random
   GMM, T1/T2/FLAIR/PD-like, CT in Hounsfield units, PET-like, EPI-like, MRA-like;
   optionally a clinical low-contrast T1w, ``sample_low_contrast_t1``, or brain-grey
   bone, ``sample_brainlike_bone``);
   ``RegionalContrast`` then lets each non-brain tissue take other intensities in
   different parts of the head, ``SkullThickening`` grows the thin BrainWeb skull into
   the scalp, and the result is applied on the 1 mm labels and
   sampled with linear interpolation (partial volume);
4. resolution and artefacts at the output grid: ``Resolution`` (blur, thick slices),
   ``EpiDistortion``, ``Dropout``, ``BiasField``, ``Ghosting``, ``Noise``, ``Gamma``,
   ``IntensityCurve``, ``Quantisation``, ``FieldOfViewCut``;
5. ``conform.normalize_intensity`` - the very function inference uses.

Targets: the signed distance (mm, positive outside) to the brain surface in the
SynthStrip/MindGrab convention (labels CSF, GM, WM and enclosed vessels, holes filled)
and to the brain without extracerebral CSF, both resampled with the same transform.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from skullstrip.conform import normalize_intensity
from skullstrip.postprocess import largest_component

# BrainWeb tissue labels (see shared data README); procedural heads use the same values.
AIR, CSF, GM, WM, FAT, MUSCLE, SKIN, SKULL, VESSEL, CONNECTIVE, DURA, MARROW = range(12)
N_LABELS = 12
# Each anatomy is cut into this many random regions (:func:`tissue_regions`); label * 16
# + region still fits in uint8 with BrainWeb's 12 labels.
N_REGIONS = 16
# Non-brain tissues whose intensity may change from one region of the head to another
# (the face and neck hold many tissues that BrainWeb lumps into these few labels).
REGIONAL_TISSUES = (FAT, MUSCLE, SKIN, SKULL, CONNECTIVE, DURA, MARROW)
SDT_CLIP_MM = 25.0
# second entropy words of the draws that have random streams of their own, one each so
# they never share numbers: contrast_twin's contrast, sample_skull_base_warp,
# sample_rim_widening, sample_marrow_contrast, sample_rim_thinning and sample_head_size
TWIN_CONTRAST_STREAM = 1
SKULL_BASE_WARP_STREAM = 2
RIM_WIDENING_STREAM = 3
MARROW_CONTRAST_STREAM = 4
RIM_THINNING_STREAM = 5
HEAD_SIZE_STREAM = 6
# deepest brain tissue (mm below the brain+CSF surface) that RimWidening may turn into
# CSF, and deepest outer CSF that RimThinning may turn into cortex: the Anatomy keeps
# only these voxels in its rim and shell indices
MAX_RIM_MM = 6.0
MODALITIES = ("mri", "ct", "pet", "epi", "mra")


@dataclass
class SynthConfig:
    """All parameters of the generator's random draws, in one place."""

    shape: tuple[int, int, int] = (80, 80, 80)
    # draw each axis of the shape from [low, high] (multiples of 4) instead: the network
    # then cannot learn where the brain sits from the crop's edges, since inference
    # grids are whole heads of any size
    shape_range: tuple[int, int] | None = None
    # redraw a shape_range crop with more voxels than this: on a 2-core CPU a training
    # step costs 3.5-4.8 us a voxel up to 0.76 million voxels and 6-8 us from 0.95
    # million, so the quarter of the 64-112 crops above 0.8 million took about 40 % of
    # the full-crop time (training/README.md, run53)
    max_crop_voxels: int | None = None
    voxel_mm: float = 2.0
    modality_weights: dict[str, float] = field(
        default_factory=lambda: {"mri": 0.55, "ct": 0.12, "pet": 0.08, "epi": 0.18, "mra": 0.07}
    )
    # share of MRI samples with a named contrast (T1, T1+Gd, T2, FLAIR, PD) rather than a
    # random GMM: the random ones teach independence from contrast, the named ones the
    # anatomy-intensity relations of the scans users have
    p_mri_family: float = 0.5
    # every named-contrast MRI sample in this family (a key of MRI_FAMILY_MEANS) instead
    # of a random one; the random draws stay the same, so one seed gives the same head in
    # each family (for measuring how the network's surfaces depend on the contrast)
    mri_family: str | None = None
    max_rotation_deg: float = 25.0
    p_axis_permutation: float = 0.1  # heads lying in any axis order (wrong headers)
    scale_range: float = 0.15
    # every head isotropically resized by a factor drawn uniformly from this range
    # (HeadSize), on top of scale_range's per-axis jitter: BrainWeb's heads are larger
    # than most adults' (brain+CSF 1885-2125 mL), and networks trained on them alone
    # inflate the masks of smaller heads (training/README.md, run46); None (the
    # default) draws nothing, so that earlier recipes replay bit for bit
    head_size_range: tuple[float, float] | None = None
    max_shear: float = 0.05
    max_shift_mm: float = 30.0
    deform_max_mm: float = 4.0
    deform_control_points: int = 5
    p_thick_slices: float = 0.45
    thick_slice_mm: tuple[float, float] = (3.0, 6.5)
    p_blur: float = 0.5
    p_fov_cut: float = 0.3
    p_deface: float = 0.25  # research and clinical data are often defaced
    p_skull_stripped: float = 0.06  # inputs another tool already stripped
    # per-region intensities of the non-brain tissues (RegionalContrast); off by default
    # so that the recipes of the runs trained before it existed still reproduce
    p_regional_contrast: float = 0.0
    regional_std: float = 0.25  # largest SD of a tissue's regional offsets ([0, 1] scale)
    p_region_random: float = 0.15  # chance that a (tissue, region) takes any intensity
    # a thicker skull grown into the scalp (SkullThickening); off by default for the same
    # reason as p_regional_contrast
    p_skull_thickening: float = 0.0
    skull_thickening_mm: tuple[int, int] = (2, 6)
    p_brainlike_bone: float = 0.0  # MRI bone as grey as the brain (sample_brainlike_bone)
    p_low_contrast_t1: float = 0.0  # MRI as a clinical spin-echo T1w (sample_low_contrast_t1)
    # a larger smooth displacement of the lower head only (SkullBaseWarp): every BrainWeb
    # map has its one skull base at one height under the brain (training/README.md,
    # session 26); off by default so that earlier recipes replay bit for bit
    p_skull_base_warp: float = 0.0
    skull_base_warp_mm: float = 8.0
    # a CSF rim between the cortex and the skull at least this thick (RimWidening), as in
    # older and atrophic brains; off by default so that earlier recipes replay bit for bit
    p_rim_widening: float = 0.0
    rim_widening_mm: tuple[float, float] = (2.0, 5.0)
    # the opposite: a CSF rim at most this thick, the cortex grown out to it (RimThinning),
    # in samples that RimWidening left alone; off by default for the same reason
    p_rim_thinning: float = 0.0
    rim_thinning_mm: tuple[float, float] = (0.0, 1.0)
    # MRI marrow at any intensity in this range, whatever the contrast (MarrowContrast);
    # off by default so that earlier recipes replay bit for bit
    p_marrow_contrast: float = 0.0
    marrow_contrast_range: tuple[float, float] = (0.0, 1.0)
    max_bias_log: float = 0.5
    noise_std: tuple[float, float] = (0.0, 0.08)
    p_ghosting: float = 0.15
    p_quantise: float = 0.3
    gamma_log_std: float = 0.25
    # a random monotone intensity curve after the gamma (IntensityCurve), all modalities
    # but CT; off by default so that earlier recipes replay bit for bit
    p_intensity_curve: float = 0.0
    intensity_curve_knots: int = 3
    intensity_curve_log_slope_std: float = 0.7  # SD of each segment's log slope
    # conform.normalize_intensity's method for the finished image; training sets it to
    # the model's own (ModelConfig.input_normalisation), so inference normalises alike
    input_normalisation: str = "percentile"


# --------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class Anatomy:
    """A 1 mm RAS label map with the signed distances of its two brain masks."""

    labels: np.ndarray  # uint8
    # float32 mm, positive outside, (X, Y, Z, 2): brain+CSF then no-CSF, interleaved so
    # one gather per corner fetches both targets
    sdts: np.ndarray
    name: str
    # uint8 label * N_REGIONS + region (:func:`tissue_regions`): the map the image's
    # intensities are read from, so that a tissue can look different in each region
    regions: np.ndarray
    # where SkullThickening may grow bone: the flat indices of the scalp voxels and their
    # depth below the skull (:func:`scalp_depth_mm`), nearest first, so a thickness picks
    # a prefix instead of scanning the whole head on every sample
    scalp_index: np.ndarray  # int64
    scalp_depth: np.ndarray  # uint8, sorted
    # where RimWidening may turn cortex into CSF: the flat indices of the grey and white
    # matter voxels within MAX_RIM_MM of the brain+CSF surface and their depth below it
    # (mm), shallowest first, so a rim thickness picks a prefix
    rim_index: np.ndarray  # int64
    rim_depth: np.ndarray  # float32, sorted
    # where RimThinning may turn CSF into cortex: the same for the CSF voxels outside the
    # no-CSF mask (the rim and the open sulci, not the ventricles)
    shell_index: np.ndarray  # int64
    shell_depth: np.ndarray  # float32, sorted

    @property
    def sdt_brain(self) -> np.ndarray:
        return self.sdts[..., 0]

    @property
    def sdt_nocsf(self) -> np.ndarray:
        return self.sdts[..., 1]

    @property
    def brain_centre_vox(self) -> np.ndarray:
        inside = np.argwhere(self.sdt_brain[::4, ::4, ::4] < 0) * 4
        return inside.mean(axis=0)

    @property
    def brain_bottom_vox(self) -> float:
        """Lowest label-map slice (superior axis, 1 mm) that holds brain, to 4 mm."""
        return float(np.nonzero((self.sdt_brain[::4, ::4, ::4] < 0).any(axis=(0, 1)))[0].min() * 4)


def brain_masks_from_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brain masks in the SynthStrip/MindGrab convention from tissue labels.

    Brain+CSF: CSF, GM and WM plus the vessels enclosed by them, holes filled, largest
    component (drops CSF in the eyes or spinal canal that does not touch the brain).
    No-CSF: GM+WM with the enclosed ventricles (hole filling), largest component.
    """
    tissue = np.isin(labels, (CSF, GM, WM))
    closed = ndi.binary_closing(tissue, iterations=2)
    brain = largest_component(ndi.binary_fill_holes(tissue | (closed & (labels == VESSEL))))
    parenchyma = ndi.binary_fill_holes(np.isin(labels, (GM, WM)))
    nocsf = largest_component(ndi.binary_fill_holes(ndi.binary_closing(parenchyma, iterations=1)))
    return brain, nocsf & brain


# an adult eyeball is about 24 mm across; a deepest point of the muscle/skin label
# shallower or deeper than these is not a globe
EYE_RADIUS_MM = (7.0, 16.0)
# the two globes' centres lie about 60-70 mm apart from left to right
EYE_SEPARATION_MM = (45.0, 95.0)


def find_eye_globes(labels: np.ndarray) -> np.ndarray:
    """The two eyeballs of a 1 mm RAS BrainWeb-style label map (empty if not found).

    BrainWeb labels each globe as muscle/skin, a ball about 24 mm across in the orbital
    fat in front of and below the brain. Per side (left and right of the brain's centre),
    the muscle/skin voxel deepest inside its label in the quarter of the map in front of
    and below the brain's centre is the globe's centre and its depth the radius; the globe
    is the muscle/skin within that radius (+1 mm). Both globes must have plausible radii
    (``EYE_RADIUS_MM``) and lie ``EYE_SEPARATION_MM`` apart, or none is returned.
    """
    skin = labels == SKIN
    brain = np.isin(labels, (CSF, GM, WM))
    globes = np.zeros(labels.shape, dtype=bool)
    if not skin.any() or not brain.any():
        return globes
    present = np.argwhere(brain)
    centre = (present.min(axis=0) + present.max(axis=0)) // 2
    # depths only in front of and below the centre, plus a margin past the cut faces that
    # keeps every depth up to the largest radius exact (a third of the whole map's time)
    margin = int(EYE_RADIUS_MM[1]) + 1
    front, top = max(centre[1] - margin, 0), centre[2] + margin
    depth = ndi.distance_transform_edt(skin[:, front:, :top])[:, centre[1] - front :, : centre[2]]
    found = []
    for first, last in ((0, centre[0]), (centre[0], labels.shape[0])):
        side = depth[first:last]
        point = np.unravel_index(int(np.argmax(side)), side.shape)
        found.append((np.asarray(point) + (first, centre[1], 0), float(side[point])))
    (left, left_radius), (right, right_radius) = found
    plausible = all(EYE_RADIUS_MM[0] <= r <= EYE_RADIUS_MM[1] for r in (left_radius, right_radius))
    if not plausible or not EYE_SEPARATION_MM[0] <= abs(right[0] - left[0]) <= EYE_SEPARATION_MM[1]:
        return globes
    for point, radius in found:
        reach = int(np.ceil(radius + 1.0))
        box = tuple(slice(max(c - reach, 0), c + reach + 1) for c in point)
        squared = sum((axis - c) ** 2 for axis, c in zip(np.ogrid[box], point, strict=True))
        globes[box] |= skin[box] & (squared <= (radius + 1.0) ** 2)
    return globes


def fluid_eyes(labels: np.ndarray) -> np.ndarray:
    """The label map with its eyeballs (:func:`find_eye_globes`) labelled as CSF: fluid.

    The vitreous is water like CSF: long T1 and T2 (bright on T2w, PDw, EPI and DWI b0,
    dark on T1w and FLAIR), 0-15 HU on CT, no tracer in PET. As muscle/skin, a synthetic
    head never shows a CSF-bright ball outside the brain, and on the real T2w scans of
    ``eval/`` the shipped masks run around both eyes (training/README.md, session 49).
    The brain targets stay: the globes do not touch the brain's CSF, and
    :func:`brain_masks_from_labels` keeps only the component that is the brain.
    """
    globes = find_eye_globes(labels)
    if not globes.any():
        return labels
    relabelled = labels.copy()
    relabelled[globes] = CSF
    return relabelled


def signed_distance_mm(mask: np.ndarray, spacing: float | Sequence[float] = 1.0) -> np.ndarray:
    """Signed Euclidean distance to the mask surface in mm: negative inside."""
    if not mask.any():
        return np.full(mask.shape, SDT_CLIP_MM, dtype=np.float32)
    outside = ndi.distance_transform_edt(~mask, sampling=spacing)
    inside = ndi.distance_transform_edt(mask, sampling=spacing)
    return (outside - inside).astype(np.float32)


def cut_below_brainstem(mask: np.ndarray, min_area_mm2: float = 1000.0, keep_mm: int = 4) -> np.ndarray:
    """Drop the spinal cord: mask voxels more than ``keep_mm`` below the lowest axial slice
    whose cross-section reaches ``min_area_mm2`` (the bottom of the cerebellum).

    Reference masks (SPM, ROBEX, MindGrab's, SynthStrip's aseg-based ones) stop at the
    medulla; label maps that label the cord as brain tissue down to their last slice
    would teach the network to follow the spinal canal into the neck. 1 mm RAS voxels.
    """
    area = mask.sum(axis=(0, 1))
    large = np.flatnonzero(area >= min_area_mm2)
    if len(large) == 0:
        return mask
    cut = mask.copy()
    cut[:, :, : max(large[0] - keep_mm, 0)] = False
    return largest_component(cut)


def add_neck(labels: np.ndarray, length_mm: int = 80, rng: np.random.Generator | None = None,
             junction_mm: tuple[int, int] | None = None) -> np.ndarray:
    """Extend a label map that ends at the skull base with a neck and jaw below it.

    BrainWeb heads stop about a centimetre below the cerebellum, so a network trained on
    them alone has never seen a neck and lets the mask run down the spinal canal and into
    the soft tissue of head-and-neck scans. Below the last slice this draws, per 1 mm
    slice: a neck (an ellipse that narrows from the head's outline over 3-5 cm) and in
    front of it a jaw that recedes until the chin; inside them skin, fat, and a smooth
    random mixture of muscle, fat and connective tissue (so under random contrasts the
    neck can look like brain anywhere, and only its shape says it is not); a spinal cord
    (white matter) in CSF inside a vertebral ring and body (bone, marrow); an airway;
    carotid and jugular vessels; and a U of mandible bone. ``rng`` draws the neck's
    proportions (a fixed default neck without it). 1 mm RAS label maps only.

    ``junction_mm`` (low, high) hides where the label map ended. Without it every neck
    starts with a flat plane where all tissues change at once, about a centimetre below
    the cerebellum: a network can learn "the brain ends just above that plane", a cue no
    real scan has (run9, run12 and run13 called 24-42 mL more of the neck brain when the
    plane moved 20 mm down with the brain unmoved). With it, the deep tissues of the last
    slice continue down (their bone, dura and brain labels becoming muscle, as neck
    muscles run lengthwise from the skull base) to a depth that varies smoothly across
    the neck between ``low`` and ``high`` mm, and the random mixture starts only below
    that.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    bottom = labels[:, :, 0]
    head = ndi.binary_fill_holes(bottom > AIR)
    cord_voxels = np.argwhere(np.isin(bottom, (CSF, GM, WM)))
    if not head.any() or len(cord_voxels) == 0:
        return labels
    head_xy = np.argwhere(head)
    centre = head_xy.mean(axis=0)
    half_width = (head_xy[:, 0].max() - head_xy[:, 0].min()) / 2
    front = head_xy[:, 1].max()
    cord = cord_voxels.mean(axis=0)
    x, y = np.indices(bottom.shape, dtype=np.float32)
    dx, dy = x - cord[0], y - cord[1]  # +y is anterior

    # the spine, airway and vessels are the same on every slice: draw them once
    spine = np.full(bottom.shape, AIR, np.uint8)
    radius = np.hypot(dx, dy)
    body = np.hypot(dx, dy - 17)  # vertebral body in front of the canal
    spine[(radius < 14) | (body < 10)] = SKULL
    spine[body < 7] = MARROW
    spine[radius < 7.5] = CSF
    spine[radius < 4.5] = WM
    airway_y = rng.uniform(32, 42)
    airway = np.hypot(dx / rng.uniform(0.8, 1.6), dy - airway_y) < rng.uniform(5, 8)
    for side in (-1, 1):
        for offset_x, offset_y, size in ((22, 30, 3.5), (30, 18, 5.0)):  # carotid, jugular
            centre_x = side * offset_x * rng.uniform(0.85, 1.15)
            tube = np.hypot(dx - centre_x, dy - offset_y) < size * rng.uniform(0.7, 1.3)
            spine[tube & (spine == AIR)] = VESSEL
    drawn = spine != AIR

    neck_half_width = half_width * rng.uniform(0.45, 0.6)
    neck_back, neck_front = cord[1] - rng.uniform(30, 45), cord[1] + rng.uniform(55, 70)
    neck_centre_y, neck_half_depth = (neck_back + neck_front) / 2, (neck_front - neck_back) / 2
    in_neck = (dx / neck_half_width) ** 2 + ((y - neck_centre_y) / neck_half_depth) ** 2 <= 1
    narrowing_mm = rng.uniform(30, 50)
    chin_depth = rng.uniform(35, 65)  # the jaw ends this far below the last slice
    jaw_front = front - rng.uniform(0, 10)
    mandible_inner = rng.uniform(0.55, 0.7)
    texture = _smooth_noise(rng, (*bottom.shape, length_mm), control=8, amplitude=1.0)
    fat_above, connective_below = rng.uniform(0.3, 0.8), -rng.uniform(0.5, 1.0)
    mixture = np.where(texture > fat_above, FAT, np.where(texture < connective_below, CONNECTIVE, MUSCLE))

    # drawn after every earlier draw so that necks without a junction stay as they were
    continued_depth = None
    if junction_mm is not None:
        low, high = junction_mm
        field01 = (_smooth_noise(rng, bottom.shape, control=4, amplitude=1.0) + 1) / 2
        continued_depth = low + (high - low) * np.clip(field01, 0, 1)
        continued = np.where(np.isin(bottom, (SKULL, MARROW, DURA, CSF, GM, WM)), MUSCLE, bottom)

    slices = []
    for depth in range(length_mm, 0, -1):  # from the lowest new slice up to the old bottom
        shrink = 1 - 0.25 * min(depth / narrowing_mm, 1.0)
        source = (centre[:, None, None] + (np.stack([x, y]) - centre[:, None, None]) / shrink).round().astype(int)
        inside = (source >= 0).all(axis=0) & (source[0] < bottom.shape[0]) & (source[1] < bottom.shape[1])
        outline = np.zeros(bottom.shape, bool)
        outline[inside] = head[source[0][inside], source[1][inside]]
        # below the narrowing only the neck ellipse and, above the chin, the jaw remain
        jaw = (depth < chin_depth) & (y <= jaw_front - (front - cord[1]) * 0.6 * depth / chin_depth)
        if depth > narrowing_mm / 2:
            outline &= in_neck | jaw
        neck = np.full(bottom.shape, AIR, np.uint8)
        neck[outline] = SKIN
        neck[ndi.binary_erosion(outline, iterations=2)] = FAT
        deep = ndi.binary_erosion(outline, iterations=5)
        tissue = mixture[..., length_mm - depth]
        if continued_depth is not None:
            tissue = np.where(depth <= continued_depth, continued, tissue)
        neck[deep] = tissue[deep]
        if depth < chin_depth:  # mandible: a bony band along the jaw's front and sides
            band = deep & ~ndi.binary_erosion(deep, iterations=6) & (y > cord[1] + 25) & jaw
            sides_and_front = (np.abs(dx) > neck_half_width * mandible_inner) | (y > cord[1] + 45)
            neck[band & sides_and_front] = SKULL
        neck[drawn & outline] = spine[drawn & outline]
        neck[airway | ~outline] = AIR
        slices.append(neck)
    return np.concatenate([np.stack(slices, axis=-1), labels], axis=2)


def atrophy(labels: np.ndarray, thickness_mm: int) -> np.ndarray:
    """Widen the CSF spaces as ageing and disease (MS, dementia) do.

    Grey and white matter within ``thickness_mm`` of CSF become CSF: wider sulci, a
    thicker CSF rim under the skull, larger ventricles. BrainWeb's young adults have a
    thin rim, so without this a network learns that the brain edge hugs the cortex and
    under-segments older brains where CSF is dark (FLAIR, T1). The brain+CSF mask does
    not change; the no-CSF mask shrinks. 1 mm label maps.
    """
    if thickness_mm <= 0:
        return labels
    near_csf = ndi.binary_dilation(labels == CSF, iterations=thickness_mm)
    widened = labels.copy()
    widened[near_csf & np.isin(labels, (GM, WM))] = CSF
    return widened


def scalp_depth_mm(labels: np.ndarray, max_mm: int = 8, skin_mm: int = 2) -> np.ndarray:
    """Distance (whole mm, 1..max_mm) from the skull into the soft tissue outside it.

    0 for every other voxel: the skull itself, the brain side, air, and the outer
    ``skin_mm`` of the head (grown bone never reaches the surface; where the head is cut
    by the array's edge there is no skin). 1 mm label maps.
    """
    bone = np.isin(labels, (SKULL, MARROW))
    below_skin = ndi.binary_erosion(labels != AIR, iterations=skin_mm, border_value=1)
    soft = np.isin(labels, (FAT, MUSCLE, SKIN, CONNECTIVE)) & below_skin
    distance = ndi.distance_transform_edt(~bone)
    depth = np.where(soft & (distance <= max_mm), np.ceil(distance), 0)
    return depth.astype(np.uint8)


def anatomy_from_labels(labels: np.ndarray, name: str) -> Anatomy:
    brain, nocsf = brain_masks_from_labels(labels)
    brain = cut_below_brainstem(brain)
    nocsf = nocsf & brain
    labels = labels.astype(np.uint8)
    scalp_index, scalp_depth = scalp_by_depth(scalp_depth_mm(labels))
    sdts = np.clip(np.stack([signed_distance_mm(brain), signed_distance_mm(nocsf)], axis=-1),
                   -SDT_CLIP_MM, SDT_CLIP_MM)
    rim_index, rim_depth = cortex_by_depth(labels, sdts[..., 0])
    shell_index, shell_depth = outer_csf_by_depth(labels, sdts[..., 0], sdts[..., 1])
    return Anatomy(
        labels=labels,
        sdts=sdts,
        name=name,
        # seeded by the name: every run and worker cuts a subject's head the same way
        regions=tissue_regions(labels, np.random.default_rng(zlib.crc32(name.encode()) + 1)),
        scalp_index=scalp_index,
        scalp_depth=scalp_depth,
        rim_index=rim_index,
        rim_depth=rim_depth,
        shell_index=shell_index,
        shell_depth=shell_depth,
    )


def scalp_by_depth(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The flat indices of the nonzero voxels of ``depth`` and their depths, nearest first."""
    index = np.flatnonzero(depth)
    index = index[np.argsort(depth.ravel()[index], kind="stable")]
    return index, depth.ravel()[index]


def cortex_by_depth(labels: np.ndarray, sdt_brain: np.ndarray,
                    max_mm: float = MAX_RIM_MM) -> tuple[np.ndarray, np.ndarray]:
    """The grey and white matter voxels within ``max_mm`` inside the brain+CSF surface, shallowest first.

    Returns their flat indices and their depths (mm, ``-sdt_brain``).
    """
    return _by_depth(np.isin(labels.ravel(), (GM, WM)), sdt_brain, max_mm)


def outer_csf_by_depth(labels: np.ndarray, sdt_brain: np.ndarray, sdt_nocsf: np.ndarray,
                       max_mm: float = MAX_RIM_MM) -> tuple[np.ndarray, np.ndarray]:
    """The CSF voxels outside the no-CSF mask within ``max_mm`` inside the brain+CSF surface, shallowest first.

    Returns their flat indices and their depths (mm, ``-sdt_brain``).
    """
    return _by_depth((labels.ravel() == CSF) & (sdt_nocsf.ravel() >= 0), sdt_brain, max_mm)


def _by_depth(selected: np.ndarray, sdt_brain: np.ndarray, max_mm: float) -> tuple[np.ndarray, np.ndarray]:
    depth = -sdt_brain.ravel()
    index = np.flatnonzero(selected & (depth >= 0) & (depth < max_mm))
    order = np.argsort(depth[index], kind="stable")
    return index[order], depth[index][order].astype(np.float32)


def tissue_regions(labels: np.ndarray, rng: np.random.Generator, cell_mm: int = 2) -> np.ndarray:
    """``label * N_REGIONS + region``: the head cut into N_REGIONS random blobs.

    The regions are the Voronoi cells of random points in the head, with their borders
    bent by a smooth random displacement so that they do not look like planes. They are
    computed on a ``cell_mm`` grid (the regions are tens of mm wide) and repeated to 1 mm.
    """
    from scipy.spatial import cKDTree

    if labels.max() >= N_LABELS:
        raise ValueError(f"labels must be below {N_LABELS}, found {labels.max()}")
    coarse_shape = tuple(-(-n // cell_mm) for n in labels.shape)
    head = np.argwhere(labels[::cell_mm, ::cell_mm, ::cell_mm] != AIR)
    seeds = head[rng.choice(len(head), N_REGIONS, replace=len(head) < N_REGIONS)]
    seeds = seeds + rng.uniform(-0.5, 0.5, seeds.shape)
    points = np.indices(coarse_shape, dtype=np.float32).reshape(3, -1)
    bend = max(coarse_shape) / 12  # about a quarter of a region's width
    points += np.stack([_smooth_noise(rng, coarse_shape, control=4, amplitude=bend).ravel() for _ in range(3)])
    region = cKDTree(seeds).query(points.T)[1].astype(np.uint8).reshape(coarse_shape)
    for axis in range(3):
        region = np.repeat(region, cell_mm, axis=axis)
    region = region[: labels.shape[0], : labels.shape[1], : labels.shape[2]]
    return (labels * N_REGIONS + region).astype(np.uint8)


def load_label_map(path: str | Path) -> np.ndarray:
    """A label map reoriented to RAS and cropped to the head plus a margin."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(str(path)))
    zooms = image.header.get_zooms()[:3]
    if not np.allclose(zooms, 1.0, atol=0.05):
        raise ValueError(f"{path}: label maps must be 1 mm isotropic, got {zooms}")
    labels = np.asarray(image.dataobj, dtype=np.uint8)
    return _crop_to_content(labels, margin=8)


def brainweb_paths(directory: str | Path) -> list[Path]:
    """The label maps in a directory (``*.nii.gz`` / ``*.nii`` / ``*.mgz``), sorted."""
    directory = Path(directory)
    paths = sorted(p for p in directory.iterdir() if p.name.endswith((".nii.gz", ".nii", ".mgz")))
    if not paths:
        raise FileNotFoundError(f"no label maps (*.nii.gz, *.nii, *.mgz) in {directory}")
    return paths


def procedural_labels(rng: np.random.Generator, shape: tuple[int, int, int] = (150, 180, 170)) -> np.ndarray:
    """A head made of nested, randomly deformed ellipsoids: no real anatomy at all.

    Layers from outside in: skin, fat, muscle, skull (with marrow), dura, CSF, grey
    matter, white matter with ventricles; plus eyes, a neck and a few vessels. Radii
    are perturbed by smooth noise so every head has its own shape. 1 mm voxels, RAS.
    """
    grid = np.stack(
        np.meshgrid(*[np.arange(n, dtype=np.float32) - n / 2 for n in shape], indexing="ij")
    )
    centre = np.array([0, 8, 18], dtype=np.float32) + rng.normal(0, 3, 3).astype(np.float32)
    radii = np.array([70, 88, 72], dtype=np.float32) * rng.uniform(0.88, 1.08, 3).astype(np.float32)
    rel = (grid - centre[:, None, None, None]) / radii[:, None, None, None]
    radius = np.sqrt((rel**2).sum(axis=0))  # 1.0 on the outer head surface
    wobble = _smooth_noise(rng, shape, control=6, amplitude=0.035)
    folding = _smooth_noise(rng, shape, control=24, amplitude=0.03)
    r = radius + wobble

    labels = np.zeros(shape, dtype=np.uint8)
    shells = [  # (outer radius, label), outermost first; thicknesses in radius units
        (1.00, SKIN),
        (0.975, FAT),
        (0.95, MUSCLE),
        (0.93, SKULL),
        (0.905, MARROW),
        (0.89, SKULL),
        (0.87, DURA),
        (0.86, CSF),
    ]
    for outer, label in shells:
        labels[r <= outer + rng.normal(0, 0.004)] = label
    cortex = r + folding
    labels[cortex <= 0.835] = GM
    labels[cortex <= 0.74] = WM
    ventricle_rel = (grid - (centre + np.array([0, 5, 5], np.float32))[:, None, None, None]) / (
        np.array([14, 30, 12], np.float32) * rng.uniform(0.6, 1.4)
    )[:, None, None, None]
    labels[((ventricle_rel**2).sum(axis=0) <= 1.0) & (labels == WM)] = CSF

    for side in (-1, 1):  # eyes: fluid balls in the orbit, in front of the brain
        eye_centre = centre + np.array([side * 32, radii[1] * 0.78, -radii[2] * 0.35], np.float32)
        eye = ((grid - eye_centre[:, None, None, None]) ** 2).sum(axis=0) <= rng.uniform(10, 13) ** 2
        labels[eye] = CSF
        labels[eye & (((grid - eye_centre[:, None, None, None]) ** 2).sum(axis=0) > 9**2)] = CONNECTIVE

    neck_rel = (grid[:2] - (centre[:2] + np.array([0, -5], np.float32))[:, None, None, None]) / np.array(
        [45, 45], np.float32
    )[:, None, None, None]
    neck = ((neck_rel**2).sum(axis=0) <= 1.0) & (grid[2] < centre[2] - radii[2] * 0.55) & (labels == AIR)
    labels[neck] = MUSCLE
    labels[neck & ((neck_rel**2).sum(axis=0) > 0.8)] = SKIN

    vessels = (np.abs(_smooth_noise(rng, shape, control=10, amplitude=1.0)) < 0.015) & np.isin(labels, (GM, CSF))
    labels[vessels] = VESSEL
    return labels


# ------------------------------------------------------------------- spatial transform


@dataclass(frozen=True)
class SpatialTransform:
    """Maps output voxels into label-map voxels: affine then a smooth displacement.

    ``matrix``/``offset`` take output voxel indices to label voxels; ``displacement``
    (3 x control^3, in label voxels) is upsampled to the output grid with cubic splines.
    """

    matrix: np.ndarray
    offset: np.ndarray
    displacement: np.ndarray
    output_shape: tuple[int, int, int]
    output_voxel_mm: float

    def coordinates(self, distortion: EpiDistortion | None = None) -> np.ndarray:
        index = np.indices(self.output_shape, dtype=np.float32).reshape(3, -1)
        if distortion is not None:
            # the distorted voxel shows the anatomy shifted along the phase axis; the smooth
            # deformation below is read at the unshifted voxel (it varies over centimetres,
            # the shift is millimetres)
            index[distortion.axis] += distortion.shift(self.output_shape).ravel()
        coords = self.matrix.astype(np.float32) @ index + self.offset.astype(np.float32)[:, None]
        for axis in range(3):
            coords[axis] += upsample_smooth(self.displacement[axis], self.output_shape).ravel()
        return coords

    @property
    def mm_per_label_mm(self) -> float:
        """How many output mm one label-map mm becomes (to rescale distances)."""
        return self.output_voxel_mm / abs(np.linalg.det(self.matrix)) ** (1 / 3)


class TrilinearSampler:
    """Trilinear interpolation of several volumes at the same points, weights computed once.

    Equivalent to ``ndi.map_coordinates(volume, coords, order=1, mode="constant")`` (points
    outside the volume get ``outside``) for each volume, but the eight corner indices and
    weights are shared: the image (from uint8 labels and a per-label table), the nearest
    label and both distance maps cost one weight computation instead of four.
    """

    def __init__(self, coords: np.ndarray, shape: Sequence[int]) -> None:
        coords = coords.astype(np.float32, copy=False)
        limit = (np.asarray(shape, dtype=np.float32) - 1)[:, None]  # float32: no float64 temporaries
        self.inside = ((coords >= 0) & (coords <= limit)).all(axis=0)
        # corner 0 at floor(x), clipped so corner 1 exists; x = n - 1 then has weight 1 on it
        floor = np.clip(np.floor(coords), 0, np.maximum(limit - 1, 0))
        fraction = np.clip(coords - floor, 0, 1)
        base = floor.astype(np.int32)
        strides = np.array([shape[1] * shape[2], shape[2], 1], dtype=np.int32)
        origin = base[0] * strides[0] + base[1] * strides[1] + base[2]
        origin[~self.inside] = 0  # outside points read voxel 0, then get the outside value
        self.corners, self.weights = [], []
        pairs = [(1 - fraction[axis], fraction[axis]) for axis in range(3)]
        for i in (0, 1):
            for j in (0, 1):
                weight_xy = pairs[0][i] * pairs[1][j]
                for k in (0, 1):
                    self.weights.append(weight_xy * pairs[2][k])
                    self.corners.append(origin + np.int32(i * strides[0] + j * strides[1] + k))
        nearest = np.clip(np.floor(coords + 0.5), 0, limit).astype(np.int32)
        self.nearest_index = nearest[0] * strides[0] + nearest[1] * strides[1] + nearest[2]
        self.nearest_index[~self.inside] = 0

    def value_pairs(self, volume: np.ndarray, outside: float) -> tuple[np.ndarray, np.ndarray]:
        """Interpolated values of a float32 (X, Y, Z, 2) volume: two (N,) arrays.

        The pairs are read as complex64 numbers, so each corner is one 1D gather.
        """
        packed = self._blend(np.ascontiguousarray(volume).view(np.complex64).ravel(), outside * (1 + 1j))
        return packed.real.copy(), packed.imag.copy()

    def labels_to_values(self, labels: np.ndarray, table: np.ndarray, outside: float) -> np.ndarray:
        """Interpolated ``table[labels]`` without building the full-size intensity volume."""
        flat, table = labels.ravel(), table.astype(np.float32, copy=False)
        result = np.zeros(len(self.inside), dtype=np.float32)
        corner_labels = np.empty(len(self.inside), dtype=flat.dtype)
        values = np.empty(len(self.inside), dtype=np.float32)
        for corner, weight in zip(self.corners, self.weights):
            np.take(flat, corner, out=corner_labels)
            np.take(table, corner_labels, out=values)
            values *= weight
            result += values
        result[~self.inside] = outside
        return result

    def nearest(self, volume: np.ndarray, outside: int) -> np.ndarray:
        result = volume.ravel()[self.nearest_index]
        result[~self.inside] = outside
        return result

    def _blend(self, flat: np.ndarray, outside: complex) -> np.ndarray:
        # gathers into reused buffers: fresh full-size temporaries per corner cost ~20 %
        result = np.zeros(len(self.inside), dtype=flat.dtype)
        values = np.empty(len(self.inside), dtype=flat.dtype)
        for corner, weight in zip(self.corners, self.weights):
            np.take(flat, corner, out=values)
            values *= weight
            result += values
        result[~self.inside] = outside
        return result


def sample_spatial_transform(
    rng: np.random.Generator, config: SynthConfig, anatomy: Anatomy
) -> SpatialTransform:
    rotation = _random_rotation(rng, config.max_rotation_deg)
    if rng.random() < config.p_axis_permutation:
        permutation = np.eye(3)[rng.permutation(3)] * rng.choice([-1, 1], size=3)[:, None]
        rotation = permutation @ rotation
    scale = np.diag(1 + rng.uniform(-config.scale_range, config.scale_range, 3))
    shear = np.eye(3) + np.triu(rng.uniform(-config.max_shear, config.max_shear, (3, 3)), 1)
    # output voxel (mm) -> label voxel (1 mm): divide by scale so scale>1 enlarges the head
    linear = config.voxel_mm * rotation @ shear @ np.linalg.inv(scale)
    centre_out = (np.asarray(config.shape) - 1) / 2
    target = anatomy.brain_centre_vox + rng.uniform(-1, 1, 3) * config.max_shift_mm
    offset = target - linear @ centre_out
    control = config.deform_control_points
    displacement = rng.normal(0, config.deform_max_mm / 2, (3, control, control, control))
    return SpatialTransform(
        matrix=linear,
        offset=offset,
        displacement=np.clip(displacement, -config.deform_max_mm, config.deform_max_mm),
        output_shape=tuple(config.shape),
        output_voxel_mm=config.voxel_mm,
    )


@dataclass(frozen=True)
class HeadSize:
    """An isotropic resize of the head about the output grid's centre.

    ``factor`` is the resized head's length over the drawn one's: 0.9 makes the head 10 %
    smaller in every direction and 27 % smaller in volume. The label point at the grid's
    centre stays there, so the resize moves nothing the spatial transform centred. The
    targets follow from the resized transform (``SpatialTransform.mm_per_label_mm``).
    """

    factor: float

    def __call__(self, transform: SpatialTransform) -> SpatialTransform:
        matrix = transform.matrix / self.factor  # label mm per output mm: fewer for a larger head
        centre = (np.asarray(transform.output_shape, dtype=float) - 1) / 2
        offset = transform.offset + (transform.matrix - matrix) @ centre
        # the displacement is in label voxels and stays: a few mm of smooth warp either way
        return dataclasses.replace(transform, matrix=matrix, offset=offset)


def sample_head_size(seed: int, config: SynthConfig) -> HeadSize | None:
    """Draw a ``HeadSize`` from ``config.head_size_range`` with a generator of its own.

    Its own stream (:data:`HEAD_SIZE_STREAM`) leaves every other draw of the sample as it
    was, so a recipe that adds head sizes sees the same contrasts, crops and artefacts.
    """
    if config.head_size_range is None:
        return None
    low, high = config.head_size_range
    return HeadSize(float(np.random.default_rng([seed, HEAD_SIZE_STREAM]).uniform(low, high)))


@dataclass(frozen=True)
class SkullBaseWarp:
    """A smooth displacement of the lower head only, added to label-map coordinates.

    The 20 BrainWeb maps share one stereotaxic box: the brain's lowest voxel sits 15-21 mm
    above the map's end in every head, so the skull base, middle cranial fossae and
    posterior fossa have one shape and height against the brain above. The global
    deformation (``SpatialTransform``, a few mm) keeps that shape; the networks trained
    on it cut real temporal lobes at one flat floor or run below the cerebellum. This
    moves the lower head by up to ``SynthConfig.skull_base_warp_mm``: ``displacement``
    (3 x 4 x 4 x 4, in label voxels, on a coarse grid spanning the label map) applies in
    full below ``floor_vox`` on the superior axis and fades to nothing ``fade_vox`` above
    it, so the vertex and convexity stay put.
    Image and targets are read at the same warped coordinates, so they stay in register.
    """

    displacement: np.ndarray
    label_shape: tuple[int, int, int]
    floor_vox: float
    fade_vox: float

    def __call__(self, coords: np.ndarray) -> np.ndarray:
        # the coarse grid refined to a quarter of the label map once, then read linearly:
        # a cubic read at every output voxel would cost seconds per sample
        field = [upsample_smooth(self.displacement[axis], [max(n // 4, 2) for n in self.label_shape])
                 for axis in range(3)]
        to_field = (np.asarray(field[0].shape, np.float32) - 1) / (np.asarray(self.label_shape, np.float32) - 1)
        height = np.clip((self.floor_vox + self.fade_vox - coords[2]) / self.fade_vox, 0, 1)
        moving = np.nonzero(height > 0)[0]  # the field is read only where it applies
        height = height[moving]
        weight = height * height * (3 - 2 * height)  # smoothstep: no kink where the fade starts
        at = coords[:, moving] * to_field[:, None]
        warped = coords.copy()
        for axis in range(3):
            warped[axis, moving] += weight * ndi.map_coordinates(field[axis], at, order=1, mode="nearest")
        return warped


def sample_skull_base_warp(seed: int, config: SynthConfig, anatomy: Anatomy) -> SkullBaseWarp | None:
    """Draw a ``SkullBaseWarp`` (probability ``config.p_skull_base_warp``) from its own stream.

    Its numbers come from a generator of their own seeded by the sample's seed, so turning
    the warp on changes the lower head and nothing else of the sample.
    """
    if config.p_skull_base_warp <= 0:
        return None
    rng = np.random.default_rng([seed, SKULL_BASE_WARP_STREAM])
    if rng.random() >= config.p_skull_base_warp:
        return None
    limit = config.skull_base_warp_mm
    displacement = np.clip(rng.normal(0, limit / 2, (3, 4, 4, 4)), -limit, limit)
    # floor above the temporal poles and below the tentorium; the fade ends near the
    # ventricles, above which the label maps' heads already differ
    floor = anatomy.brain_bottom_vox + rng.uniform(25, 45)
    return SkullBaseWarp(displacement=displacement.astype(np.float32), label_shape=anatomy.labels.shape,
                         floor_vox=float(floor), fade_vox=30.0)


@dataclass(frozen=True)
class RimWidening:
    """A CSF rim at least ``rim_mm`` thick between the skull and the cortex.

    BrainWeb's young adults have 1-2 mm of CSF between the cortex and the skull; in older
    and atrophic brains (the MS patients of ``../shared/data/eval``) it is several mm. Where
    the CSF is as dark as the bone (FLAIR, T1w) the rim cannot be seen, and a network that
    has only seen thin rims may put the brain+CSF surface too far in (the surface lies
    deeper on FLAIR than on T2, ``bench/synthetic_leak.py --mri-family``; run40 trained
    with this and the ratio stayed, training/README.md). This is
    :func:`atrophy` measured from the skull instead of from the CSF, per sample instead
    of per subject: grey and white matter less than ``rim_mm`` below the brain+CSF surface
    become CSF, so gyral crowns recede and sulci open wider near the surface, while deep
    sulci, the midline and the ventricles stay as they are. The brain+CSF mask does not
    change; the no-CSF mask loses what became CSF (:meth:`nocsf_target`).
    """

    rim_mm: float

    def __call__(self, regions: np.ndarray, rim_index: np.ndarray, rim_depth: np.ndarray) -> np.ndarray:
        """``Anatomy.regions`` with the brain tissue less than ``rim_mm`` deep made CSF.

        ``rim_index``/``rim_depth``: the grey and white matter voxels sorted by depth below
        the brain+CSF surface (``Anatomy``); each voxel keeps its region.
        """
        index = rim_index[: np.searchsorted(rim_depth, self.rim_mm, side="left")]
        widened = regions.copy()
        flat = widened.reshape(-1)
        flat[index] = CSF * N_REGIONS + flat[index] % N_REGIONS
        return widened

    def nocsf_target(self, sdt_nocsf: np.ndarray, sdt_brain: np.ndarray, mm_per_label_mm: float) -> np.ndarray:
        """The no-CSF signed distance after the widening, in the unit of the two inputs.

        The new no-CSF mask is the old one minus the tissue within ``rim_mm`` of the
        brain+CSF surface, the intersection of two masks; inside it the signed distance
        of an intersection is the larger of the two (outside, close to it), so this needs
        no new distance transform. ``mm_per_label_mm`` converts ``rim_mm`` (label-map mm)
        to the inputs' unit.
        """
        return np.maximum(sdt_nocsf, sdt_brain + np.float32(self.rim_mm * mm_per_label_mm))


def sample_rim_widening(seed: int, config: SynthConfig) -> RimWidening | None:
    """With ``p_rim_widening``, a rim at least ``rim_widening_mm`` thick, drawn from its own stream.

    Its own generator, seeded by the sample's seed, leaves every other draw of the sample
    unchanged: with the probability at 0 earlier recipes replay exactly, and a sample with
    and without the widening differ in the outer cortex only.
    """
    rim_mm = _sample_rim_mm(seed, RIM_WIDENING_STREAM, config.p_rim_widening, config.rim_widening_mm)
    return None if rim_mm is None else RimWidening(rim_mm)


def _sample_rim_mm(seed: int, stream: int, probability: float, limits: tuple[float, float]) -> float | None:
    """With ``probability``, a uniform draw from ``limits``, from the sample's ``stream``."""
    if probability <= 0:
        return None
    rng = np.random.default_rng([seed, stream])
    if rng.random() >= probability:
        return None
    return float(rng.uniform(*limits))


@dataclass(frozen=True)
class RimThinning:
    """A CSF rim at most ``rim_mm`` thick between the skull and the cortex.

    The opposite of :class:`RimWidening`. BrainWeb's CSF between the cortex and the skull
    is thick at the vertex, so on synthetic T2 the brain lies inside a bright CSF shell at
    least 2 mm thick, at twice the grey matter's brightness; around the expert surface of
    real T2w scans there is no such shell (the first 2 mm outside are mostly dark,
    training/README.md, session 39), and the network's T2w masks are ~7 % too large. Here
    the outer CSF deeper than ``rim_mm`` below the brain+CSF surface (down to MAX_RIM_MM;
    not the ventricles, which lie inside the no-CSF mask) becomes grey matter: the cortex
    grows out to within ``rim_mm`` of the skull, as in young brains with closed sulci. The
    brain+CSF mask does not change; the no-CSF mask gains what became cortex
    (:meth:`nocsf_target`). run45 trained with it and its T2w masks grew instead of
    shrinking (not shipped, training/README.md).
    """

    rim_mm: float

    def __call__(self, regions: np.ndarray, shell_index: np.ndarray, shell_depth: np.ndarray) -> np.ndarray:
        """``Anatomy.regions`` with the outer CSF deeper than ``rim_mm`` made grey matter.

        ``shell_index``/``shell_depth``: the outer CSF voxels sorted by depth below the
        brain+CSF surface (``Anatomy``); each voxel keeps its region.
        """
        index = shell_index[np.searchsorted(shell_depth, self.rim_mm, side="right"):]
        thinned = regions.copy()
        flat = thinned.reshape(-1)
        flat[index] = GM * N_REGIONS + flat[index] % N_REGIONS
        return thinned

    def nocsf_target(self, sdt_nocsf: np.ndarray, sdt_brain: np.ndarray, mm_per_label_mm: float) -> np.ndarray:
        """The no-CSF signed distance after the thinning, in the unit of the two inputs.

        The new no-CSF mask is the old one plus everything deeper than ``rim_mm`` below
        the brain+CSF surface (CSF deeper than MAX_RIM_MM is then enclosed by cortex, and
        the no-CSF mask fills enclosed holes): a union, whose signed distance is the
        smaller of the two. ``mm_per_label_mm`` converts ``rim_mm`` to the inputs' unit.
        """
        return np.minimum(sdt_nocsf, sdt_brain + np.float32(self.rim_mm * mm_per_label_mm))


def sample_rim_thinning(seed: int, config: SynthConfig) -> RimThinning | None:
    """With ``p_rim_thinning``, a rim at most ``rim_thinning_mm`` thick, drawn from its own stream.

    Like :func:`sample_rim_widening`, its own generator leaves every other draw of the
    sample unchanged, and with the probability at 0 earlier recipes replay exactly.
    """
    rim_mm = _sample_rim_mm(seed, RIM_THINNING_STREAM, config.p_rim_thinning, config.rim_thinning_mm)
    return None if rim_mm is None else RimThinning(rim_mm)


# -------------------------------------------------------------------- tissue contrast


@dataclass(frozen=True)
class TissueContrast:
    """One mean intensity and within-tissue std per label (a Gaussian mixture)."""

    means: np.ndarray  # (N_LABELS,)
    stds: np.ndarray  # (N_LABELS,)
    modality: str
    # which contrast of the modality: an MRI family, "low_contrast_t1", or "random"
    # (MRI without a named family); the modality's name for the other modalities
    name: str

    def texture(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Within-tissue variation for labels already on the output grid."""
        return self.stds.astype(np.float32)[labels] * rng.standard_normal(labels.shape, dtype=np.float32)


def sample_tissue_contrast(rng: np.random.Generator, modality: str, p_mri_family: float = 0.5,
                           mri_family: str | None = None) -> TissueContrast:
    """Draw per-label intensities for a modality family.

    - ``mri``: with ``p_mri_family`` a T1- (without or with contrast agent), T2-, FLAIR-
      or PD-like ordering with jittered values (always ``mri_family`` if given, drawn
      with the same random numbers), else a fully random GMM (any contrast order, as
      SynthStrip).
    - ``ct``: Hounsfield units (bone 700-1800, brain 20-45, CSF 0-15, fat about -100,
      air -1000), sometimes stored with a +1024 offset as unsigned scanners do.
    - ``pet``: grey matter uptake highest, white matter lower, little outside the brain.
    - ``epi``: T2*/b0-like (CSF bright, fat suppressed), artefacts added later.
    - ``mra``: bright vessels on a dark background.
    """
    if mri_family is not None and mri_family not in MRI_FAMILY_MEANS:
        raise ValueError(f"unknown MRI family {mri_family!r}; choose from {list(MRI_FAMILY_MEANS)}")
    means = np.zeros(N_LABELS)
    stds = np.zeros(N_LABELS)
    name = modality
    if modality == "mri":
        if rng.random() < 1 - p_mri_family:
            means = rng.uniform(0, 1, N_LABELS)
            means[AIR] = rng.uniform(0, 0.1) if rng.random() < 0.85 else rng.uniform(0, 1)
            name = "random"
        else:
            drawn = rng.choice(list(MRI_FAMILY_MEANS))  # even when forced: later draws stay the same
            name = str(mri_family or drawn)
            means = _mri_family_means(rng, name)
        stds = rng.uniform(0, 0.06, N_LABELS)
    elif modality == "ct":
        means[:] = [-1000, rng.uniform(0, 15), rng.uniform(32, 45), rng.uniform(20, 32),
                    rng.uniform(-120, -80), rng.uniform(35, 60), rng.uniform(30, 60),
                    rng.uniform(700, 1800), rng.uniform(35, 300), rng.uniform(-30, 30),
                    rng.uniform(30, 70), rng.uniform(200, 800)]  # fmt: skip
        stds[:] = rng.uniform(2, 8)
        stds[SKULL] = stds[MARROW] = rng.uniform(30, 150)
        if rng.random() < 0.25:
            means += 1024
    elif modality == "pet":
        means[:] = 0.0
        means[GM] = 1.0
        means[WM] = rng.uniform(0.25, 0.5)
        means[CSF] = rng.uniform(0.0, 0.15)
        means[VESSEL] = rng.uniform(0.1, 0.5)
        means[[MUSCLE, SKIN, FAT, CONNECTIVE, MARROW]] = rng.uniform(0.0, 0.25, 5)
        stds[:] = 0.05
    elif modality == "epi":
        means = _mri_family_means(rng, "t2")
        means[[FAT, MARROW]] = rng.uniform(0.0, 0.3, 2)  # fat suppression
        if rng.random() < 0.3:  # diffusion-weighted: CSF dark, tissue grey
            means[CSF] = rng.uniform(0.0, 0.2)
        stds = rng.uniform(0, 0.05, N_LABELS)
    elif modality == "mra":
        means = rng.uniform(0.05, 0.3, N_LABELS)
        means[AIR] = rng.uniform(0, 0.05)
        means[VESSEL] = rng.uniform(0.8, 1.0)
        means[FAT] = rng.uniform(0.2, 0.6)
        stds = rng.uniform(0, 0.04, N_LABELS)
    else:
        raise ValueError(f"unknown modality family {modality!r}; choose from {MODALITIES}")
    return TissueContrast(means=means, stds=stds, modality=modality, name=name)


# Clinical spin-echo T1w (1.5 T, thick slices) of ../shared/data/eval, after the percentile
# normalisation: brain median 0.32-0.39 with its 10th-90th percentiles 0.25-0.44 (grey and
# white matter barely apart), the 0-4 mm band outside the brain 0.12-0.16, scalp fat 0.8-0.95.
LOW_CONTRAST_T1_MEANS = (0.02, 0.16, 0.31, 0.39, 0.95, 0.3, 0.45, 0.05, 0.35, 0.5, 0.3, 0.8)


def sample_low_contrast_t1(rng: np.random.Generator, contrast: TissueContrast,
                           config: SynthConfig) -> TissueContrast:
    """With ``p_low_contrast_t1`` (MRI only), the tissue means of a clinical spin-echo T1w.

    The named T1 contrast (grey matter 0.55, white 0.8, CSF 0.15) puts the cortex 3.7
    times above the CSF and well apart from white matter. Clinical T1w scans show the
    cortex only about 2.5 times above the CSF, grey and white matter nearly equal, and
    scalp fat twice as bright as the brain, so after normalisation the brain sits in a
    narrow band at a third of the range (:data:`LOW_CONTRAST_T1_MEANS`, jittered by half
    the named contrasts' SD so the low contrast stays low). Networks trained without this
    take the CSF band for brain (run9 on held-out synthetic heads: volume 1.25 times the
    target against 1.12 with the named contrasts).
    """
    # with the probability at 0 no number is drawn, so older recipes replay exactly
    if contrast.modality != "mri" or config.p_low_contrast_t1 <= 0 or rng.random() >= config.p_low_contrast_t1:
        return contrast
    base = np.asarray(LOW_CONTRAST_T1_MEANS)
    means = np.clip(base + rng.normal(0, MRI_FAMILY_JITTER / 2, N_LABELS), 0, 1)
    return dataclasses.replace(contrast, means=means, name="low_contrast_t1")


@dataclass(frozen=True)
class MarrowContrast:
    """The skull's marrow (diploe) at ``intensity``, whatever the contrast's own value.

    The named MRI contrasts put marrow at one value each (T2 and FLAIR 0.5, as grey as
    the brain), but in real heads the diploe runs from dark (thin, sclerotic, or red
    marrow, partial volume with the tables) to as bright as fat (fatty marrow, T1w and
    fast spin-echo T2w). On clean synthetic T2 heads of its own training subjects, run40
    places the brain+CSF surface 0.1 mm in with dark marrow and thick skulls but 4.0 mm
    out with bright marrow (on FLAIR +1.5 and -0.9 mm): it reads bright bone next to a
    bright-CSF contrast as CSF, and a thick dark band next to a dark-CSF one as bone
    beginning early. The targets do not change. run42 trained with it for 2000 steps:
    the spread barely narrowed (T2 4.2 to 3.8 mm), and neither did the split of the real
    T2w and FLAIR masks of the same heads (training/README.md, run42).
    """

    intensity: float

    def __call__(self, contrast: TissueContrast) -> TissueContrast:
        means = contrast.means.copy()
        means[MARROW] = self.intensity
        return dataclasses.replace(contrast, means=means)


def sample_marrow_contrast(seed: int, config: SynthConfig, contrast: TissueContrast) -> MarrowContrast | None:
    """With ``p_marrow_contrast`` (MRI only), marrow drawn from ``marrow_contrast_range``.

    Its own generator, seeded by the sample's seed, leaves every other draw of the sample
    unchanged: one seed gives the same head with its marrow at different intensities, and
    with the probability at 0 earlier recipes replay exactly.
    """
    if contrast.modality != "mri" or config.p_marrow_contrast <= 0:
        return None
    rng = np.random.default_rng([seed, MARROW_CONTRAST_STREAM])
    if rng.random() >= config.p_marrow_contrast:
        return None
    return MarrowContrast(intensity=float(rng.uniform(*config.marrow_contrast_range)))


def sample_brainlike_bone(rng: np.random.Generator, contrast: TissueContrast,
                          config: SynthConfig) -> TissueContrast:
    """With ``p_brainlike_bone`` (MRI only), skull and marrow take the brain's intensity.

    Cortical bone gives no MR signal, but in clinical T1w scans the vault's diploe is as
    grey as the cortex and partial volume with it greys the thin tables: the band between
    brain and scalp fat then looks like more brain, and only a thin CSF line and the
    band's shape say otherwise. Marrow is drawn between the grey- and white-matter values,
    the tables at 50-100 % of the marrow's.
    """
    # with the probability at 0 no number is drawn, so older recipes replay exactly
    if contrast.modality != "mri" or config.p_brainlike_bone <= 0 or rng.random() >= config.p_brainlike_bone:
        return contrast
    means = contrast.means.copy()
    means[MARROW] = rng.uniform(min(means[GM], means[WM]), max(means[GM], means[WM])) + rng.normal(0, 0.03)
    means[SKULL] = means[MARROW] * rng.uniform(0.5, 1.0)
    return dataclasses.replace(contrast, means=np.clip(means, 0, 1))


@dataclass(frozen=True)
class RegionalContrast:
    """The intensity of each (tissue, region) pair: a table indexed by ``Anatomy.regions``.

    SynthStrip synthesises from label maps with dozens of non-brain labels, so the face
    and neck show many independent intensities. BrainWeb has a handful (fat, muscle,
    skin, skull, ...), each then one intensity over the whole head, and a network can
    learn that anything with muscle's intensity is not brain. In real T1w scans the
    neck and skull-base tissues take grey- and white-matter-like values in places; this
    augmentation shows it such heads. Brain tissues (CSF, GM, WM, vessels) keep one
    intensity everywhere, so the brain itself still looks like one organ.
    """

    table: np.ndarray  # (N_LABELS * N_REGIONS,)

    @classmethod
    def uniform(cls, means: np.ndarray) -> RegionalContrast:
        """Every region of a tissue at the tissue's mean: the image of ``means[labels]``."""
        return cls(np.repeat(np.asarray(means, dtype=np.float64), N_REGIONS))


def sample_regional_contrast(rng: np.random.Generator, contrast: TissueContrast,
                             config: SynthConfig) -> RegionalContrast:
    """Regional intensities for the non-brain tissues, with ``p_regional_contrast``.

    Each tissue of :data:`REGIONAL_TISSUES` gets a Gaussian offset per region (SD drawn up
    to ``regional_std``), and each (tissue, region) pair takes any intensity in [0, 1]
    with ``p_region_random``. CT keeps one value per tissue: Hounsfield units are
    physical, and soft tissues really are brain-like there already.
    """
    # with the probability at 0 no number is drawn, so older recipes replay exactly
    if contrast.modality == "ct" or config.p_regional_contrast <= 0 or rng.random() >= config.p_regional_contrast:
        return RegionalContrast.uniform(contrast.means)
    table = np.repeat(contrast.means[:, None], N_REGIONS, axis=1)
    rows = list(REGIONAL_TISSUES)
    spread = rng.uniform(0, config.regional_std)
    table[rows] += rng.normal(0, spread, (len(rows), N_REGIONS))
    anything = rng.random((len(rows), N_REGIONS)) < config.p_region_random
    table[rows] = np.where(anything, rng.uniform(0, 1, (len(rows), N_REGIONS)), table[rows])
    return RegionalContrast(np.clip(table, 0, None).ravel())


MRI_FAMILY_MEANS = {  # air csf gm wm fat muscle skin skull vessel connect dura marrow
    "t1": (0.02, 0.15, 0.55, 0.8, 0.9, 0.4, 0.5, 0.05, 0.5, 0.6, 0.3, 0.7),
    # gadolinium: enhancing dura and vessels outline the brain with a bright rim that
    # is not scalp fat (clinical T1w are often post-contrast)
    "t1c": (0.02, 0.15, 0.55, 0.75, 0.9, 0.4, 0.5, 0.05, 0.95, 0.6, 0.8, 0.7),
    "t2": (0.02, 0.95, 0.6, 0.4, 0.7, 0.25, 0.4, 0.05, 0.2, 0.5, 0.2, 0.5),
    "flair": (0.02, 0.08, 0.6, 0.45, 0.7, 0.3, 0.45, 0.05, 0.2, 0.5, 0.3, 0.5),
    "pd": (0.02, 0.8, 0.75, 0.6, 0.85, 0.45, 0.6, 0.05, 0.4, 0.6, 0.4, 0.6),
}
# the contrasts a training twin may take (SyntheticHeads.contrast_twin): every named
# family and the clinical low-contrast T1w, whose surfaces differ most from the others
TWIN_CONTRASTS = (*MRI_FAMILY_MEANS, "low_contrast_t1")
MRI_FAMILY_JITTER = 0.07  # SD added to each tissue's mean


def _mri_family_means(rng: np.random.Generator, family: str) -> np.ndarray:
    base = np.asarray(MRI_FAMILY_MEANS[family])
    return np.clip(base + rng.normal(0, MRI_FAMILY_JITTER, N_LABELS), 0, 1)


@dataclass(frozen=True)
class SkullThickening:
    """A thicker skull: bone grown ``thickness_mm`` from the skull into the scalp.

    BrainWeb's vault is 2-3 mm of bone under 6-9 mm of scalp; an adult skull is 5-8 mm,
    an inner and an outer table around a diploe of marrow. In clinical T1w the diploe is
    as grey as the brain, and masks of a network trained on thin skulls run out to the
    scalp fat (run7 trained with this and :func:`sample_brainlike_bone`: FLAIR improved,
    T1w did not; training/README.md). The grown bone is marrow (diploe) then
    ``outer_table_mm`` of cortical bone. The brain and its targets do not change; the
    skin stays (see :func:`scalp_depth_mm`).
    """

    thickness_mm: int
    outer_table_mm: int

    def __call__(self, regions: np.ndarray, scalp_index: np.ndarray, scalp_depth: np.ndarray) -> np.ndarray:
        """``Anatomy.regions`` with the grown bone; each voxel keeps its region.

        ``scalp_index``/``scalp_depth``: the scalp voxels sorted by depth (``Anatomy``).
        """
        grown = np.searchsorted(scalp_depth, self.thickness_mm, side="right")
        index, depth = scalp_index[:grown], scalp_depth[:grown]
        tissue = np.where(depth > self.thickness_mm - self.outer_table_mm, SKULL, MARROW).astype(np.uint8)
        thickened = regions.copy()
        flat = thickened.reshape(-1)
        flat[index] = tissue * N_REGIONS + flat[index] % N_REGIONS
        return thickened


def sample_skull_thickening(rng: np.random.Generator, config: SynthConfig) -> SkullThickening | None:
    """With ``p_skull_thickening``, a thickness from ``skull_thickening_mm`` and a 1-2 mm outer table."""
    # with the probability at 0 no number is drawn, so older recipes replay exactly
    if config.p_skull_thickening <= 0 or rng.random() >= config.p_skull_thickening:
        return None
    low, high = config.skull_thickening_mm
    thickness = int(rng.integers(low, high + 1))
    return SkullThickening(thickness_mm=thickness, outer_table_mm=min(int(rng.integers(1, 3)), thickness))


# -------------------------------------------------------------- resolution/artefacts


@dataclass(frozen=True)
class Resolution:
    """Blur (sigma in output voxels per axis) and optional thick slices along one axis."""

    sigma_vox: np.ndarray
    slice_axis: int | None = None
    slice_factor: float = 1.0  # slice spacing / output voxel size

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if np.any(self.sigma_vox > 0.1):
            image = ndi.gaussian_filter(image, self.sigma_vox, mode="nearest")
        if self.slice_axis is not None and self.slice_factor > 1.05:
            # keep one slice every `slice_factor` voxels, then interpolate back linearly:
            # what conforming a thick-slice clinical scan to the working grid produces
            thick = list(image.shape)
            thick[self.slice_axis] = max(2, int(round(image.shape[self.slice_axis] / self.slice_factor)))
            image = resize_linear(resize_linear(image, thick), image.shape)
        return image


def sample_resolution(rng: np.random.Generator, config: SynthConfig, modality: str) -> Resolution:
    sigma = np.zeros(3)
    if modality == "pet":
        fwhm_mm = rng.uniform(5.0, 10.0)
        sigma[:] = fwhm_mm / 2.355 / config.voxel_mm
    elif modality == "epi":
        sigma[:] = rng.uniform(2.0, 4.0) / 2.355 / config.voxel_mm * rng.uniform(0.8, 1.2, 3)
    elif rng.random() < config.p_blur:
        sigma[:] = rng.uniform(0.0, 1.0, 3)
    slice_axis, slice_factor = None, 1.0
    if modality in ("mri", "ct", "epi") and rng.random() < config.p_thick_slices:
        slice_axis = int(rng.integers(3))
        slice_factor = rng.uniform(*config.thick_slice_mm) / config.voxel_mm
        sigma[slice_axis] = max(sigma[slice_axis], slice_factor * 0.4)
    return Resolution(sigma_vox=sigma, slice_axis=slice_axis, slice_factor=slice_factor)


@dataclass(frozen=True)
class BiasField:
    """Smooth multiplicative field: exp of a coarse random log-field upsampled."""

    log_field: np.ndarray  # coarse grid

    def __call__(self, image: np.ndarray) -> np.ndarray:
        field = np.exp(upsample_smooth(self.log_field, image.shape))
        return image * field


def sample_bias_field(rng: np.random.Generator, config: SynthConfig) -> BiasField:
    size = int(rng.integers(2, 6))
    strength = rng.uniform(0, config.max_bias_log)
    return BiasField(rng.normal(0, strength, (size, size, size)))


@dataclass(frozen=True)
class EpiDistortion:
    """Susceptibility-like geometric distortion: displacement along one (phase) axis.

    It is applied to the sampling coordinates (:meth:`SpatialTransform.coordinates`),
    so the image and both targets are interpolated once from the label map, not
    interpolated a second time on the output grid.
    """

    axis: int  # output-grid axis
    displacement_vox: np.ndarray  # coarse grid, output voxels

    def shift(self, shape: Sequence[int]) -> np.ndarray:
        return upsample_smooth(self.displacement_vox, shape)


def sample_epi_distortion(rng: np.random.Generator, config: SynthConfig) -> EpiDistortion:
    max_mm = rng.uniform(2.0, 8.0)
    coarse = rng.normal(0, max_mm / 2 / config.voxel_mm, (4, 4, 4))
    return EpiDistortion(axis=int(rng.integers(3)), displacement_vox=coarse)


@dataclass(frozen=True)
class Dropout:
    """Signal loss near air/tissue borders (sinuses, ear canals), as in EPI.

    Gaussian blobs at given voxel centres multiply the image by (1 - depth * blob).
    """

    centres_vox: np.ndarray  # (k, 3)
    radius_vox: np.ndarray  # (k,)
    depth: np.ndarray  # (k,)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        attenuation = np.ones(image.shape, dtype=np.float32)
        grid = np.indices(image.shape, dtype=np.float32)
        for centre, radius, depth in zip(self.centres_vox, self.radius_vox, self.depth):
            d2 = sum((grid[a] - centre[a]) ** 2 for a in range(3))
            attenuation *= 1 - depth * np.exp(-d2 / (2 * radius**2))
        return image * attenuation


def sample_dropout(rng: np.random.Generator, sdt_brain: np.ndarray) -> Dropout:
    """Blobs centred just outside the inferior half of the brain surface."""
    near_surface = np.argwhere((np.abs(sdt_brain) < 6) & (np.indices(sdt_brain.shape)[2] < sdt_brain.shape[2] * 0.5))
    k = int(rng.integers(1, 4))
    if len(near_surface) == 0:
        return Dropout(np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    centres = near_surface[rng.integers(len(near_surface), size=k)].astype(float)
    return Dropout(centres, rng.uniform(3, 8, k), rng.uniform(0.5, 1.0, k))


@dataclass(frozen=True)
class Ghosting:
    """Motion/Nyquist ghost: a shifted, attenuated copy of the image along one axis."""

    axis: int
    shift_fraction: float
    intensity: float

    def __call__(self, image: np.ndarray) -> np.ndarray:
        shift = int(round(self.shift_fraction * image.shape[self.axis]))
        return image + self.intensity * np.roll(image, shift, axis=self.axis)


def sample_ghosting(rng: np.random.Generator) -> Ghosting:
    return Ghosting(int(rng.integers(3)), rng.choice([0.5, rng.uniform(0.1, 0.9)]), rng.uniform(0.03, 0.25))


@dataclass(frozen=True)
class Noise:
    """Additive Gaussian noise or Rician (magnitude of complex Gaussian) noise."""

    std: float
    rician: bool
    seed: int

    def __call__(self, image: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        real = image + rng.normal(0, self.std, image.shape).astype(np.float32)
        if not self.rician:
            return real
        imaginary = rng.normal(0, self.std, image.shape).astype(np.float32)
        return np.sqrt(real**2 + imaginary**2)


def sample_noise(rng: np.random.Generator, config: SynthConfig, modality: str) -> Noise:
    std = rng.uniform(*config.noise_std)
    return Noise(std=std, rician=modality in ("epi", "mri") and rng.random() < 0.5, seed=int(rng.integers(2**31)))


@dataclass(frozen=True)
class Gamma:
    """Intensity gamma on the [0, 1]-scaled image: changes contrast non-linearly."""

    gamma: float

    def __call__(self, image: np.ndarray) -> np.ndarray:
        low, high = float(image.min()), float(image.max())
        scaled = (image - low) / max(high - low, 1e-6)
        return (scaled**self.gamma * (high - low) + low).astype(np.float32)


@dataclass(frozen=True)
class IntensityCurve:
    """A monotone piecewise-linear remapping of the [0, 1]-scaled image.

    The random non-linear intensity transform of Models Genesis (Zhou et al., MICCAI
    2019; a Bezier curve there, straight segments here), kept monotone so that tissues
    keep their order. A gamma bends the whole range one way; a curve can squeeze one band
    and stretch another. Tried for the clinical T1w over-reach (run17): it did not help,
    since the networks were already invariant to such remaps on synthetic heads; what
    those scans lack is cortex-to-CSF contrast (:func:`sample_low_contrast_t1`).
    ``knots_in`` and ``knots_out`` are increasing and run from 0 to 1.
    """

    knots_in: tuple[float, ...]
    knots_out: tuple[float, ...]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        low, high = float(image.min()), float(image.max())
        scaled = (image - low) / max(high - low, 1e-6)
        return (np.interp(scaled, self.knots_in, self.knots_out) * (high - low) + low).astype(np.float32)


def sample_intensity_curve(rng: np.random.Generator, config: SynthConfig, modality: str) -> IntensityCurve | None:
    """With ``p_intensity_curve`` (not CT, whose Hounsfield units are physical), a curve
    through ``intensity_curve_knots`` inner knots at sorted uniform positions, each
    segment's slope log-normal (SD ``intensity_curve_log_slope_std``) and the whole
    rescaled to end at 1.

    Bounded slopes rather than free knot values: with free values one segment can be
    ten times steeper than the rest, turning the noise in the air into a bright speckle
    and the head into one flat grey, which no scanner produces; with an SD of 0.7 the
    steepest of four segments is a median 3.8 and a 90th percentile 8.7 times the
    flattest, enough to squeeze the brain's band to a third of its width and stretch the
    next one.
    """
    # with the probability at 0 no number is drawn, so older recipes replay exactly
    if modality == "ct" or config.p_intensity_curve <= 0 or rng.random() >= config.p_intensity_curve:
        return None
    knots_in = np.concatenate([[0.0], np.sort(rng.uniform(0, 1, config.intensity_curve_knots)), [1.0]])
    slopes = np.exp(rng.normal(0, config.intensity_curve_log_slope_std, len(knots_in) - 1))
    rises = np.cumsum(np.diff(knots_in) * slopes)
    knots_out = np.concatenate([[0.0], rises / rises[-1]])
    knots_out[-1] = 1.0
    return IntensityCurve(tuple(knots_in.tolist()), tuple(knots_out.tolist()))


@dataclass(frozen=True)
class Quantisation:
    """Integer storage: round to a number of grey levels (8-bit templates, uint16)."""

    levels: int

    def __call__(self, image: np.ndarray) -> np.ndarray:
        low, high = float(image.min()), float(image.max())
        step = max(high - low, 1e-6) / self.levels
        return (np.round((image - low) / step) * step + low).astype(np.float32)


@dataclass(frozen=True)
class FieldOfViewCut:
    """A scan that does not cover the whole head: voxels past a plane get the background."""

    axis: int
    keep_from: int
    keep_to: int

    def __call__(self, image: np.ndarray) -> np.ndarray:
        out = image.copy()
        background = float(image.min())
        index = [slice(None)] * 3
        index[self.axis] = slice(0, self.keep_from)
        out[tuple(index)] = background
        index[self.axis] = slice(self.keep_to, None)
        out[tuple(index)] = background
        return out


def sample_fov_cut(rng: np.random.Generator, shape: tuple[int, int, int]) -> FieldOfViewCut:
    axis = int(rng.integers(3))
    n = shape[axis]
    keep = int(n * rng.uniform(0.45, 0.85))
    start = int(rng.integers(0, n - keep + 1))
    return FieldOfViewCut(axis, start, start + keep)


@dataclass(frozen=True)
class Defacing:
    """Face removal as defacing tools do it: voxels past an oblique plane become background.

    The plane is given in label-map voxels (1 mm RAS): ``normal`` points anterior-inferior
    and ``point`` lies on it. Voxels within ``margin_mm`` of the brain are always kept,
    as defacing tools guarantee; everything in front of the plane gets the image minimum.
    """

    normal: np.ndarray  # (3,) unit vector in label-map space
    point: np.ndarray  # (3,) label-map voxel on the plane
    margin_mm: float

    def __call__(self, image: np.ndarray, label_coords: np.ndarray, sdt_brain_mm: np.ndarray) -> np.ndarray:
        ahead = (self.normal.astype(np.float32) @ (label_coords - self.point.astype(np.float32)[:, None])) > 0
        face = ahead.reshape(image.shape) & (sdt_brain_mm > self.margin_mm)
        return np.where(face, image.min(), image).astype(np.float32)


def sample_defacing(rng: np.random.Generator, anatomy: Anatomy) -> Defacing:
    """A plane tilted 25-65 degrees from coronal, 35-65 mm in front of the brain centre."""
    tilt = np.deg2rad(rng.uniform(25, 65))
    normal = np.array([rng.normal(0, 0.05), np.cos(tilt), -np.sin(tilt)])
    normal /= np.linalg.norm(normal)
    point = anatomy.brain_centre_vox + normal * rng.uniform(35, 65)
    return Defacing(normal=normal, point=point, margin_mm=float(rng.uniform(1, 6)))


@dataclass(frozen=True)
class SkullStripped:
    """An input another tool already skull-stripped: background outside its brain mask.

    Pipelines feed skullstrip images stripped elsewhere (BET, HD-BET, SynthStrip) whose
    masks follow their own conventions; ``margin_mm`` grows (positive) or shrinks that
    mask around ours, so the network learns to keep what is left rather than erode it.
    """

    margin_mm: float

    def __call__(self, image: np.ndarray, sdt_brain_mm: np.ndarray) -> np.ndarray:
        return np.where(sdt_brain_mm > self.margin_mm, image.min(), image).astype(np.float32)


def sample_skull_stripped(rng: np.random.Generator) -> SkullStripped:
    return SkullStripped(margin_mm=float(rng.uniform(-2.0, 1.5)))


# ------------------------------------------------------------------------- the sample


@dataclass
class Sample:
    image: np.ndarray  # float32, normalised as for inference
    sdt_brain: np.ndarray  # float32 mm in output space, positive outside
    sdt_nocsf: np.ndarray
    affine: np.ndarray  # output voxel -> mm (RAS-like, for writing NIfTI)
    modality: str
    anatomy: str
    contrast: str  # TissueContrast.name: e.g. "flair", "random", "low_contrast_t1", "ct"

    @property
    def brain_mask(self) -> np.ndarray:
        return self.sdt_brain < 0


class SyntheticHeads:
    """Deterministic synthetic head generator: ``sample(seed)`` always gives the same head.

    ``anatomies`` are the 1 mm label maps to draw from (load them with
    :func:`load_anatomies`); with ``n_procedural`` extra procedural heads made from
    ``procedural_seed``, so the generator also works with no external data at all.
    """

    def __init__(self, anatomies: Sequence[Anatomy], config: SynthConfig | None = None) -> None:
        if not anatomies:
            raise ValueError("the generator needs at least one anatomy")
        self.anatomies = list(anatomies)
        self.config = config or SynthConfig()

    def sample(self, seed: int, modality: str | None = None) -> Sample:
        config = self.config
        rng = np.random.default_rng(seed)
        if config.shape_range is not None:
            config = dataclasses.replace(config, shape=draw_crop_shape(rng, config.shape_range,
                                                                       config.max_crop_voxels))
        anatomy = self.anatomies[int(rng.integers(len(self.anatomies)))]
        if modality is None:
            names = list(config.modality_weights)
            weights = np.asarray([config.modality_weights[n] for n in names], dtype=float)
            modality = str(rng.choice(names, p=weights / weights.sum()))

        transform = sample_spatial_transform(rng, config, anatomy)
        head_size = sample_head_size(seed, config)
        if head_size is not None:
            transform = head_size(transform)
        distortion = sample_epi_distortion(rng, config) if modality == "epi" else None
        coords = transform.coordinates(distortion)
        warp = sample_skull_base_warp(seed, config, anatomy)
        if warp is not None:
            coords = warp(coords)
        contrast = sample_tissue_contrast(rng, modality, config.p_mri_family, config.mri_family)
        contrast = sample_low_contrast_t1(rng, contrast, config)
        marrow = sample_marrow_contrast(seed, config, contrast)
        if marrow is not None:
            contrast = marrow(contrast)
        contrast = sample_brainlike_bone(rng, contrast, config)
        regional = sample_regional_contrast(rng, contrast, config)
        thickening = sample_skull_thickening(rng, config)
        regions = anatomy.regions
        if thickening is not None:
            regions = thickening(regions, anatomy.scalp_index, anatomy.scalp_depth)
        # one rim change at most: a widened rim stays wide
        rim_change = sample_rim_widening(seed, config)
        if rim_change is not None:
            regions = rim_change(regions, anatomy.rim_index, anatomy.rim_depth)
        else:
            rim_change = sample_rim_thinning(seed, config)
            if rim_change is not None:
                regions = rim_change(regions, anatomy.shell_index, anatomy.shell_depth)
        shape = config.shape
        sampler = TrilinearSampler(coords, anatomy.labels.shape)
        # partial volume: the image is interpolated from the 1 mm tissue intensities
        image = sampler.labels_to_values(regions, regional.table, outside=contrast.means[AIR]).reshape(shape)
        labels = (sampler.nearest(regions, outside=AIR) // N_REGIONS).reshape(shape)
        image += contrast.texture(labels, rng)
        to_output_mm = np.float32(transform.mm_per_label_mm)
        targets = [d.reshape(shape) * to_output_mm for d in sampler.value_pairs(anatomy.sdts, outside=SDT_CLIP_MM)]
        if rim_change is not None:
            targets[1] = rim_change.nocsf_target(targets[1], targets[0], transform.mm_per_label_mm)

        if modality == "epi" and rng.random() < 0.7:
            image = sample_dropout(rng, targets[0])(image)
        image = sample_resolution(rng, config, modality)(image)
        image = sample_bias_field(rng, config)(image) if modality != "ct" else image
        if rng.random() < config.p_ghosting and modality in ("mri", "epi"):
            image = sample_ghosting(rng)(image)
        if modality == "ct":
            image = image + rng.normal(0, rng.uniform(1, 6), image.shape).astype(np.float32)
        else:
            image = np.maximum(image, 0)
            image = sample_noise(rng, config, modality)(image)
            image = Gamma(float(np.exp(rng.normal(0, config.gamma_log_std))))(image)
            curve = sample_intensity_curve(rng, config, modality)
            if curve is not None:
                image = curve(image)
        if rng.random() < config.p_quantise:
            image = Quantisation(int(rng.choice([64, 256, 4096])))(image)
        if rng.random() < config.p_deface:
            image = sample_defacing(rng, anatomy)(image, coords, targets[0])
        if rng.random() < config.p_skull_stripped:
            image = sample_skull_stripped(rng)(image, targets[0])
        if rng.random() < config.p_fov_cut:
            image = sample_fov_cut(rng, shape)(image)
        affine = np.eye(4)
        affine[:3, :3] *= config.voxel_mm
        return Sample(
            image=normalize_intensity(image, config.input_normalisation),
            sdt_brain=targets[0],
            sdt_nocsf=targets[1],
            affine=affine,
            modality=modality,
            anatomy=anatomy.name,
            contrast=contrast.name,
        )

    def contrast_twin(self, seed: int, other_than: str) -> Sample:
        """The head of ``sample(seed)`` imaged in another MRI contrast, for an MRI seed.

        Anatomy, grid, deformation and therefore both targets are those of
        ``sample(seed)`` (they are drawn before the contrast); the contrast is a named
        family or the clinical low-contrast T1 (:data:`TWIN_CONTRASTS`) other than
        ``other_than`` (the sample's ``contrast``), chosen by a generator of its own so
        the training stream of ``sample`` is untouched. Every draw after the contrast
        (artefacts, resolution, noise) then differs too. Two contrasts of one head with
        one target are what a consistency loss (``train.contrast_consistency``) needs to
        teach the same surface on every contrast, against the bias measured with
        ``SynthConfig.mri_family`` (FLAIR masks smaller than T2 ones of the same head).
        """
        choices = [name for name in TWIN_CONTRASTS if name != other_than]
        twin_contrast = choices[int(np.random.default_rng([seed, TWIN_CONTRAST_STREAM]).integers(len(choices)))]
        low_contrast = twin_contrast == "low_contrast_t1"
        twin_config = dataclasses.replace(self.config, p_mri_family=1.0,
                                          mri_family="t1" if low_contrast else twin_contrast,
                                          p_low_contrast_t1=1.0 if low_contrast else 0.0)
        # the twin resamples the targets it shares with the sample (a fraction of a
        # sample's cost, in the loader's worker while the network trains on the last batch)
        return SyntheticHeads(self.anatomies, twin_config).sample(seed)

    def __iter__(self) -> Iterator[Sample]:
        seed = 0
        while True:
            yield self.sample(seed)
            seed += 1


def load_anatomies(paths: Sequence[str | Path], atrophy_mm: Sequence[int] = (0,),
                   neck_junction_mm: Sequence[int] | None = None, eyes_fluid: bool = False) -> list[Anatomy]:
    """Label maps from files with their brain distance maps (about 5 s each).

    Each map is given a neck (:func:`add_neck`, whose ``junction_mm`` is
    ``neck_junction_mm``) and an atrophy (:func:`atrophy`) of a thickness drawn from
    ``atrophy_mm``, both from a seed made of the file's name so that every run and every
    worker sees the same anatomy for a subject; with ``eyes_fluid`` its eyeballs become
    fluid (:func:`fluid_eyes`).
    """
    junction = None if neck_junction_mm is None else (int(neck_junction_mm[0]), int(neck_junction_mm[1]))
    anatomies = []
    for path in paths:
        name = Path(path).name.split(".")[0]
        rng = np.random.default_rng(zlib.crc32(name.encode()))  # each subject keeps its own neck
        labels = add_neck(load_label_map(path), length_mm=int(rng.integers(50, 101)), rng=rng, junction_mm=junction)
        labels = atrophy(labels, thickness_mm=int(rng.choice(np.asarray(atrophy_mm))))
        if eyes_fluid:
            labels = fluid_eyes(labels)
        anatomies.append(anatomy_from_labels(labels, name))
    return anatomies


def procedural_anatomies(n: int, seed: int = 0) -> list[Anatomy]:
    """``n`` procedural heads (no external data needed), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [anatomy_from_labels(procedural_labels(rng), f"procedural{i:03d}") for i in range(n)]


def write_samples(out_dir: str | Path, n: int, labels_dir: str | Path | None = None, seed: int = 0,
                  modality: str | None = None, preview: bool = False,
                  real_images: Sequence[str | Path] = ()) -> list[Path]:
    """Write ``n`` samples as ``synth_XXX_image.nii.gz`` / ``_mask.nii.gz`` (+ ``preview.png``).

    Without ``labels_dir`` the anatomy is procedural. Without ``modality`` the samples
    cycle through the modality families, so any preview shows each of them.
    ``real_images`` are shown in the preview above the synthetic ones, side by side.
    """
    import nibabel as nib

    from skullstrip.qc import montage_png

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    anatomies = load_anatomies(brainweb_paths(labels_dir)) if labels_dir else procedural_anatomies(4, seed)
    generator = SyntheticHeads(anatomies)
    written, rows = [], []
    for real in real_images:
        image = nib.load(str(real))
        data = np.asanyarray(image.dataobj).astype(np.float32)
        rows.append((data if data.ndim == 3 else data[..., 0], None, image.affine, f"real: {Path(real).parent.name}"))
    for index in range(n):
        sample = generator.sample(seed + index, modality or MODALITIES[index % len(MODALITIES)])
        stem = out_dir / f"synth_{index:03d}"
        nib.save(nib.Nifti1Image(sample.image, sample.affine), f"{stem}_image.nii.gz")
        nib.save(nib.Nifti1Image(sample.brain_mask.astype(np.uint8), sample.affine), f"{stem}_mask.nii.gz")
        written.append(Path(f"{stem}_image.nii.gz"))
        rows.append((sample.image, sample.brain_mask, sample.affine,
                     f"synthetic {sample.modality} ({sample.anatomy}, seed {seed + index})"))
    if preview:
        montage_png(out_dir / "preview.png", rows)
    return written


def make_phantom(seed: int = 0, voxel_mm: float = 1.5, shape: tuple[int, int, int] = (112, 136, 120),
                 modality: str = "mri", anatomies: Sequence[Anatomy] | None = None) -> Sample:
    """An upright, whole-head synthetic scan for tests and benchmarks (no external data).

    Same generator as training but with no rotation, shift, cut or permutation, so the
    head sits centred in a scanner-like grid of the requested voxel size.
    """
    config = config_with(shape=shape, voxel_mm=voxel_mm, max_rotation_deg=0.0, p_axis_permutation=0.0,
                         max_shift_mm=0.0, p_fov_cut=0.0, p_thick_slices=0.0, p_ghosting=0.0, p_deface=0.0,
                         p_skull_stripped=0.0)
    generator = SyntheticHeads(anatomies or procedural_anatomies(1, seed), config)
    return generator.sample(seed, modality)


def draw_crop_shape(rng: np.random.Generator, shape_range: Sequence[int],
                    max_voxels: int | None = None) -> tuple[int, int, int]:
    """A crop shape: each axis uniform over the multiples of 4 in ``shape_range``.

    A shape with more than ``max_voxels`` voxels is drawn again, so the accepted shapes are
    uniform over those within the cap; with no cap the draw takes exactly one call of
    ``rng``, as in the recipes made before the cap existed.
    """
    low, high = (int(v) // 4 for v in shape_range)
    if max_voxels is not None and (4 * low) ** 3 > max_voxels:
        raise ValueError(f"max_crop_voxels {max_voxels} is below the smallest crop, {4 * low}^3 voxels")
    while True:
        shape = tuple(int(n) * 4 for n in rng.integers(low, high + 1, 3))
        if max_voxels is None or np.prod(shape) <= max_voxels:
            return shape


def config_with(**changes: object) -> SynthConfig:
    """A default config with some fields changed (for tests and CLI options)."""
    return dataclasses.replace(SynthConfig(), **changes)


# ---------------------------------------------------------------------------- helpers


def _random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    angles = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], control: int, amplitude: float) -> np.ndarray:
    coarse = rng.normal(0, amplitude, (control,) * len(shape)).astype(np.float32)
    return upsample_smooth(coarse, shape)


def upsample_smooth(coarse: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Smoothly upsample a small random grid to ``shape`` (float32).

    Cubic splines to a quarter of the size, then separable linear interpolation: visually
    the same smooth field as a full cubic zoom, at a small fraction of the cost.
    """
    middle = [max(c, n // 4) for c, n in zip(coarse.shape, shape)]
    smooth = ndi.zoom(coarse.astype(np.float32), [m / c for m, c in zip(middle, coarse.shape)], order=3,
                      grid_mode=True, mode="nearest")
    return resize_linear(smooth, shape)


def resize_linear(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Linear resize, one axis at a time, with voxel-edge alignment.

    Same values as ``ndi.zoom(volume, zoom, order=1, grid_mode=True, mode="nearest")``
    (output voxel centres mapped through the voxel edges, edge values repeated), but
    each pass is two gathers and a blend, several times faster on 3D fields.
    """
    result = volume.astype(np.float32, copy=False)
    for axis, n_out in enumerate(shape):
        n_in = result.shape[axis]
        if n_in == n_out:
            continue
        position = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        low = np.floor(position).astype(np.intp)
        high = np.minimum(low + 1, n_in - 1)
        weight = (position - low).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(result.ndim)])
        result = np.take(result, low, axis=axis) * (1 - weight) + np.take(result, high, axis=axis) * weight
    return result


def _crop_to_content(labels: np.ndarray, margin: int) -> np.ndarray:
    index = np.argwhere(labels > 0)
    low = np.maximum(index.min(axis=0) - margin, 0)
    high = np.minimum(index.max(axis=0) + margin + 1, labels.shape)
    return labels[low[0] : high[0], low[1] : high[1], low[2] : high[2]]


__all__ = [
    "MODALITIES",
    "SynthConfig",
    "SyntheticHeads",
    "Sample",
    "Anatomy",
    "load_anatomies",
    "fluid_eyes",
    "find_eye_globes",
    "procedural_anatomies",
    "brain_masks_from_labels",
    "signed_distance_mm",
    "write_samples",
    "make_phantom",
]
