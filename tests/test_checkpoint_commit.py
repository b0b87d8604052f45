"""Sharded checkpoints are committed whole: a failure at any byte of any file of a save leaves
the previous save the one loaded, exactly; a torn, cut or changed set is refused naming the
file; a kill -9 during a real save loses nothing."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from full_disk import FullDisk, Room

import margin_softmax.atomic_files as atomic_files
from margin_softmax.distributed import PartialFC, SampledRowsOptimizer, load_full
from margin_softmax.distributed.checkpoint import (
    load_sharded,
    load_trainer_state,
    save_sharded,
    shard_record,
    write_save,
)
from margin_softmax.distributed.commit import committed_save


def head_and_optimizer(seed: int):
    """A PartialFC over 9 classes with momentum: its weight and momentum drawn from ``seed``."""
    torch.manual_seed(seed)
    head = PartialFC(4, 9, m2=0.3).double()
    optimizer = SampledRowsOptimizer(torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9),
                                     head)
    optimizer.optimizer.state[head.weight]["momentum_buffer"] = torch.randn_like(head.weight)
    return head, optimizer


def save(directory: Path, seed: int) -> None:
    head, optimizer = head_and_optimizer(seed)
    save_sharded(directory, head, optimizer, trainer_state={"step": seed})


def loaded(directory: Path) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(weight, momentum, trainer step) as a resume would see them."""
    head, optimizer = head_and_optimizer(99)
    load_sharded(directory, head, optimizer)
    momentum = optimizer.optimizer.state[head.weight]["momentum_buffer"]
    return head.weight.detach().clone(), momentum, load_trainer_state(directory)["step"]


def expected(seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    head, optimizer = head_and_optimizer(seed)
    return head.weight.detach(), optimizer.optimizer.state[head.weight]["momentum_buffer"], seed


def assert_loads(directory: Path, seed: int, cut: bool = False) -> None:
    """The save of ``seed`` loads exactly; cut: with the warning that a newer save was
    never committed (a save cut short is ignored, not silently)."""
    if cut:
        with pytest.warns(UserWarning, match="never committed"):
            weight, momentum, step = loaded(directory)
    else:
        weight, momentum, step = loaded(directory)
    want = expected(seed)
    assert torch.equal(weight, want[0]) and torch.equal(momentum, want[1]) and step == want[2]


class DiskFull:
    """atomic_files' open(), on a disk that fills after ``budget`` bytes in all files."""

    def __init__(self, budget: int) -> None:
        self.room = Room(budget)

    def __call__(self, path, mode="r", **kwargs):
        return FullDisk(open(path, mode, **kwargs), self.room)  # noqa: SIM115


def save_size(tmp_path: Path) -> tuple[int, list[int]]:
    """The bytes a save writes in all (a second save: the first also probes the folder),
    and each file's end in that count."""
    save(tmp_path / "measure", 1)
    folder = tmp_path / "measure" / "save-000001"
    ends, total = [], 0
    for name in ("classes-0-9.pt", "trainer.pt", "manifest.json"):
        total += (folder / name).stat().st_size
        ends.append(total)
    return total, ends


def test_a_save_cut_at_any_byte_leaves_the_previous_save_loaded_exactly(tmp_path, monkeypatch):
    total, ends = save_size(tmp_path)
    budgets = sorted({0, 1, total - 1, *(e + d for e in ends[:-1] for d in (-1, 0, 1)),
                      *range(0, total, max(1, total // 23))})
    directory = tmp_path / "ckpt"
    save(directory, 1)
    snapshot = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    for budget in budgets:
        monkeypatch.setattr(atomic_files, "open", DiskFull(budget), raising=False)
        with pytest.raises(OSError, match="No space left"):
            save(directory, 2)
        monkeypatch.undo()
        assert_loads(directory, 1, cut=True)
        committed = {p: p.read_bytes() for p in (directory / "save-000001").rglob("*")}
        assert committed == snapshot, budget  # the previous save, byte for byte
        assert not list(directory.rglob("*.tmp")), budget  # no temporary left
    save(directory, 3)  # the next save that succeeds cleans up every cut one
    assert [p.name for p in directory.iterdir()] == [f"save-{len(budgets) + 2:06d}"]
    assert_loads(directory, 3)


def test_a_save_cut_at_every_byte_leaves_the_previous_save_committed(tmp_path, monkeypatch):
    """Every k from 0 to the save's size: the disk fills after k bytes of the new save. The
    previous save stays the committed one, byte for byte, with no temporary; the cut save
    is removed after each k (the test above checks that the next save does that itself,
    and that the previous save then loads exactly)."""
    total, _ = save_size(tmp_path)
    directory = tmp_path / "ckpt"
    save(directory, 1)
    first = directory / "save-000001"
    snapshot = {p.name: p.read_bytes() for p in first.iterdir()}
    for budget in range(total + 1):
        monkeypatch.setattr(atomic_files, "open", DiskFull(budget), raising=False)
        try:
            save(directory, 2)
        except OSError as error:
            assert "No space left" in str(error), budget
        else:
            assert budget == total, budget  # only the whole save fits in all of its bytes
            break
        finally:
            monkeypatch.undo()
        with pytest.warns(UserWarning, match="save-000002, never committed"):
            assert committed_save(directory)["save"] == 1, budget
        assert {p.name: p.read_bytes() for p in first.iterdir()} == snapshot, budget
        for cut in directory.iterdir():
            assert not cut.name.endswith(".tmp") and not list(cut.glob("*.tmp")), budget
            if cut != first:
                shutil.rmtree(cut)
    assert committed_save(directory)["save"] == 2  # k = size: the new save is committed
    assert_loads(directory, 2)


def test_a_failed_rename_or_manifest_leaves_the_previous_save(tmp_path, monkeypatch):
    directory = tmp_path / "ckpt"
    save(directory, 1)
    real = os.replace
    for fail_at in range(3):  # the shard's rename, trainer.pt's, the manifest's
        calls = []

        def replace(src, dst, fail_at=fail_at, calls=calls):
            calls.append(dst)
            if len(calls) > fail_at:
                raise OSError(errno.EIO, "Input/output error")
            return real(src, dst)

        monkeypatch.setattr(atomic_files.os, "replace", replace)
        with pytest.raises(OSError, match="Input/output error"):
            save(directory, 2)
        monkeypatch.undo()
        assert_loads(directory, 1, cut=True)


def test_keep_last_keeps_that_many_committed_saves(tmp_path):
    for seed in (1, 2, 3):
        head, _ = head_and_optimizer(seed)
        save_sharded(tmp_path, head, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["save-000002", "save-000003"]
    assert torch.equal(load_full(tmp_path / "save-000002"), expected(2)[0])  # a save by name
    assert torch.equal(load_full(tmp_path), expected(3)[0])  # the newest
    with pytest.raises(ValueError, match="keep_last must be an int >= 1.*got 0"):
        save_sharded(tmp_path, head, keep_last=0)


def test_a_save_never_committed_is_ignored_with_a_warning(tmp_path):
    save(tmp_path, 1)
    cut = tmp_path / "save-000002"
    cut.mkdir()
    (cut / "classes-0-9.pt").write_bytes(b"half a file")
    with pytest.warns(UserWarning, match="ignoring save-000002, never committed"):
        assert_loads(tmp_path, 1)


def shard_file(directory: Path) -> Path:
    return committed_save(directory)["folder"] / "classes-0-9.pt"


@pytest.mark.parametrize("damage", ["truncate", "empty", "flip", "delete"])
def test_a_damaged_shard_is_refused_naming_the_file(tmp_path, damage):
    save(tmp_path, 1)
    path = shard_file(tmp_path)
    data = path.read_bytes()
    if damage == "delete":
        path.unlink()
    else:
        changed = {"truncate": data[: len(data) // 2], "empty": b"",
                   "flip": data[:-9] + bytes([data[-9] ^ 1]) + data[-8:]}[damage]
        path.write_bytes(changed)
    message = {"truncate": r"bytes, the manifest records", "empty": "0 bytes",
               "flip": "SHA-256 differs", "delete": "missing from the checkpoint"}[damage]
    head, optimizer = head_and_optimizer(5)
    before = head.weight.detach().clone()
    with pytest.raises(ValueError, match=rf"classes-0-9\.pt: .*{message}"):
        load_sharded(tmp_path, head, optimizer)
    assert torch.equal(head.weight, before) and optimizer.optimizer.state[head.weight]
    with pytest.raises(ValueError, match=r"classes-0-9\.pt"):
        load_full(tmp_path)


def test_a_damaged_manifest_or_trainer_state_is_refused_naming_the_file(tmp_path):
    save(tmp_path, 1)
    folder = committed_save(tmp_path)["folder"]
    (folder / "trainer.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"trainer\.pt: 0 bytes"):
        load_trainer_state(tmp_path)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest\.json: not a readable checkpoint manifest"):
        load_full(tmp_path)
    manifest = {"format": "margin-softmax sharded checkpoint", "version": 7}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="manifest version 7"):
        load_full(tmp_path)


def test_a_save_without_trainer_state_says_so(tmp_path):
    head, _ = head_and_optimizer(1)
    save_sharded(tmp_path, head)
    with pytest.raises(ValueError, match=r"holds no trainer\.pt"):
        load_trainer_state(tmp_path)


def test_shards_of_different_heads_are_not_committed(tmp_path):
    records = [shard_record(torch.zeros(5, 4), 0, 10), shard_record(torch.zeros(5, 3), 5, 10)]
    with pytest.raises(ValueError, match="different heads"):
        write_save(tmp_path, records)
    with pytest.raises(FileNotFoundError, match="never committed"):
        load_full(tmp_path)


def test_an_unwritable_checkpoint_directory_is_refused_before_writing(tmp_path):
    (tmp_path / "file").write_text("x")
    head, _ = head_and_optimizer(1)
    with pytest.raises(ValueError, match=r"checkpoint directory .*file is a file"):
        save_sharded(tmp_path / "file", head)
    with pytest.raises(ValueError, match="is not writable"):
        save_sharded("/proc/margin-softmax-ckpt", head)


TRAIN = [sys.executable, "-m", "margin_softmax.distributed.train", "--classes", "120000",
         "--embedding-dim", "64", "--batch-size", "8", "--log-every", "1000"]


@pytest.mark.filterwarnings("ignore:.*never committed:UserWarning")  # as the kill falls
def test_kill_9_during_a_real_save_leaves_one_whole_save(tmp_path):
    """The training entry point, killed at two moments of its second save (C = 120k: a
    61 MB shard with its momentum): afterwards the checkpoint loads and is one save, the
    first byte for byte or the second whole, and --resume goes on from it."""
    ckpt = tmp_path / "ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    subprocess.run([*TRAIN, "--steps", "1", "--save", str(ckpt)], env=env, check=True,
                   capture_output=True, timeout=120)
    first = {p.relative_to(ckpt): p.read_bytes() for p in ckpt.rglob("*") if p.is_file()}
    for delay in (0.0, 0.1):
        before = set(ckpt.glob("save-*"))
        process = subprocess.Popen([*TRAIN, "--steps", "2", "--resume", str(ckpt), "--save",
                                    str(ckpt)], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if set(ckpt.glob("save-*")) - before:  # the second save has begun
                time.sleep(delay)
                break
            time.sleep(0.001)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        manifest = committed_save(ckpt)
        step = load_trainer_state(ckpt)["step"]
        if manifest["save"] == 1:
            now = {p.relative_to(ckpt): p.read_bytes() for p in ckpt.glob("save-000001/*")}
            assert now == first and step == 1
        else:
            assert step == 2 and load_full(ckpt).shape == (120000, 64)
            break  # the second save is whole: nothing older is left to compare
    done = subprocess.run([*TRAIN, "--steps", "3", "--resume", str(ckpt), "--save", str(ckpt)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert load_trainer_state(ckpt)["step"] == 3
    assert len(list(ckpt.iterdir())) == 1 and not list(ckpt.rglob("*.tmp"))


def two_rank_worker(rank: int, world: int, port: int, out: str) -> None:
    """Saves and loads on 2 gloo ranks where one rank fails or sees other files; records
    (error type, message) or the loaded weight of each case."""
    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank,
                            world_size=world, timeout=__import__("datetime").timedelta(seconds=20))
    results = {}

    def attempt(work):
        try:
            return ("no error", work())
        except Exception as error:
            return (type(error).__name__, str(error))

    def weight_of(directory: str):
        head = PartialFC(4, 9).double()
        load_sharded(directory, head)
        return head.weight.detach().clone()

    head = PartialFC(4, 9).double()
    shared = f"{out}/shared"
    save_sharded(shared, head, trainer_state={"step": 1})
    results["first"] = head.weight.detach().clone()
    if rank == 1:  # rank 1's disk is full
        atomic_files.open = DiskFull(100)
    results["disk_full"] = attempt(lambda: save_sharded(shared, PartialFC(4, 9).double()))
    if rank == 1:
        del atomic_files.open
    results["after_disk_full"] = attempt(lambda: weight_of(shared))
    dist.barrier()
    if rank == 0:  # cut rank 1's shard, which rank 0 does not read
        path = committed_save(shared)["folder"] / "classes-5-9.pt"
        path.write_bytes(path.read_bytes()[:100])
    dist.barrier()
    head = PartialFC(4, 9).double()
    before = head.weight.detach().clone()
    results["torn"] = attempt(lambda: load_sharded(shared, head))
    results["torn_unchanged"] = torch.equal(head.weight, before)
    local = f"{out}/local{rank}"  # a folder of each rank's own, as on node-local disks
    for _ in range(2):
        save_sharded(local, PartialFC(4, 9).double(), keep_last=2)
    results["local"] = attempt(lambda: weight_of(local))
    dist.barrier()
    if rank == 1:  # rank 1's second save never committed on its disk
        (Path(local) / "save-000002" / "manifest.json").unlink()
    results["different_saves"] = attempt(lambda: weight_of(local))
    torch.save(results, f"{out}/{rank}.pt")
    os._exit(0)  # skip gloo's teardown after failed collectives


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    from gloo_processes import run_ranks

    out = tmp_path_factory.mktemp("commit2")
    run_ranks(two_rank_worker, 2, str(out), timeout=120.0)
    return [torch.load(out / f"{rank}.pt", weights_only=False) for rank in range(2)]


def test_a_full_disk_on_one_rank_is_the_same_error_on_both_and_the_save_is_not_taken(two_ranks):
    errors = [r["disk_full"] for r in two_ranks]
    assert errors[0] == errors[1] and errors[0][0] == "OSError", errors
    assert errors[0][1].startswith("rank 1: ") and "No space left on device" in errors[0][1]
    for result in two_ranks:
        kind, weight = result["after_disk_full"]
        assert kind == "no error" and torch.equal(weight, result["first"])


def test_a_shard_cut_on_one_rank_is_refused_on_both_before_loading_anything(two_ranks):
    errors = [r["torn"] for r in two_ranks]
    assert errors[0] == errors[1] and errors[0][0] == "ValueError", errors
    assert re.search(r"^rank 1: .*classes-5-9\.pt: 100 bytes, the manifest records",
                     errors[0][1]), errors[0][1]
    assert all(r["torn_unchanged"] for r in two_ranks)  # rank 0 read its shard, loaded nothing


def test_node_local_folders_commit_and_ranks_that_see_different_saves_are_refused(two_ranks):
    assert all(r["local"][0] == "no error" for r in two_ranks)
    errors = [r["different_saves"] for r in two_ranks]
    assert errors[0] == errors[1] and errors[0][0] == "ValueError", errors
    message = errors[0][1]
    assert "the ranks see different saves" in message
    assert "local0/save-000002', 2), ('" in message and "local1/save-000001', 1)]" in message


@pytest.mark.parametrize("damage", ["shard", "trainer"])
def test_resuming_a_damaged_checkpoint_is_one_line_naming_the_file(tmp_path, damage, capsys,
                                                                    monkeypatch):
    from margin_softmax.distributed.train import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    options = ["--classes", "30", "--batch-size", "4", "--steps", "1"]
    assert main([*options, "--save", str(tmp_path)]) == 0
    name = {"shard": "classes-0-30.pt", "trainer": "trainer.pt"}[damage]
    path = tmp_path / "save-000001" / name
    path.write_bytes(path.read_bytes()[: 10 if damage == "shard" else 0])
    capsys.readouterr()
    assert main([*options, "--steps", "2", "--resume", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rank 0: ValueError: "), err
    assert f"{name}: {10 if damage == 'shard' else 0} bytes, the manifest records" in err
