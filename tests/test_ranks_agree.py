"""Ranks must agree: sharded heads that differ between ranks (a margin, the scale, the type,
the sampling, the seed, the dtype, a scheduler's change on one rank) are the same ValueError
on every rank, naming the field and each rank's value; the training entry point refuses
ranks given different options. One spawn of 2 gloo ranks and one of 3 (rank 2 the odd one).

Before: PartialFC with m2 on one rank and m3 on the other, or scale 30 and 64, trained on
with a loss matching neither; PartialFC beside AdaFacePartialFC aborted gloo (SIGABRT)."""

from __future__ import annotations

import contextlib
import io
import os
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from gloo_processes import run_ranks
from sharded_heads import DIM, batch, sharded

from margin_softmax.distributed import AdaFacePartialFC, PartialFC
from margin_softmax.distributed.train import main as train_main
from margin_softmax.margins import Margin

CLASSES = 11


def odd(rank: int, world: int) -> bool:
    """The rank whose head differs: the last one."""
    return rank == world - 1


def attempt(work) -> tuple[str, str]:
    try:
        work()
    except Exception as error:
        return type(error).__name__, str(error)
    return "no error", ""


def forward(head, seed: int = 0):
    x, labels = batch(seed, 4, CLASSES, head.weight.dtype)
    return head(x, labels)


# name -> (rank 0..W-2's head, the odd rank's head): built in the worker
BUILT_APART = {
    "m2_vs_m3": (lambda: PartialFC(DIM, CLASSES, m2=0.3), lambda: PartialFC(DIM, CLASSES, m3=0.3)),
    "scale": (lambda: PartialFC(DIM, CLASSES, scale=30.0), lambda: PartialFC(DIM, CLASSES)),
    "type": (lambda: PartialFC(DIM, CLASSES), lambda: AdaFacePartialFC(DIM, CLASSES)),
    "sample_rate": (lambda: PartialFC(DIM, CLASSES, sample_rate=0.5),
                    lambda: PartialFC(DIM, CLASSES, sample_rate=1.0)),
    "seed": (lambda: PartialFC(DIM, CLASSES, sample_rate=0.5, seed=1),
             lambda: PartialFC(DIM, CLASSES, sample_rate=0.5, seed=2)),
    "fallback": (lambda: PartialFC(DIM, CLASSES, m2=0.3, fallback="seed"),
                 lambda: PartialFC(DIM, CLASSES, m2=0.3, fallback="none")),
}
# name -> (attribute a scheduler sets on the odd rank only, its value); the message names the
# attribute, or for PartialFC's Margin the field that changed
SCHEDULED = {
    "partialfc": ("margin", Margin(m2=0.4)),
    "adaface": ("margin", 0.2),
    "magface": ("u_margin", 0.7),
    "elastic_arc": ("std", 0.1),
    "elastic_cos": ("margin", 0.3),
    "curricularface": ("momentum", 0.1),
    "adacos": ("scale", 12.0),
    "subcenter": ("straight_through", True),
}


def sharded_or_partial_fc(name: str, weight: torch.Tensor):
    """The head of SCHEDULED[name], holding the first rows of ``weight``."""
    if name == "partialfc":
        return PartialFC(DIM, CLASSES).double()
    return sharded(name, weight[: CLASSES * (3 if name == "subcenter" else 1)])


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank,
                            world_size=world, timeout=timedelta(seconds=20))
    results = {}
    for name, (usual, other) in BUILT_APART.items():
        head = (other if odd(rank, world) else usual)().double()
        results[name] = attempt(lambda head=head: forward(head))
    head = PartialFC(DIM, CLASSES)
    head = head.float() if odd(rank, world) else head.double()
    results["dtype"] = attempt(lambda: forward(head))
    head = PartialFC(DIM, CLASSES).double()
    head.train(not odd(rank, world))
    results["training"] = attempt(lambda: forward(head))
    for name, (field, value) in SCHEDULED.items():
        head = sharded_or_partial_fc(name, torch.randn(CLASSES * 3, DIM, dtype=torch.float64))
        first = attempt(lambda head=head: forward(head, 1).backward())
        if odd(rank, world):
            setattr(head, field, value)
        results[f"scheduled_{name}"] = (first, attempt(lambda head=head: forward(head, 2)))
    head = PartialFC(DIM, CLASSES).double()
    results["agreeing"] = attempt(lambda: forward(head).backward())
    dist.destroy_process_group()
    # the training entry point, each rank given other options
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    argv = ["--steps", "2", "--classes", "20", "--timeout", "20"]
    if odd(rank, world):
        argv += ["--loss", "cosface", "--scale", "64", "--seed", "3", "--sample-rate", "0.5"]
    stderr, begin = io.StringIO(), time.monotonic()
    with contextlib.redirect_stderr(stderr):
        code = train_main(argv)
    results["cli"] = (code, stderr.getvalue(), time.monotonic() - begin)
    torch.save(results, f"{out}/{rank}.pt")
    os._exit(0)  # gloo threads of a failed collective may be left: skip the teardown


@pytest.fixture(scope="module", params=[2, 3], ids=["2-ranks", "3-ranks"])
def ranks(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"agree{request.param}")
    run_ranks(worker, request.param, str(out), timeout=150.0)
    return [torch.load(out / f"{rank}.pt", weights_only=False) for rank in range(request.param)]


def values(world: int, usual, other) -> str:
    """'[usual, ..., other]': each rank's value in rank order, as the message prints it."""
    return str([usual] * (world - 1) + [other])


def assert_same_error(ranks, name: str, *fragments: str) -> None:
    """Every rank raised the same ValueError, naming each fragment."""
    results = [r[name] if not name.startswith("scheduled") else r[name][1] for r in ranks]
    assert all(result == results[0] for result in results), results
    kind, message = results[0]
    assert kind == "ValueError", (name, results[0])
    for fragment in fragments:
        assert fragment in message, (name, fragment, message)


def test_different_margins_name_both_fields_and_every_ranks_value(ranks):
    world = len(ranks)
    assert_same_error(ranks, "m2_vs_m3", "m2 " + values(world, 0.3, 0.0),
                      "m3 " + values(world, 0.0, 0.3), "in rank order")


@pytest.mark.parametrize("name, field, usual, other", [
    ("scale", "scale", 30.0, 64.0),
    ("type", "head", "PartialFC", "AdaFacePartialFC"),
    ("sample_rate", "sample_rate", 0.5, 1.0),
    ("seed", "seed", 1, 2),
    ("fallback", "fallback", "seed", "none"),
    ("dtype", "dtype", "float64", "float32"),
    ("training", "training", True, False),
])
def test_heads_built_apart_are_one_value_error_on_every_rank(ranks, name, field, usual, other):
    assert_same_error(ranks, name, f"{field} {values(len(ranks), usual, other)}")


@pytest.mark.parametrize("name", sorted(SCHEDULED))
def test_a_parameter_changed_on_one_rank_is_caught_at_the_next_step(ranks, name):
    for result in ranks:
        assert result[f"scheduled_{name}"][0] == ("no error", ""), result[f"scheduled_{name}"]
    field, value = SCHEDULED[name]
    if name == "partialfc":
        field, value = "m2", 0.4
    assert_same_error(ranks, f"scheduled_{name}", f"{field} [", f", {value}] (in rank order)")


def test_agreeing_heads_still_train_after_the_refusals(ranks):
    assert all(r["agreeing"] == ("no error", "") for r in ranks)


def test_the_entry_point_refuses_ranks_given_different_options(ranks):
    world = len(ranks)
    for rank, result in enumerate(ranks):
        code, stderr, seconds = result["cli"]
        assert code == 1 and stderr.count("\n") == 1, (rank, stderr)
        assert stderr.startswith(f"rank {rank}: ValueError: the ranks disagree on the options")
        for field, usual, other in (("loss", "arcface", "cosface"), ("scale", 30.0, 64.0),
                                    ("seed", 0, 3), ("sample_rate", 1.0, 0.5)):
            assert f"{field} {values(world, usual, other)}" in stderr, (field, stderr)
        assert seconds < 15, seconds  # at once, not at the timeout
