"""The sharded head on 2 and 3 gloo processes against the single-process eager head (float64).

Two process groups are spawned once per module (each process imports torch, so they are
expensive): 2 ranks, then 3 ranks. Each runs every case and saves what it computed; the
tests below compare those against margin_cross_entropy(impl="eager") on the full data.
"""

from __future__ import annotations

import os
import time
import zlib
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from gloo_processes import run_ranks
from torch import nn

from margin_softmax import margin_cross_entropy
from margin_softmax.distributed import (
    PartialFC,
    class_range,
    load_full,
    load_sharded,
    save_full,
    save_sharded,
)

ARCFACE = {"m2": 0.5, "scale": 30.0}
COSFACE = {"m3": 0.35, "scale": 30.0}
COMBINED = {"m1": 0.9, "m2": 0.4, "m3": 0.15, "scale": 64.0}
TOL = {"atol": 1e-9, "rtol": 0.0}
DIM = 6

# name -> (num_classes, batch size of each rank, head keywords, labels below this or None)
CASES = {
    2: {
        "arcface": (11, [5, 3], ARCFACE, None),
        "cosface": (11, [5, 3], COSFACE, None),
        "combined": (11, [2, 7], COMBINED, None),
        "sampled": (23, [6, 5], {**ARCFACE, "sample_rate": 0.4, "seed": 3}, None),
    },
    3: {
        "arcface": (10, [4, 0, 6], ARCFACE, None),  # rank 1 holds no sample
        "cosface": (10, [1, 5, 3], COSFACE, 7),  # no sample of rank 2's classes [7, 10)
        "combined": (17, [3, 4, 2], COMBINED, None),
        "sampled": (25, [4, 0, 5], {**COSFACE, "sample_rate": 0.3, "seed": 1}, None),
        "sampled_full": (10, [3, 3, 3], {**ARCFACE, "sample_rate": 1.0}, None),
    },
}
BAD_LABELS = {2: (1, 11), 3: (2, -1)}  # world size -> (rank, label it gets)
CHECKPOINT_CLASSES = 11


def case_data(name: str, world: int):
    """x (N, D), labels (N,), full weight (C, D), per-rank sizes: the same in every process."""
    num_classes, sizes, kwargs, label_high = CASES[world][name]
    g = torch.Generator().manual_seed(zlib.crc32(f"{name}-{world}".encode()))
    x = torch.randn(sum(sizes), DIM, generator=g, dtype=torch.float64)
    weight = torch.randn(num_classes, DIM, generator=g, dtype=torch.float64)
    labels = torch.randint(0, label_high or num_classes, (sum(sizes),), generator=g)
    return x, labels, weight, sizes, kwargs


def local_rows(sizes: list[int], rank: int) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def make_head(num_classes: int, weight: torch.Tensor | None = None, group=None, **kwargs):
    head = PartialFC(DIM, num_classes, group=group, **kwargs).double()
    if weight is not None:
        with torch.no_grad():
            head.weight.copy_(weight[head.start : head.stop])
    return head


def run_case(name: str, world: int, rank: int) -> dict:
    x, labels, weight, sizes, kwargs = case_data(name, world)
    head = make_head(weight.shape[0], weight, **kwargs)
    mine = x[local_rows(sizes, rank)].clone().requires_grad_()
    loss = head(mine, labels[local_rows(sizes, rank)])
    loss.backward()
    return {"loss": loss.item(), "x_grad": mine.grad, "w_grad": head.weight.grad,
            "rows": head.sampled_rows, "start": head.start}


def run_ddp(rank: int, world: int) -> dict:
    """A DDP-wrapped linear backbone under the sharded head: its averaged gradient."""
    x, labels, weight, sizes, _ = case_data("arcface", world)
    torch.manual_seed(0)
    backbone = nn.Linear(DIM, DIM).double()
    ddp = nn.parallel.DistributedDataParallel(backbone)
    head = make_head(weight.shape[0], weight, **ARCFACE)
    rows = local_rows(sizes, rank)
    head(ddp(x[rows]), labels[rows]).backward()
    return {"weight": backbone.weight.grad, "bias": backbone.bias.grad}


def run_bad_labels(rank: int, world: int) -> tuple[str, str]:
    x, labels, weight, sizes, kwargs = case_data("arcface", world)
    bad_rank, bad_label = BAD_LABELS[world]
    mine = labels[local_rows(sizes, rank)].clone()
    if rank == bad_rank:
        mine[-1] = bad_label
    try:
        make_head(weight.shape[0], weight, **kwargs)(x[local_rows(sizes, rank)], mine)
    except Exception as error:
        return type(error).__name__, str(error)
    return "no error", ""


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=30))
    short = dist.new_group(timeout=timedelta(seconds=5))
    results = {name: run_case(name, world, rank) for name in CASES[world]}
    results["bad_labels"] = run_bad_labels(rank, world)
    results["after_error"] = run_case("arcface", world, rank)  # the group is still in step
    results["ddp"] = run_ddp(rank, world)
    checkpoint = make_head(CHECKPOINT_CLASSES)
    if world == 2:
        with torch.no_grad():
            checkpoint.weight.copy_(torch.arange(checkpoint.start, checkpoint.stop)[:, None]
                                    + torch.arange(DIM) / DIM)
        save_sharded(f"{out}/ckpt2", checkpoint)
    else:
        load_sharded(f"{out}/ckpt2", checkpoint)
        results["from_2"] = checkpoint.weight.detach().clone()
        load_sharded(f"{out}/single", checkpoint)
        results["from_single"] = checkpoint.weight.detach().clone()
        save_sharded(f"{out}/ckpt3", checkpoint)
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.barrier()
    if world == 3:  # rank 2 dies; the others must fail within the short group's timeout
        if rank == 2:
            os._exit(0)
        x, labels, weight, sizes, kwargs = case_data("arcface", world)
        head = make_head(weight.shape[0], weight, group=short, **kwargs)
        begin = time.perf_counter()
        try:
            head(x[local_rows(sizes, rank)], labels[local_rows(sizes, rank)])
            outcome = "no error"
        except Exception as error:
            outcome = type(error).__name__
        torch.save((outcome, time.perf_counter() - begin), f"{out}/dead{rank}.pt")
        os._exit(0)  # the group has a dead member: do not wait in destroy_process_group
    dist.destroy_process_group()


def spawn(world: int, out: str, timeout: float = 120.0) -> list[dict]:
    run_ranks(worker, world, out, timeout)
    return [torch.load(f"{out}/rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("distributed"))
    two = spawn(2, out)
    full = torch.randn(CHECKPOINT_CLASSES, DIM, dtype=torch.float64)  # a "single-process head"
    save_full(f"{out}/single", full)
    three = spawn(3, out)
    return {2: two, 3: three, "out": out, "single": full}


def reference(x, labels, weight, kwargs):
    """Loss and gradients of the single-process eager head on the full data."""
    x, weight = x.clone().requires_grad_(), weight.clone().requires_grad_()
    head = PartialFC(DIM, weight.shape[0], **{k: v for k, v in kwargs.items()
                                             if k not in ("sample_rate", "seed")})
    loss = margin_cross_entropy(x, weight, labels, scale=head.scale, margin=head.margin,
                                impl="eager")
    loss.backward()
    return loss.item(), x.grad, weight.grad


@pytest.mark.parametrize("world,name", [(w, n) for w in CASES for n in CASES[w]])
def test_loss_and_gradients_equal_single_process(runs, world, name):
    x, labels, weight, sizes, kwargs = case_data(name, world)
    results = [result[name] for result in runs[world]]
    if results[0]["rows"] is not None:  # Partial FC: the same loss over the sampled classes
        sampled = torch.cat([r["start"] + r["rows"] for r in results])  # (K,) sorted
        assert torch.equal(sampled, sampled.sort().values)
        assert set(labels.tolist()) <= set(sampled.tolist())  # every positive kept
        ref_loss, ref_x, ref_w_sampled = reference(
            x, torch.searchsorted(sampled, labels), weight[sampled], kwargs
        )
        ref_w = torch.zeros_like(weight)
        ref_w[sampled] = ref_w_sampled  # rows not sampled get no gradient
        for r, result in enumerate(results):
            start, stop = class_range(weight.shape[0], world, r)
            positives = len({y for y in labels.tolist() if start <= y < stop})
            assert len(result["rows"]) == max(round(kwargs["sample_rate"] * (stop - start)),
                                              positives)
        assert len(sampled) < weight.shape[0]
    else:
        ref_loss, ref_x, ref_w = reference(x, labels, weight, kwargs)
    for r, result in enumerate(results):
        assert abs(result["loss"] - ref_loss) < 1e-9, (r, result["loss"], ref_loss)
        # the documented factor: world_size times dloss/dx, for DDP's average
        torch.testing.assert_close(result["x_grad"] / world, ref_x[local_rows(sizes, r)], **TOL)
        start, stop = class_range(weight.shape[0], world, r)
        torch.testing.assert_close(result["w_grad"], ref_w[start:stop], **TOL)


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_backbone_gets_the_global_mean_gradient(runs, world):
    x, labels, weight, _, _ = case_data("arcface", world)
    torch.manual_seed(0)
    backbone = nn.Linear(DIM, DIM).double()
    loss = margin_cross_entropy(backbone(x), weight, labels, scale=30.0, m2=0.5, impl="eager")
    loss.backward()
    for result in runs[world]:
        torch.testing.assert_close(result["ddp"]["weight"], backbone.weight.grad, **TOL)
        torch.testing.assert_close(result["ddp"]["bias"], backbone.bias.grad, **TOL)


@pytest.mark.parametrize("world", [2, 3])
def test_bad_label_raises_value_error_on_every_rank(runs, world):
    bad_rank, bad_label = BAD_LABELS[world]
    for result in runs[world]:
        kind, message = result["bad_labels"]
        assert kind == "ValueError"
        assert f"rank {bad_rank}" in message and f"got label {bad_label}" in message
        assert result["after_error"]["loss"] == runs[world][0]["arcface"]["loss"]


def test_checkpoint_moves_between_world_sizes_and_a_single_head(runs):
    out = runs["out"]
    written = torch.arange(CHECKPOINT_CLASSES)[:, None] + torch.arange(DIM) / DIM  # by 2 ranks
    assert torch.equal(load_full(f"{out}/ckpt2"), written.double())
    for r, result in enumerate(runs[3]):
        start, stop = class_range(CHECKPOINT_CLASSES, 3, r)
        assert torch.equal(result["from_2"], written[start:stop].double())
        assert torch.equal(result["from_single"], runs["single"][start:stop])
    assert torch.equal(load_full(f"{out}/ckpt3"), runs["single"])  # 3 ranks -> one process


def test_a_dead_rank_ends_the_step_with_an_error(runs):
    for rank in (0, 1):
        outcome, seconds = torch.load(f"{runs['out']}/dead{rank}.pt")
        assert outcome != "no error"
        assert seconds < 20  # the group's timeout is 5 s; no hang
