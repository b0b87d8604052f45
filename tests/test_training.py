"""The trainer: determinism, exact resume (also with a margin schedule), learning, checkpoints,
devices."""

import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from margin_softmax import data
from margin_softmax.registry import build_head
from margin_softmax.scheduler import MarginScheduler
from margin_softmax.training import (
    CHECKPOINT_NAME,
    TrainConfig,
    build_model,
    cosine_lr,
    embed,
    fit,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
)

CONFIG = TrainConfig(epochs=4, batch_size=32, hidden_dim=32, embedding_dim=8, seed=3)


@pytest.fixture(scope="module")
def dataset():
    return data.synthetic_identities(10, 12, 8, seed=0)  # (120, 8), labels 0..9


def train(dataset, loss="arcface", config=CONFIG, schedule=False, **kwargs):
    x, y = dataset
    model = build_model(x.shape[1], config)
    model.set_input_scaling(x)
    head = build_head(loss, config.embedding_dim, 10)
    scheduler = None
    if schedule:
        steps = math.ceil(len(y) / config.batch_size)
        scheduler = MarginScheduler(head, iterations_per_epoch=steps, increase_start_epoch=1,
                                    fix_start_epoch=3, final_margin=0.3)
    result = fit(model, head, x, y, config, margin_scheduler=scheduler, progress=False, **kwargs)
    return model, head, result


def states(model, head):
    return {**model.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}}


def assert_same_weights(a, b):
    sa, sb = states(*a), states(*b)
    assert sa.keys() == sb.keys()
    for key in sa:
        a, b = sa[key], sb[key]
        if isinstance(a, dict):  # a head's extra state, e.g. the Elastic heads' generator
            assert a.keys() == b.keys(), key
            assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k]
                       for k in a), key
        else:
            assert torch.equal(a, b), key


def test_same_seed_same_weights_other_seed_other_weights(dataset):
    first, second = train(dataset), train(dataset)
    assert_same_weights(first[:2], second[:2])
    assert first[2].epoch_losses == second[2].epoch_losses
    other = train(dataset, config=TrainConfig(**{**CONFIG.__dict__, "seed": 4}))
    assert not torch.equal(first[0].layers[0].weight, other[0].layers[0].weight)


@pytest.mark.parametrize("loss, schedule", [("arcface", False), ("arcface", True),
                                            ("sphereface", False), ("softmax", False),
                                            ("elastic-arcface", False)])
def test_resume_repeats_the_uninterrupted_run(dataset, tmp_path, loss, schedule):
    whole = train(dataset, loss, schedule=schedule)
    ckpt = tmp_path / "ckpt"
    part = train(dataset, loss, schedule=schedule, checkpoint_dir=ckpt, stop_after=1)
    assert part[2].epochs_done == 1
    assert load_checkpoint(ckpt / CHECKPOINT_NAME)["epoch_losses"] == part[2].epoch_losses
    resumed = train(dataset, loss, schedule=schedule, checkpoint_dir=ckpt, resume=True)
    assert_same_weights(whole[:2], resumed[:2])
    assert resumed[2].epoch_losses == whole[2].epoch_losses
    if schedule:
        assert resumed[1].margin == whole[1].margin == pytest.approx(0.3)


def test_training_lowers_the_loss_and_fits_the_data(dataset):
    config = TrainConfig(epochs=15, batch_size=32, hidden_dim=64, embedding_dim=16, seed=0)
    model, head, result = train(dataset, "cosface", config=config)
    assert result.epoch_losses[-1] < 0.5 * result.epoch_losses[0]
    with torch.no_grad():
        predicted = head.predict(torch.as_tensor(embed(model, dataset[0]))).numpy()
    assert np.mean(predicted == dataset[1]) > 0.9


def test_input_scaling_standardises_features(dataset):
    x = dataset[0] * 5.0 + 3.0
    x[:, 0] = 7.0  # a constant feature: std 0 is replaced by 1
    model = build_model(x.shape[1], CONFIG)
    model.set_input_scaling(x)
    np.testing.assert_allclose(model.mean.numpy(), x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(model.std.numpy()[1:], x.std(0)[1:], rtol=1e-5)
    assert model.std[0] == 1.0


def test_cosine_lr_endpoints_and_midpoint():
    assert cosine_lr(0.1, 0, 100) == 0.1
    assert cosine_lr(0.1, 50, 100) == pytest.approx(0.05)
    assert cosine_lr(0.1, 100, 100) == pytest.approx(0.0, abs=1e-15)


def test_embed_shape_and_eval_mode(dataset):
    model = build_model(8, CONFIG)
    model.train()
    out = embed(model, dataset[0][:5], batch_size=2)
    assert out.shape == (5, CONFIG.embedding_dim) and out.dtype == np.float32
    assert not model.training


def test_bad_checkpoints_name_the_file(dataset, tmp_path):
    with pytest.raises(ValueError, match=rf"{tmp_path / CHECKPOINT_NAME}: no checkpoint"):
        train(dataset, checkpoint_dir=tmp_path, resume=True)
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / CHECKPOINT_NAME)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^device cuda:0: CUDA is not available on this "
                       r"machine \(use device cpu\)$"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="--device cuda:2: this machine has 2 CUDA device"):
        resolve_device("cuda:2", name="--device")


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:x", " cpu", "",
                                    "mps", "cpu:0", None], ids=repr)
def test_malformed_devices_are_named(dataset, device):
    with pytest.raises(ValueError, match=rf"^device {re.escape(repr(device))}: expected auto, "
                       "cpu, cuda or cuda:N$"):
        resolve_device(device)
    model = build_model(8, CONFIG)
    before = model.layers[0].weight.clone()
    with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
        fit(model, build_head("arcface", 8, 10), *dataset, replace(CONFIG, device=device),
            progress=False)
    assert torch.equal(model.layers[0].weight, before)  # refused before the first step


def test_device_cpu_is_the_default_here(dataset):
    if torch.cuda.is_available():
        pytest.skip("the default is cuda on this machine")
    default, cpu = train(dataset), train(dataset, config=replace(CONFIG, device="cpu"))
    assert_same_weights(default[:2], cpu[:2])
    assert default[2].epoch_losses == cpu[2].epoch_losses
    np.testing.assert_array_equal(embed(default[0], dataset[0]), embed(cpu[0], dataset[0]))


def test_a_checkpoint_saved_on_a_gpu_resumes_on_the_cpu(dataset, tmp_path, monkeypatch):
    whole = train(dataset, "elastic-arcface")
    path = tmp_path / CHECKPOINT_NAME
    train(dataset, "elastic-arcface", checkpoint_dir=tmp_path, stop_after=1)
    state = load_checkpoint(path)
    with monkeypatch.context() as patch:  # every tensor marked as saved on cuda:0
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        save_checkpoint(path, state)
    if not torch.cuda.is_available():  # the file really asks for a GPU
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    loaded = load_checkpoint(path)
    assert all(v.device.type == "cpu" for v in loaded["model"].values())
    resumed = train(dataset, "elastic-arcface", config=replace(CONFIG, device="cpu"),
                    checkpoint_dir=tmp_path, resume=True)
    assert_same_weights(whole[:2], resumed[:2])
    assert resumed[2].epoch_losses == whole[2].epoch_losses


@pytest.mark.gpu
def test_fit_on_cuda_then_resume_on_the_cpu(dataset, tmp_path):
    cuda = replace(CONFIG, device="cuda")
    whole_cpu = train(dataset, config=replace(CONFIG, device="cpu"))
    model, head, part = train(dataset, config=cuda, checkpoint_dir=tmp_path, stop_after=2)
    assert next(model.parameters()).is_cuda and head.weight.is_cuda
    out = embed(model, dataset[0])
    assert isinstance(out, np.ndarray) and out.shape == (120, CONFIG.embedding_dim)
    model, head, resumed = train(dataset, config=replace(CONFIG, device="cpu"),
                                 checkpoint_dir=tmp_path, resume=True)
    assert not next(model.parameters()).is_cuda
    assert resumed.epoch_losses[:2] == part.epoch_losses
    np.testing.assert_allclose(resumed.epoch_losses, whole_cpu[2].epoch_losses, rtol=1e-3)
    np.testing.assert_allclose(embed(model, dataset[0]), embed(whole_cpu[0], dataset[0]),
                               rtol=1e-2, atol=1e-3)
