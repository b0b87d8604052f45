"""`margin-softmax train` in-process on tiny data: resume, inputs, exports, devices, errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from margin_softmax import data
from margin_softmax.cli.main import main
from margin_softmax.training import load_checkpoint, save_checkpoint

TINY = ["--epochs", "3", "--batch-size", "16", "--hidden-dim", "16", "--embedding-dim", "4",
        "--threads", "1", "--quiet"]


def run(argv):
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


@pytest.fixture
def npz(tmp_path):
    x, y = data.synthetic_identities(6, 8, 5, seed=1)
    np.savez(tmp_path / "d.npz", features=x, labels=y)
    return tmp_path / "d.npz"


def weights(path):
    state = torch.load(path / "checkpoint.pt", weights_only=True)
    return {**state["model"], **{f"head.{k}": v for k, v in state["head"].items()}}


def test_stop_and_resume_equals_one_run(npz, tmp_path, capsys):
    args = ["train", npz, *TINY, "--loss", "arcface", "--margin", "0.2", "--scale", "16",
            "--margin-schedule", "1", "2"]
    assert run([*args, "--checkpoint-dir", tmp_path / "whole"]) == 0
    assert run([*args, "--checkpoint-dir", tmp_path / "part", "--stop-after", "1"]) == 0
    assert "1/3 epochs" in capsys.readouterr().out
    assert run([*args, "--checkpoint-dir", tmp_path / "part", "--resume"]) == 0
    whole, resumed = weights(tmp_path / "whole"), weights(tmp_path / "part")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_resume_refuses_other_settings_and_overwrites_nothing(npz, tmp_path, capsys):
    ckpt = tmp_path / "ck"
    assert run(["train", npz, *TINY, "--checkpoint-dir", ckpt, "--stop-after", "1"]) == 0
    before = (ckpt / "checkpoint.pt").read_bytes()
    assert run(["train", npz, *TINY, "--checkpoint-dir", ckpt, "--resume", "--lr", "0.1"]) == 2
    assert "lr=0.003 there, 0.1 here" in capsys.readouterr().err
    assert run(["train", npz, *TINY, "--checkpoint-dir", ckpt]) == 2  # exists, no --resume
    assert "pass --resume" in capsys.readouterr().err
    assert (ckpt / "checkpoint.pt").read_bytes() == before


def test_npy_with_text_labels_and_exports(tmp_path, capsys):
    x, y = data.synthetic_identities(4, 5, 6, seed=2)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "y.txt").write_text("".join(f"speaker{k}\n" for k in y))
    out = tmp_path / "emb.npz"
    assert run(["train", tmp_path / "x.npy", "--labels", tmp_path / "y.txt", *TINY,
                "--loss", "cosface", "--export-embeddings", out]) == 0
    saved = np.load(out)
    assert saved["embeddings"].shape == (20, 4)
    np.testing.assert_array_equal(saved["labels"], y)  # speaker0..3 sort like 0..3
    assert run(["train", tmp_path / "x.npy", "--labels", tmp_path / "y.txt", *TINY,
                "--export-embeddings", out]) == 2  # would overwrite
    assert "pass --force" in capsys.readouterr().err
    np.save(tmp_path / "other.npy", x[:3])
    assert run(["train", tmp_path / "x.npy", "--labels", tmp_path / "y.txt", *TINY, "--force",
                "--embed", tmp_path / "other.npy", "--export-embeddings", tmp_path / "o.npy"]) == 0
    assert np.load(tmp_path / "o.npy").shape == (3, 4)


def image_folder(root, sizes):
    rng = np.random.default_rng(0)
    for k, size in enumerate(sizes):
        folder = root / f"id{k}"
        folder.mkdir(parents=True)
        for j in range(3):
            pixels = (rng.random((size, size)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{j}.png")
    return root


def test_image_folder(tmp_path, capsys):
    root = image_folder(tmp_path / "faces", [8, 8, 8])
    out = tmp_path / "e.npz"
    assert run(["train", root, *TINY, "--loss", "normface", "--export-embeddings", out]) == 0
    assert "9 samples, 3 classes" in capsys.readouterr().out
    assert list(np.load(out)["names"][:2]) == ["id0/0.png", "id0/1.png"]

    mixed = image_folder(tmp_path / "mixed", [8, 8, 6])
    assert run(["train", mixed, *TINY]) == 2
    assert f"{mixed / 'id2' / '0.png'}: image is 6x6 but id0/0.png is 8x8" in (
        capsys.readouterr().err
    )
    assert run(["train", mixed, *TINY, "--image-size", "5"]) == 0


@pytest.mark.parametrize(
    "make, extra, fragment",
    [
        (lambda p: p.write_text("a\nb\n\nc\n"), [], "y.txt:3: expected one label"),
        (lambda p: p.write_text("a\nb\n"), [], "y.txt: 2 labels for 4 feature rows"),
        (lambda p: p.write_text("a\nb\na\nb\n"), ["--loss", "nope"], "unknown loss 'nope'"),
        (lambda p: p.write_text("a\nb\na\nb\n"), ["--loss", "combined", "--margin", "0.1"],
         "has no parameter 'margin'"),
        (lambda p: p.write_text("a\nb\na\nb\n"), ["--margin", "abc"],
         "argument --margin: expected a number, got 'abc'"),
        (lambda p: p.write_text("a\nb\na\nb\n"), ["--resume"], "--resume needs --checkpoint-dir"),
        (lambda p: p.write_text("a\nb\na\nb\n"), ["--epochs", "0"], "expected a positive"),
        (lambda p: p.write_text("a\na\na\na\n"), [], "need at least 2 classes"),
        (lambda p: p.write_text("a\nb\na\nb\n"), ["--loss", "sphereface", "--margin-schedule",
                                                   "1", "2"], "cannot start at margin 0"),
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path, capsys, make, extra, fragment):
    np.save(tmp_path / "x.npy", np.ones((4, 3), np.float32))
    make(tmp_path / "y.txt")
    assert run(["train", tmp_path / "x.npy", "--labels", tmp_path / "y.txt", *TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_embed_input_is_checked_before_training(npz, tmp_path, capsys):
    np.save(tmp_path / "narrow.npy", np.ones((3, 4), np.float32))
    argv = ["train", npz, *TINY, "--export-embeddings", tmp_path / "e.npy", "--checkpoint-dir",
            tmp_path / "ck", "--embed"]
    assert run([*argv, tmp_path / "narrow.npy"]) == 2
    assert "narrow.npy: rows have 4 values; the training data has 5" in capsys.readouterr().err
    (tmp_path / "t.txt").write_text("1 2 3\n")
    assert run([*argv, tmp_path / "t.txt"]) == 2
    assert "t.txt: expected an .npz or .npy file" in capsys.readouterr().err
    assert not (tmp_path / "ck").exists()  # nothing was trained


def test_missing_and_bad_data_files(tmp_path, capsys):
    assert run(["train", tmp_path / "none.npz", *TINY]) == 2
    assert "none.npz: no such file" in capsys.readouterr().err
    np.savez(tmp_path / "k.npz", feats=np.ones((2, 2)))
    assert run(["train", tmp_path / "k.npz", *TINY]) == 2
    assert "no features array" in capsys.readouterr().err
    x = np.ones((4, 2), np.float32)
    x[2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", features=x, labels=np.array([0, 1, 0, 1]))
    assert run(["train", tmp_path / "nan.npz", *TINY]) == 2
    assert "nan.npz: row 2 has a NaN or inf" in capsys.readouterr().err


def test_device_cpu_is_the_default_here(npz, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("the default is cuda on this machine")
    for name, extra in (("default", []), ("cpu", ["--device", "cpu"])):
        assert run(["train", npz, *TINY, *extra, "--checkpoint-dir", tmp_path / name,
                    "--export-embeddings", tmp_path / f"{name}.npy"]) == 0
        assert "this run on cpu)" in capsys.readouterr().out
    default, cpu = weights(tmp_path / "default"), weights(tmp_path / "cpu")
    assert default.keys() == cpu.keys() and all(torch.equal(default[k], cpu[k]) for k in cpu)
    np.testing.assert_array_equal(np.load(tmp_path / "default.npy"), np.load(tmp_path / "cpu.npy"))


@pytest.mark.parametrize("device, count, message", [
    ("cuda", 0, "--device cuda: CUDA is not available on this machine (use --device cpu)"),
    ("cuda:0", 0, "--device cuda:0: CUDA is not available on this machine (use --device cpu)"),
    ("cuda:1", 1, "--device cuda:1: this machine has 1 CUDA device(s), cuda:0 to cuda:0"),
    ("gpu", 0, "--device 'gpu': expected auto, cpu, cuda or cuda:N"),
    ("cuda:x", 1, "--device 'cuda:x': expected auto, cpu, cuda or cuda:N"),
], ids=repr)
def test_unavailable_or_malformed_device_exits_2(npz, tmp_path, capsys, monkeypatch, device,
                                                 count, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    ckpt = tmp_path / "ck"
    assert run(["train", npz, *TINY, "--device", device, "--checkpoint-dir", ckpt]) == 2
    assert capsys.readouterr().err == f"margin-softmax train: error: {message}\n"
    assert not ckpt.exists()  # refused before training


def test_resume_on_the_cpu_a_run_begun_on_a_gpu(npz, tmp_path, monkeypatch):
    args = ["train", npz, *TINY, "--loss", "cosface", "--device", "cpu"]
    assert run([*args, "--checkpoint-dir", tmp_path / "whole"]) == 0
    part = tmp_path / "part"
    assert run([*args, "--checkpoint-dir", part, "--stop-after", "1"]) == 0
    state = load_checkpoint(part / "checkpoint.pt")
    state["config"]["device"] = "cuda:0"  # as `--device cuda:0` writes it
    with monkeypatch.context() as patch:  # every tensor marked as saved on cuda:0
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        save_checkpoint(part / "checkpoint.pt", state)
    assert run([*args, "--checkpoint-dir", part, "--resume"]) == 0
    whole, resumed = weights(tmp_path / "whole"), weights(part)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.gpu
def test_train_on_cuda(npz, tmp_path, capsys):
    out = tmp_path / "e.npy"
    assert run(["train", npz, *TINY, "--device", "cuda", "--export-embeddings", out]) == 0
    assert "this run on cuda)" in capsys.readouterr().out
    assert np.load(out).shape == (48, 4) and np.isfinite(np.load(out)).all()
