"""Training: a tiny resumable run on procedural label maps, the loss, and the export."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import asdict, replace

import nibabel as nib
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from skullstrip import synth  # noqa: E402
from skullstrip.infer import Model, load_model  # noqa: E402
from skullstrip.model import ModelConfig, StripNet, count_parameters, flops_per_voxel, shipped_weights  # noqa: E402
from skullstrip.train import (  # noqa: E402
    SyntheticStream,
    TrainConfig,
    _TrainingAnatomies,
    _validation_samples,
    average_checkpoints,
    axis_order,
    compute_precision,
    contrast_consistency,
    cpu_has_bfloat16,
    export_weights,
    initialise_from,
    loss_function,
    surface_offset,
    train,
    training_forward,
)


@pytest.fixture(scope="module")
def label_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labels")
    rng = np.random.default_rng(0)
    for index in range(3):
        labels = synth.procedural_labels(rng, shape=(120, 140, 130))
        nib.Nifti1Image(labels, np.eye(4)).to_filename(folder / f"head{index}_labels.nii.gz")
    return folder


def tiny_config(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, validation_subjects=1, procedural_heads=0, validation_samples=2,
                       validate_every=2, log_every=1, workers=0, threads=1, warmup_steps=2,
                       synth={"shape": [32, 32, 32], "voxel_mm": 4.0})


SMALL = dict(core_channels=4, stem_channels=2, fine_channels=3)


def trained_small_network(tmp_path, label_dir) -> tuple:
    """A 2-step run of the SMALL layout: its checkpoint and the network with its raw weights."""
    config = tiny_config(2)
    config.model = ModelConfig(**SMALL).to_dict()
    checkpoint = train(label_dir, tmp_path / "base", config, progress=False)
    network = StripNet(ModelConfig(**SMALL))
    network.load_state_dict(torch.load(checkpoint, weights_only=False)["model"])
    return checkpoint, network


def test_parameter_budget():
    assert count_parameters(StripNet()) <= 150_000


def test_fine_layers_setting_adds_2mm_convolutions():
    base, deeper = ModelConfig(), ModelConfig(fine_layers=3)
    added = count_parameters(StripNet(deeper)) - count_parameters(StripNet(base))
    assert added == base.fine_channels**2 * 27 + base.fine_channels
    assert flops_per_voxel(deeper) - flops_per_voxel(base) == 2 * 27 * base.fine_channels**2


def test_refine_blocks_start_as_identity_and_warm_start_keeps_the_output(tmp_path, label_dir):
    checkpoint, base = trained_small_network(tmp_path, label_dir)

    grown = StripNet(ModelConfig(**SMALL, refine_dilations=(1, 2)))
    new_layers = initialise_from(grown, checkpoint)
    expected = [f"refine.{i}.{name}" for i in (0, 1) for name in ("conv.weight", "conv.bias", "scale")]
    assert sorted(new_layers) == sorted(expected)
    assert count_parameters(grown) - count_parameters(base) == 2 * (3 * 3 * 27 + 3 + 1)
    image = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(grown(image), base(image))

    # the other way round is an error: the smaller model lacks the refine layers
    grown_run = tiny_config(2)
    grown_run.model = ModelConfig(**SMALL, refine_dilations=(1, 2)).to_dict()
    grown_checkpoint = train(label_dir, tmp_path / "grown", grown_run, progress=False)
    with pytest.raises(ValueError, match="lacks"):
        initialise_from(StripNet(ModelConfig(**SMALL)), grown_checkpoint)

    # a run started with init_from begins at step 0 from the checkpoint's weights
    warm = tiny_config(1)
    warm.model, warm.init_from, warm.learning_rate = grown_run.model, str(checkpoint), 0.0
    warm_checkpoint = train(label_dir, tmp_path / "warm", warm, progress=False)
    state = torch.load(warm_checkpoint, weights_only=False)
    assert state["step"] == 1
    torch.testing.assert_close(state["model"]["head.weight"], base.state_dict()["head.weight"])


def test_global_context_starts_as_identity_within_the_budget(tmp_path, label_dir):
    checkpoint, base = trained_small_network(tmp_path, label_dir)

    grown = StripNet(ModelConfig(**SMALL, global_context=True))
    new_layers = initialise_from(grown, checkpoint)
    assert sorted(new_layers) == sorted(f"context.{name}" for name in (
        "attention.weight", "attention.bias", "film.0.weight", "film.0.bias", "film.1.weight", "film.1.bias"))
    # attention 4 + 1, FiLM of the core 4 -> 2 x 4 and of the fine layers 4 -> 2 x 3
    assert count_parameters(grown) - count_parameters(base) == 5 + (4 * 8 + 8) + (4 * 6 + 6)
    image = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(grown(image), base(image))
    shipped_layout = dict(core_channels=16, dilations=(1, 2, 4, 8, 16, 8, 4, 2, 1, 2, 4, 8, 16, 8, 4, 2, 1),
                          refine_dilations=(1, 2, 4))  # shipped since run38
    assert count_parameters(StripNet(ModelConfig(**shipped_layout, global_context=True))) <= 150_000


def test_global_context_carries_information_beyond_the_receptive_field():
    """A voxel's output changes with the input far outside its receptive field only through the summary."""
    torch.manual_seed(0)
    local = StripNet(ModelConfig(**SMALL, dilations=(1,))).eval()
    torch.manual_seed(0)
    context = StripNet(ModelConfig(**SMALL, dilations=(1,), global_context=True)).eval()
    with torch.no_grad():
        for parameter in context.context.parameters():
            parameter.normal_(0, 0.5)
    image = torch.rand(1, 1, 32, 32, 32)
    changed = image.clone()
    changed[..., 24:, 24:, 24:] += 1.0  # far corner; one dilation-1 core layer sees ~20 mm around a voxel
    with torch.no_grad():
        assert torch.equal(local(image)[..., :4, :4, :4], local(changed)[..., :4, :4, :4])
        assert not torch.allclose(context(image)[..., :4, :4, :4], context(changed)[..., :4, :4, :4])


def test_global_context_summary_stays_float32_under_bfloat16_autocast():
    """The summary is pooled in float32 even when the convolutions compute in bfloat16."""
    context = StripNet(ModelConfig(**SMALL, global_context=True)).context
    with torch.no_grad():
        context.attention.weight.normal_(0, 0.5)
    features = torch.rand(1, SMALL["core_channels"], 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        summary = context.summary(features)
    assert summary.dtype == torch.float32
    torch.testing.assert_close(summary, context.summary(features))


def test_global_context_network_exports_to_onnx(tmp_path, label_dir):
    config = replace(tiny_config(2), model=ModelConfig(**SMALL, global_context=True).to_dict(), learning_rate=1e-2)
    checkpoint = train(label_dir, tmp_path / "run", config, progress=False)
    assert float(torch.load(checkpoint, weights_only=False)["model"]["context.film.1.weight"].abs().max()) > 0
    image = np.random.default_rng(3).random((24, 20, 28)).astype(np.float32)
    np.testing.assert_allclose(load_model(export_weights(checkpoint, tmp_path / "context.onnx")).predict(image),
                               load_model(checkpoint).predict(image), atol=1e-3)


def test_network_output_shape_for_odd_grids():
    network = StripNet(ModelConfig(core_channels=4, stem_channels=2, fine_channels=2))
    assert network(torch.zeros(1, 1, 20, 24, 28)).shape == (1, 2, 20, 24, 28)


def test_loss_prefers_the_truth():
    sdt = torch.linspace(-15, 15, 16**3).reshape(1, 1, 16, 16, 16).repeat(1, 2, 1, 1, 1)
    right, _ = loss_function(sdt / 10, sdt)
    wrong, _ = loss_function(-sdt / 10, sdt)
    assert float(right) < 0.2 and float(wrong) > 1.0  # soft Dice of a perfect map is just below 1


def test_run_resume_and_export(tmp_path, label_dir):
    run = tmp_path / "run"
    checkpoint = train(label_dir, run, tiny_config(3), progress=False)
    assert torch.load(checkpoint, weights_only=False)["step"] == 3
    with pytest.raises(FileExistsError):
        train(label_dir, run, tiny_config(3), progress=False)
    train(label_dir, run, tiny_config(5), resume=True, progress=False)
    assert torch.load(checkpoint, weights_only=False)["step"] == 5
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [int(r["step"]) for r in rows if r["loss"]] == [1, 2, 3, 4, 5]
    assert any(r["val_dice"] for r in rows)
    assert (run / "curves.png").exists() and (run / "config.json").exists()

    onnx_path = export_weights(checkpoint, tmp_path / "model.onnx")
    image = np.random.default_rng(0).random((24, 28, 20)).astype(np.float32)
    exported = load_model(onnx_path).predict(image)
    reference = load_model(checkpoint).predict(image)
    assert exported.shape == (2, 24, 28, 20)
    np.testing.assert_allclose(exported, reference, atol=1e-3)
    assert load_model(onnx_path).trained_steps == 5
    assert load_model(onnx_path).input_normalisation == "percentile"


def test_moving_average_is_saved_resumed_and_exported(tmp_path, label_dir):
    run = tmp_path / "run"
    checkpoint = train(label_dir, run, replace(tiny_config(3), ema_decay=0.5, learning_rate=1e-2), progress=False)
    state = torch.load(checkpoint, weights_only=False)
    assert state["ema_updates"] == 3
    differences = [float((state["ema"][k] - state["model"][k]).abs().max()) for k in state["model"]]
    assert max(differences) > 0  # the average lags behind the raw weights
    assert shipped_weights(state) is state["ema"]

    train(label_dir, run, replace(tiny_config(4), ema_decay=0.5, learning_rate=1e-2), resume=True, progress=False)
    resumed = torch.load(checkpoint, weights_only=False)
    assert resumed["ema_updates"] == 4
    # one more update of the saved average: ema = 0.5 ema + 0.5 new raw weights
    for key in state["model"]:
        torch.testing.assert_close(resumed["ema"][key], 0.5 * state["ema"][key] + 0.5 * resumed["model"][key])

    image = np.random.default_rng(1).random((24, 20, 22)).astype(np.float32)
    averaged = StripNet(ModelConfig.from_dict(resumed["model_config"]))
    averaged.load_state_dict(resumed["ema"])
    expected = Model.from_network(averaged.eval()).predict(image)
    np.testing.assert_allclose(load_model(export_weights(checkpoint, tmp_path / "m.onnx")).predict(image),
                               expected, atol=1e-3)
    np.testing.assert_allclose(load_model(checkpoint).predict(image), expected, atol=1e-5)


def test_weight_average_of_checkpoints_is_their_mean_and_exports(tmp_path):
    config = ModelConfig(core_channels=4, stem_channels=2, fine_channels=2)
    first, second = StripNet(config), StripNet(config)
    torch.save({"model": first.state_dict(), "model_config": config.to_dict(), "step": 3}, tmp_path / "a.pt")
    # the second stands for its moving average, as the shipped checkpoints do
    torch.save({"model": first.state_dict(), "ema": second.state_dict(), "model_config": config.to_dict(),
                "step": 5}, tmp_path / "b.pt")
    soup = torch.load(average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "soup.pt"),
                      weights_only=False)
    assert soup["step"] == 5 and len(soup["ingredients"]) == 2
    for name, value in first.state_dict().items():
        torch.testing.assert_close(soup["model"][name], 0.5 * (value + second.state_dict()[name]))
    averaged = StripNet(config)
    averaged.load_state_dict(soup["model"])
    image = np.random.default_rng(2).random((16, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(load_model(export_weights(tmp_path / "soup.pt", tmp_path / "soup.onnx")).predict(image),
                               Model.from_network(averaged.eval()).predict(image), atol=1e-3)
    other = ModelConfig(core_channels=6, stem_channels=2, fine_channels=2)
    torch.save({"model": StripNet(other).state_dict(), "model_config": other.to_dict(), "step": 1}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="architecture"):
        average_checkpoints([tmp_path / "a.pt", tmp_path / "c.pt"], tmp_path / "bad.pt")


def test_rank_normalised_model_trains_on_and_exports_with_its_normalisation(tmp_path, label_dir):
    config = replace(tiny_config(2), model={**ModelConfig(core_channels=4, stem_channels=2, fine_channels=2,
                                                          dilations=(1, 2)).to_dict(),
                                            "input_normalisation": "rank"})
    assert config.synth_config().input_normalisation == "rank"  # the generator follows the model
    with pytest.raises(ValueError, match="belongs to the model"):
        replace(config, synth={"input_normalisation": "rank"}).synth_config()
    checkpoint = train(label_dir, tmp_path / "run", config, progress=False)
    exported = load_model(export_weights(checkpoint, tmp_path / "rank.onnx"))
    assert exported.input_normalisation == load_model(checkpoint).input_normalisation == "rank"
    with pytest.raises(ValueError, match="input_normalisation"):
        StripNet(ModelConfig(input_normalisation="zscore"))


def test_same_seed_same_first_batch(label_dir):
    config = tiny_config(1)
    paths = sorted(label_dir.iterdir())
    stream = SyntheticStream(_TrainingAnatomies(paths, 0, 1), config.synth_config(), seed=5, first_step=10)
    first = next(iter(stream))["image"]
    again = next(iter(SyntheticStream(_TrainingAnatomies(paths, 0, 1), config.synth_config(), 5, 10)))["image"]
    torch.testing.assert_close(first, again)


def test_model_wrapper_matches_network():
    network = StripNet(ModelConfig(core_channels=4, stem_channels=2, fine_channels=2))
    image = np.random.default_rng(1).random((16, 16, 16)).astype(np.float32)
    with torch.no_grad():
        direct = network(torch.from_numpy(image)[None, None])[0].numpy() * 10
    np.testing.assert_allclose(Model.from_network(network).predict(image), direct, rtol=1e-5, atol=1e-5)


def test_far_false_positive_weight_only_adds_to_far_leaks():
    sdt = torch.linspace(-15, 15, 16**3).reshape(1, 1, 16, 16, 16).repeat(1, 2, 1, 1, 1)
    leak = sdt / 10
    leak[..., -2:] = -1.0  # the last slab (8-15 mm outside) called brain
    near_miss = sdt / 10 - 0.3  # everything 3 mm too big: a boundary error, not a leak
    assert float(loss_function(leak, sdt, 4.0)[0]) > float(loss_function(leak, sdt)[0]) + 0.05
    assert float(loss_function(near_miss, sdt, 4.0)[0]) == pytest.approx(float(loss_function(near_miss, sdt)[0]))


def test_surface_offset_pays_for_a_whole_surface_moved_not_for_scattered_errors():
    sdt = torch.linspace(-15, 15, 16**3).reshape(1, 1, 16, 16, 16).repeat(1, 2, 1, 1, 1)
    truth = sdt / 10
    assert surface_offset(truth, sdt).abs().max() < 1e-6
    too_big = truth - 0.3  # every distance 3 mm short: the surface 3 mm out
    torch.testing.assert_close(surface_offset(too_big, sdt), torch.full((1, 2), -0.3))
    scattered = truth + 0.3 * torch.where(torch.arange(16) % 2 == 0, 1.0, -1.0)  # cancels slab by slab
    assert surface_offset(scattered, sdt).abs().max() < 0.05
    # the weighted term: the brain+CSF channel counts fully, the no-CSF one half
    added = float(loss_function(too_big, sdt, surface_offset_weight=1.0)[0]) - float(loss_function(too_big, sdt)[0])
    assert added == pytest.approx(1.0 * 0.3 + 0.5 * 0.3, abs=1e-4)
    assert float(loss_function(scattered, sdt, surface_offset_weight=1.0)[0]) < (
        float(loss_function(scattered, sdt)[0]) + 0.05)
    assert loss_function(too_big, sdt)[1]["offset_mm"] == pytest.approx(3.0, abs=1e-3)


def test_stream_with_twins_pairs_mri_steps_only(label_dir):
    config = replace(tiny_config(1), synth={"shape": [32, 32, 32], "voxel_mm": 4.0,
                                            "modality_weights": {"mri": 0.5, "ct": 0.5}})
    paths = sorted(label_dir.iterdir())
    synth_config = config.synth_config()
    generator = synth.SyntheticHeads(_TrainingAnatomies(paths, 0, 1)(), synth_config)
    batches = iter(SyntheticStream(_TrainingAnatomies(paths, 0, 1), synth_config, seed=5, first_step=0, twins=True))
    for step in range(6):
        batch = next(batches)
        expected = 2 if generator.sample(5 + step).modality == "mri" else 1
        assert batch["image"].shape == (expected, 1, 32, 32, 32)
        assert batch["sdt"].shape == (expected, 2, 32, 32, 32)
        torch.testing.assert_close(batch["sdt"][0], batch["sdt"][-1])


def test_contrast_consistency_pays_for_disagreement_near_the_surface():
    sdt = torch.linspace(-30, 30, 16**3).reshape(1, 16, 16, 16).repeat(2, 1, 1, 1)
    same = (sdt / 10)[None].repeat(2, 1, 1, 1, 1)
    assert float(contrast_consistency(same, sdt)) == 0.0
    shrunk = same.clone()
    shrunk[1] += 0.2  # the twin's surface 2 mm inside
    near = float(contrast_consistency(shrunk, sdt))
    assert near > 0.2
    # beyond the loss's clip (20 mm) two "far outside" calls agree whatever their size
    far_apart = same.clone()
    far_apart[1] = torch.where(sdt > 25, same[1] * 2, same[1])
    assert float(contrast_consistency(far_apart, sdt)) == 0.0


def test_training_with_contrast_twins_logs_the_consistency(tmp_path, label_dir):
    config = replace(tiny_config(2), contrast_consistency_weight=1.0,
                     synth={"shape": [32, 32, 32], "voxel_mm": 4.0, "modality_weights": {"mri": 1.0}})
    config.model = ModelConfig(core_channels=4, stem_channels=2, fine_channels=3).to_dict()
    train(label_dir, tmp_path / "twins", config, progress=False)
    rows = [row for row in csv.DictReader((tmp_path / "twins" / "log.csv").open()) if row["loss"]]
    assert len(rows) == 2 and all(float(row["consistency"]) > 0 for row in rows)


def test_bfloat16_precision_rounds_the_same_network_and_trains(tmp_path, label_dir):
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="float16")
    torch.manual_seed(0)
    model = StripNet(ModelConfig(core_channels=4, stem_channels=2, fine_channels=3))
    for parameter in model.parameters():  # zero-initialised residual scales would hide the core
        parameter.data.normal_(0.0, 0.05)
    with pytest.raises(ValueError, match="precision"):
        training_forward(model, torch.zeros(1, 1, 8, 8, 8), "float16")
    image = torch.randn(1, 1, 24, 24, 24)
    with torch.no_grad():
        full = training_forward(model, image, "float32")
        rounded = training_forward(model, image, "bfloat16")
    assert rounded.dtype == torch.float32 and rounded.shape == full.shape
    difference = float((rounded - full).abs().max())
    assert 0 < difference < 0.05 * float(full.abs().max())  # rounded, not another network

    config = replace(tiny_config(2), precision="bfloat16")
    config.model = ModelConfig(core_channels=4, stem_channels=2, fine_channels=3).to_dict()
    checkpoint = train(label_dir, tmp_path / "bf16", config, progress=False)
    rows = [row for row in csv.DictReader((tmp_path / "bf16" / "log.csv").open()) if row["loss"]]
    assert len(rows) == 2 and all(np.isfinite(float(row["loss"])) for row in rows)
    assert TrainConfig.load(tmp_path / "bf16" / "config.json").precision == "bfloat16"
    weights = torch.load(checkpoint, weights_only=False)["model"]
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())  # mixed, not half, precision


def test_bfloat16_falls_back_to_float32_on_a_cpu_without_bfloat16_units(tmp_path, label_dir, monkeypatch, capsys):
    assert compute_precision("bfloat16", native_bfloat16=True) == "bfloat16"
    assert compute_precision("bfloat16", native_bfloat16=False) == "float32"
    assert compute_precision("float32", native_bfloat16=True) == "float32"
    with pytest.raises(ValueError, match="precision"):
        compute_precision("float16", native_bfloat16=True)

    monkeypatch.setattr("skullstrip.train.cpu_has_bfloat16", lambda: False)
    used = []

    def recording_forward(model, image, precision):
        used.append(precision)
        return training_forward(model, image, precision)

    monkeypatch.setattr("skullstrip.train.training_forward", recording_forward)
    config = replace(tiny_config(2), precision="bfloat16")
    config.model = ModelConfig(core_channels=4, stem_channels=2, fine_channels=3).to_dict()
    train(label_dir, tmp_path / "fallback", config, progress=False)
    assert used == ["float32", "float32"]
    assert "no bfloat16 units" in capsys.readouterr().out
    # the recipe on disk is still the recipe asked for: a CPU with bfloat16 units uses it
    assert TrainConfig.load(tmp_path / "fallback" / "config.json").precision == "bfloat16"


FLUSH_PROBE = """
import sys
from pathlib import Path
import torch
from skullstrip.train import TrainConfig, train
denormal = torch.tensor([1e-39])  # below float32's smallest normal, 1.2e-38
before = float(denormal * 2)
train(Path(sys.argv[1]), Path(sys.argv[2]), TrainConfig.load(sys.argv[3]), progress=False)
print(before, float(denormal * 2))
"""


@pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU cannot flush denormals")
def test_training_flushes_denormal_floats_to_zero(tmp_path, label_dir):
    # In a fresh interpreter: train() leaves flushing on in its process (the other tests'
    # runs), and in CI's full suite even set_flush_denormal(False) did not bring denormals back.
    config = tiny_config(1)
    config.model = ModelConfig(**SMALL).to_dict()
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(asdict(config)))
    probe = subprocess.run([sys.executable, "-c", FLUSH_PROBE, str(label_dir), str(tmp_path / "run"), str(config_path)],
                           capture_output=True, text=True, check=True)
    before, after = map(float, probe.stdout.split()[-2:])
    assert before > 0.0  # a fresh process keeps denormals, so the check below can fail
    assert after == 0.0


@pytest.mark.parametrize(("machine", "avx512_bf16", "amx", "onednn", "expected"), [
    ("x86_64", False, False, True, False),  # AVX-512 alone: oneDNN says yes but emulates
    ("x86_64", True, False, True, True),
    ("x86_64", False, True, True, True),
    ("x86_64", False, False, False, False),  # avx2 only (the AMD EPYC of session 47)
    ("aarch64", False, False, True, True),  # Arm: oneDNN's own answer
    ("aarch64", False, False, False, False),
])
def test_bfloat16_units_are_the_instructions_on_x86(monkeypatch, machine, avx512_bf16, amx, onednn, expected):
    monkeypatch.setattr("platform.machine", lambda: machine)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    assert cpu_has_bfloat16() is expected


def test_small_crops_before_small_crop_steps_then_full_crops_and_resume_continues(label_dir):
    config = replace(tiny_config(1), small_crop_steps=3, small_crop_range=[16, 24],
                     synth={"shape_range": [32, 40], "voxel_mm": 4.0, "modality_weights": {"ct": 1.0}})
    paths = sorted(label_dir.iterdir())

    def stream(first_step: int):
        return iter(SyntheticStream(_TrainingAnatomies(paths, 0, 1), config.synth_config(), seed=5,
                                    first_step=first_step, small_crop_config=config.small_crop_synth_config(),
                                    small_crop_steps=config.small_crop_steps))

    from_start = stream(0)
    images = [next(from_start)["image"] for _ in range(6)]
    assert all(16 <= n <= 24 for image in images[:3] for n in image.shape[2:])
    assert all(32 <= n <= 40 for image in images[3:] for n in image.shape[2:])
    resumed = stream(2)
    for step in (2, 3):
        torch.testing.assert_close(next(resumed)["image"], images[step])
    assert config.synth_config().shape_range == (32, 40)  # validation keeps the full crops


def test_crop_cap_applies_to_training_crops_but_not_to_the_validation_set(label_dir):
    synth_settings = {"shape_range": [32, 40], "voxel_mm": 4.0, "modality_weights": {"ct": 1.0}}
    capped = replace(tiny_config(1), synth={**synth_settings, "max_crop_voxels": 32**3})
    uncapped = replace(tiny_config(1), synth=synth_settings)
    paths = sorted(label_dir.iterdir())[:1]
    training = iter(SyntheticStream(_TrainingAnatomies(paths, 0, 1), capped.synth_config(), seed=5, first_step=0))
    assert all(np.prod(next(training)["image"].shape[2:]) <= 32**3 for _ in range(3))
    shapes = [[s["image"].shape for s in _validation_samples(paths, config.synth_config(), config)]
              for config in (capped, uncapped)]
    assert shapes[0] == shapes[1]
    assert any(np.prod(shape[2:]) > 32**3 for shape in shapes[0])


def test_small_crop_steps_need_a_range():
    with pytest.raises(ValueError, match="small_crop_range"):
        TrainConfig(small_crop_steps=10)


def test_training_forward_turns_a_crop_that_would_leave_onednn_and_computes_the_same_network():
    assert axis_order((68, 68, 88), 16) == (2, 0, 1)
    assert axis_order((88, 68, 68), 16) == (0, 1, 2)
    assert axis_order((72, 72, 112), 16) == (0, 1, 2)  # 16 * 36 * 36 > 20480: oneDNN already
    assert axis_order((12, 16, 20), 4) == (2, 1, 0)
    torch.manual_seed(0)
    network = StripNet(ModelConfig(**SMALL, global_context=True))
    for parameter in network.parameters():  # the zero-initialised scales would hide the deeper layers
        torch.nn.init.normal_(parameter, std=0.1)
    image = torch.randn(1, 1, 12, 16, 20)  # the turned order is (2, 1, 0)
    turned = training_forward(network, image)
    plain = network(image)
    torch.testing.assert_close(turned, plain, rtol=1e-4, atol=1e-5)
    turned.square().sum().backward()
    gradients = [p.grad.clone() for p in network.parameters()]
    network.zero_grad()
    plain.square().sum().backward()
    for turned_gradient, parameter in zip(gradients, network.parameters(), strict=True):
        torch.testing.assert_close(turned_gradient, parameter.grad, rtol=1e-3, atol=1e-5)
