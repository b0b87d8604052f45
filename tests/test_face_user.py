"""What a face-recognition user of InsightFace's arcface_torch trips on: checkpoints that stop
loading, errors that should name the argument."""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
from gloo_processes import run_ranks

import margin_softmax as ms
from margin_softmax.distributed import (
    PartialFC,
    SampledRowsOptimizer,
    load_full,
    load_sharded,
    save_sharded,
)
from margin_softmax.distributed.checkpoint import shard_record, write_save
from margin_softmax.distributed.train import main as train_main


def test_a_save_in_another_layout_replaces_the_previous_one_once_committed(tmp_path):
    """A 1-process save into a directory of a 2-rank save: its own save folder, loaded from
    then on; the 2-rank save is removed only after the new one is committed."""
    weight = torch.randn(10, 4)
    write_save(tmp_path, [shard_record(weight[:5], 0, 10), shard_record(weight[5:], 5, 10)])
    head = PartialFC(4, 10)
    save_sharded(tmp_path, head)
    assert [p.name for p in tmp_path.iterdir()] == ["save-000002"]
    assert torch.equal(load_full(tmp_path), head.weight.detach())


def test_train_saves_beside_an_old_checkpoint_without_touching_its_files(tmp_path):
    """Shard files written before manifests stay as they were; the new save is loaded."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    weight = torch.randn(20, 8)
    for start, stop in ((0, 10), (10, 20)):
        torch.save(shard_record(weight[start:stop], start, 20), ckpt / f"classes-{start}-{stop}.pt")
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    with pytest.warns(UserWarning, match="without a manifest"):
        assert torch.equal(load_full(ckpt), weight)  # an old checkpoint still loads
    args = ["--steps", "2", "--classes", "20", "--embedding-dim", "8", "--batch-size", "4",
            "--save", str(ckpt)]
    assert train_main(args) == 0
    assert {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()} == before
    assert not torch.equal(load_full(ckpt), weight)


def test_a_missing_last_shard_is_an_error_not_a_smaller_weight(tmp_path):
    weight = torch.randn(10, 4)
    folder = write_save(tmp_path, [shard_record(weight[:5], 0, 10),
                                   shard_record(weight[5:], 5, 10)])
    (folder / "classes-5-10.pt").unlink()
    with pytest.raises(ValueError, match=r"classes-5-10\.pt: missing from the checkpoint"):
        load_full(tmp_path)
    with pytest.raises(ValueError, match="missing"):
        load_sharded(tmp_path, PartialFC(4, 10))


def test_a_checkpoint_of_another_embedding_size_is_a_value_error(tmp_path):
    save_sharded(tmp_path, PartialFC(4, 10))
    head = PartialFC(8, 10)
    with pytest.raises(ValueError, match="embedding_dim 4, the head has 8"):
        load_sharded(tmp_path, head)


def test_gradient_accumulation_over_two_samples_steps_the_rows_of_both():
    """arcface_torch's gradient_acc: two forwards (two Partial FC samples), then one step."""
    head = PartialFC(5, 40, m2=0.5, scale=30.0, sample_rate=0.25).double()
    optimizer = SampledRowsOptimizer(torch.optim.SGD(head.parameters(), lr=0.1), head)
    g = torch.Generator().manual_seed(0)
    x, labels = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.arange(6)
    before = head.weight.detach().clone()
    head(x, labels).backward()
    first = head.sampled_rows
    head(x, labels + 20).backward()
    assert set(first.tolist()) - set(head.sampled_rows.tolist())  # the samples differ
    used = torch.zeros(40, dtype=torch.bool)
    used[first], used[head.sampled_rows] = True, True
    expected = before - 0.1 * head.weight.grad  # plain SGD on the rows of either sample
    optimizer.step()
    torch.testing.assert_close(head.weight.detach()[used], expected[used], atol=1e-15, rtol=0)
    assert torch.equal(head.weight.detach()[~used], before[~used])


@pytest.mark.parametrize("value", ["False", 1, None])
def test_straight_through_must_be_a_bool(value):
    """A config string "False" is truthy: it would silently switch the gradient."""
    with pytest.raises(TypeError, match="straight_through must be a bool"):
        ms.ArcFace(4, 10, straight_through=value)
    with pytest.raises(TypeError, match="straight_through must be a bool"):
        ms.margin_cross_entropy(torch.randn(2, 4), torch.randn(10, 4), torch.tensor([0, 1]),
                                scale=64.0, m2=0.5, straight_through=value)


@pytest.mark.parametrize("head", [ms.ArcFace, ms.CosFace, ms.CombinedMargin, ms.NormFace,
                                  ms.SphereFace, ms.SoftmaxLoss])
def test_an_unknown_impl_is_refused_by_the_constructor(head):
    with pytest.raises(ValueError, match="impl must be one of"):
        head(4, 10, impl="Chunked")


@pytest.mark.parametrize("impl", ["eager", "chunked"])
def test_a_weight_that_is_not_a_tensor_is_a_type_error(impl):
    x, labels = torch.randn(3, 4), torch.tensor([0, 1, 2])
    for weight in (torch.randn(5, 4).numpy(), None):
        with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
            ms.margin_cross_entropy(x, weight, labels, scale=64.0, m2=0.5, impl=impl)


@pytest.mark.parametrize("option,value", [
    ("--log-every", "0"), ("--steps", "0"), ("--steps", "-1"), ("--batch-size", "0"),
    ("--classes", "0"), ("--input-dim", "0"), ("--embedding-dim", "-2"), ("--lr", "0"),
    ("--lr", "nan"), ("--scale", "0"), ("--scale", "1e5"), ("--sample-rate", "0"),
    ("--sample-rate", "1.5"), ("--noise", "-1"), ("--noise", "inf"), ("--timeout", "0"),
    ("--timeout", "inf"), ("--seed", "-1"), ("--seed", str(2**64 - 1)),
])
def test_the_training_entry_point_refuses_a_bad_number_naming_the_option(option, value, capsys):
    """--log-every 0 was a ZeroDivisionError at the first step; --batch-size 0, --timeout 0
    and --input-dim 0 trained silently; --seed 2**64 - 1 overflowed in torch.manual_seed."""
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--steps", "1", "--classes", "10", "--batch-size", "2", option, value])
    assert exit_info.value.code == 2
    assert f"error: argument {option}: " in capsys.readouterr().err.strip().splitlines()[-1]


def test_training_on_cuda_without_cuda_is_an_argument_error(monkeypatch, capsys):
    """It was an AttributeError: module 'torch._C' has no attribute '_cuda_setDevice'."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--steps", "1", "--device", "cuda"])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --device: CUDA is not available" in last


@pytest.mark.parametrize("block_size", [0, -1, 3.5, True, "8"])
def test_partial_fc_refuses_a_block_size_that_is_not_a_positive_int(block_size):
    """0, -1 and 3.5 were coerced by the chunked path and gave a loss."""
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        PartialFC(4, 10, block_size=block_size, impl="chunked")


def test_partial_fc_takes_a_numpy_block_size():
    head = PartialFC(4, 10, block_size=np.int64(3), impl="chunked")
    assert head.block_size == 3 and type(head.block_size) is int


def mixed_sizes_worker(rank: int, world: int, port: int, out: str) -> None:
    """Rank 1 builds its head with embedding_dim 6 (folder "dim") or num_classes 12 (folder
    "classes"), rank 0 with 4 and 10 (a per-rank config)."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=10))
    dim, classes = (4 + 2 * rank, 10) if out.endswith("dim") else (4, 10 + 2 * rank)
    head = PartialFC(dim, classes, m2=0.5, scale=30.0)
    try:
        head(torch.randn(3, dim), torch.tensor([0, 5, 9]))
        outcome = ("no error", "")
    except Exception as error:
        outcome = (type(error).__name__, str(error))
    torch.save(outcome, f"{out}/{rank}.pt")
    os._exit(0)  # a failed collective may leave gloo threads behind: skip the teardown


@pytest.mark.parametrize("size, values", [("dim", "[4, 6]"), ("classes", "[10, 12]")])
def test_ranks_built_with_different_sizes_fail_together(tmp_path, size, values):
    """embedding_dim aborted gloo in C++; num_classes sharded the classes two ways and gave a
    silently wrong loss."""
    out = tmp_path / size
    out.mkdir()
    run_ranks(mixed_sizes_worker, 2, str(out), timeout=60.0)
    name = {"dim": "embedding_dim", "classes": "num_classes"}[size]
    for rank in range(2):
        kind, message = torch.load(out / f"{rank}.pt")
        assert kind == "ValueError", (rank, kind, message)
        assert name in message and values in message


@pytest.mark.parametrize("saved,loaded", [("SGD", "Adam"), ("Adam", "SGD")])
def test_optimizer_state_of_another_optimizer_type_is_refused(tmp_path, saved, loaded):
    """SGD's momentum_buffer loaded into Adam was accepted and failed at Adam's first step
    with KeyError: 'exp_avg'; Adam's moments loaded into SGD were silently dropped."""
    def head_and_optimizer(kind):
        head = PartialFC(4, 10, m2=0.5, scale=30.0)
        options = {"momentum": 0.9} if kind == "SGD" else {}
        inner = getattr(torch.optim, kind)(head.parameters(), lr=0.1, **options)
        return head, SampledRowsOptimizer(inner, head)

    head, optimizer = head_and_optimizer(saved)
    head(torch.randn(3, 4), torch.tensor([0, 5, 9])).backward()
    optimizer.step()
    save_sharded(tmp_path, head, optimizer)
    head, optimizer = head_and_optimizer(loaded)
    with pytest.raises(ValueError, match=f"saved from {saved} .*optimizer given is {loaded};"):
        load_sharded(tmp_path, head, optimizer)
    assert optimizer.state[head.weight] == {}  # nothing half-loaded


def nan_shard_worker(rank: int, world: int, port: int, out: str) -> None:
    """Rank 1's weight shard holds a NaN (its part of a diverged run); rank 0's is fine."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=10))
    head = PartialFC(4, 10, m2=0.5, scale=30.0)
    if rank == 1:
        with torch.no_grad():
            head.weight[0, 1] = float("nan")
    try:
        head(torch.randn(3, 4), torch.tensor([0, 5, 9]))
        outcome = ("no error", "")
    except Exception as error:
        outcome = (type(error).__name__, str(error))
    torch.save(outcome, f"{out}/{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


def test_a_non_finite_weight_shard_is_named_on_every_rank(tmp_path):
    """A NaN in one rank's rows gave every rank a silent NaN loss; now every rank raises the
    same ValueError naming that rank (one process too)."""
    head = PartialFC(4, 10, m2=0.5, scale=30.0)
    with torch.no_grad():
        head.weight[7, 0] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite .* rank\(s\) \[0\]"):
        head(torch.randn(3, 4), torch.tensor([0, 5, 9]))
    run_ranks(nan_shard_worker, 2, str(tmp_path), timeout=60.0)
    for rank in range(2):
        kind, message = torch.load(tmp_path / f"{rank}.pt")
        assert kind == "ValueError" and "rank(s) [1]" in message, (rank, kind, message)
