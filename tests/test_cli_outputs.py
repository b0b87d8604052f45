"""What the CLI and the trainer write: a full disk at any byte leaves the previous scores,
embeddings, checkpoint, results and figures byte-identical with no temporary beside them,
and a folder where nothing can be written is refused before any work, in one line naming
the option and the path."""

import builtins
import errno
import io
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from full_disk import FullDisk, Room

from margin_softmax import data
from margin_softmax.cli import eval as evaluate
from margin_softmax.cli.main import main
from margin_softmax.registry import build_head
from margin_softmax.training import TrainConfig, build_model, fit, save_checkpoint

TINY = ["--epochs", "2", "--batch-size", "16", "--hidden-dim", "8", "--embedding-dim", "4",
        "--threads", "1", "--quiet"]
TINY_COMPARE = ["--losses", "arcface", "--identities", "12", "--samples-per-identity", "6",
                "--epochs", "1", "--epochs-2d", "1", "--trials", "100", "--quiet"]


def run(argv):
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


def fill_disk(monkeypatch, folder: Path, room: int, name: str = "") -> None:
    """Every file opened for writing in ``folder`` whose name holds ``name`` takes ``room``
    bytes, then raises ENOSPC; room -1 refuses to create it at all (EACCES)."""
    real_open = io.open

    def open_(file, mode="r", *args, **kwargs):
        target = isinstance(file, (str, os.PathLike)) and Path(file).parent == folder \
            and name in Path(file).name and any(c in mode for c in "wax+")
        if target and room < 0:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        handle = real_open(file, mode, *args, **kwargs)
        return FullDisk(handle, Room(room)) if target else handle

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)


def left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def npz(tmp_path):
    x, y = data.synthetic_identities(5, 8, 6, seed=1)
    np.savez(tmp_path / "d.npz", features=x, labels=y)
    return tmp_path / "d.npz"


@pytest.fixture
def eval_files(tmp_path):
    """20 embeddings and the 190 trials between them, and an existing scores file in out/."""
    np.save(tmp_path / "e.npy", np.random.default_rng(0).standard_normal((20, 4)))
    (tmp_path / "trials").write_text("".join(
        f"{i} {j} {'target' if (i + j) % 2 else 'nontarget'}\n"
        for i, j in itertools.combinations(range(20), 2)))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "s.txt").write_bytes(b"old scores\n")
    return tmp_path


def eval_argv(files):
    return ["eval", "--embeddings", files / "e.npy", "--trials", files / "trials",
            "--write-scores", files / "out" / "s.txt", "--force"]


def test_eval_write_scores_on_a_full_disk_keeps_the_old_file(eval_files, monkeypatch, capsys):
    assert run(eval_argv(eval_files)) == 0
    size = (eval_files / "out" / "s.txt").stat().st_size
    (eval_files / "out" / "s.txt").write_bytes(b"old scores\n")
    for room in (0, 1, size // 2, size - 1):
        with monkeypatch.context() as patch:
            fill_disk(patch, eval_files / "out", room)
            assert run(eval_argv(eval_files)) == 2
        err = capsys.readouterr().err
        assert f"--write-scores {eval_files / 'out' / 's.txt'}: cannot write (No space" in err
        assert err.count("\n") == 1
        assert (eval_files / "out" / "s.txt").read_bytes() == b"old scores\n"
        assert left_in(eval_files / "out") == ["s.txt"]


SIZE_LIMITED = """
import resource, signal, sys
from margin_softmax.cli.main import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit is then EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
sys.exit(main(sys.argv[1:]))
"""


def run_size_limited(argv) -> subprocess.CompletedProcess:
    """The CLI in a process that cannot write past 4 KiB into any file (ulimit -f 4)."""
    pytest.importorskip("resource")
    return subprocess.run([sys.executable, "-c", SIZE_LIMITED, *map(str, argv)], timeout=120,
                          capture_output=True, text=True)


def test_eval_write_scores_past_a_real_size_limit_keeps_the_old_file(eval_files):
    done = run_size_limited(eval_argv(eval_files))  # 190 lines of about 30 bytes
    assert done.returncode == 2, done.stderr
    assert "--write-scores" in done.stderr and "cannot write (File too large)" in done.stderr
    assert (eval_files / "out" / "s.txt").read_bytes() == b"old scores\n"
    assert left_in(eval_files / "out") == ["s.txt"]


def test_a_checkpoint_save_past_a_real_size_limit_keeps_the_last_one(npz, tmp_path):
    ckpt, wide = tmp_path / "ck", [*TINY, "--hidden-dim", "64"]
    assert run(["train", npz, *wide, "--checkpoint-dir", ckpt, "--stop-after", "1"]) == 0
    before = (ckpt / "checkpoint.pt").read_bytes()
    assert len(before) > 32768  # past Python's write buffer: the write fails inside torch.save
    done = run_size_limited(["train", npz, *wide, "--checkpoint-dir", ckpt, "--resume"])
    assert done.returncode == 2, done.stderr
    assert f"--checkpoint-dir {ckpt / 'checkpoint.pt'}: cannot write (File too large)" in \
        done.stderr
    assert (ckpt / "checkpoint.pt").read_bytes() == before
    assert left_in(ckpt) == ["checkpoint.pt"]


def test_save_checkpoint_on_a_full_disk_says_so_and_keeps_the_last_one(tmp_path, monkeypatch):
    state = {"weight": torch.arange(20000.0)}
    save_checkpoint(tmp_path / "c.pt", {"weight": torch.zeros(3)})
    before = (tmp_path / "c.pt").read_bytes()
    for room in (0, 1, 40000, 80000):
        with monkeypatch.context() as patch:
            fill_disk(patch, tmp_path, room)
            with pytest.raises(OSError, match="No space"):  # not torch's "unexpected pos"
                save_checkpoint(tmp_path / "c.pt", state)
        assert (tmp_path / "c.pt").read_bytes() == before
        assert left_in(tmp_path) == ["c.pt"]


@pytest.mark.parametrize("name", ["e.npy", "e.npz"])
def test_export_embeddings_on_a_full_disk_keeps_the_old_file(npz, tmp_path, monkeypatch, capsys,
                                                             name):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(b"old embeddings")
    fill_disk(monkeypatch, out, 100)
    assert run(["train", npz, *TINY, "--export-embeddings", out / name, "--force"]) == 2
    assert f"--export-embeddings {out / name}: cannot write (No space" in capsys.readouterr().err
    assert (out / name).read_bytes() == b"old embeddings"
    assert left_in(out) == [name]


def test_compare_on_a_full_disk_keeps_each_old_file_whole(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert run(["compare", "--out", out, *TINY_COMPARE]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for name in ("unit_circle.png", "results.json", "report.html"):
        with monkeypatch.context() as patch:
            fill_disk(patch, out, 1000, name)
            assert run(["compare", "--out", out, "--force", "--seed", "1", *TINY_COMPARE]) == 2
        assert f"--out {out}: cannot write (No space" in capsys.readouterr().err
        assert (out / name).read_bytes() == before[name]
        assert left_in(out) == sorted(before)


@pytest.fixture
def read_only(tmp_path):
    """An existing folder where creating a file fails, even for root: /sys (sysfs), or a
    folder without write permission for other users."""
    if os.name == "posix" and os.geteuid() == 0:
        folder = Path("/sys")
    else:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
    try:
        with open(folder / "probe", "wb"):
            pass
    except OSError:
        return folder
    (folder / "probe").unlink()
    pytest.skip(f"{folder} is writable here")


def no_work(*args, **kwargs):
    raise AssertionError("the work started before the output folder was checked")


@pytest.mark.parametrize("option, target", [
    ("--export-embeddings", "e.npy"),
    ("--export-embeddings", "new/e.npz"),
    ("--checkpoint-dir", "ck"),
])
def test_train_refuses_an_unwritable_output_before_training(npz, read_only, monkeypatch,
                                                            capsys, option, target):
    monkeypatch.setattr("margin_softmax.training.fit", no_work)
    assert run(["train", npz, *TINY, option, read_only / target]) == 2
    err = capsys.readouterr().err
    assert f"{option} {read_only / target}: cannot write in " in err and err.count("\n") == 1


def test_eval_refuses_an_unwritable_scores_folder_before_scoring(eval_files, read_only,
                                                                 monkeypatch, capsys):
    monkeypatch.setattr(evaluate, "load", no_work)
    argv = eval_argv(eval_files)
    argv[-2] = read_only / "s.txt"
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert f"--write-scores {read_only / 's.txt'}: cannot write in {read_only}" in err


def test_compare_refuses_an_out_folder_where_files_cannot_be_made(tmp_path, monkeypatch,
                                                                  capsys):
    monkeypatch.setattr("margin_softmax.training.fit", no_work)
    (tmp_path / "run").mkdir()
    fill_disk(monkeypatch, tmp_path / "run", -1)
    assert run(["compare", "--out", tmp_path / "run", *TINY_COMPARE]) == 2
    assert f"--out {tmp_path / 'run'}: cannot write in" in capsys.readouterr().err
    assert left_in(tmp_path / "run") == []


def test_fit_checks_its_checkpoint_folder_before_the_first_step(read_only):
    x, y = data.synthetic_identities(4, 4, 6, seed=0)
    config = TrainConfig(epochs=1, batch_size=8, hidden_dim=4, embedding_dim=2, device="cpu")
    model, head = build_model(6, config), build_head("arcface", 2, 4)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(OSError):
        fit(model, head, x, y, config, checkpoint_dir=read_only / "ck", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
