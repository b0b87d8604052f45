"""Resuming the sharded head with its optimizer state, across world sizes (float64).

k steps in one go must equal k1 steps, a checkpoint, a fresh head and optimizer in another
world size, and k - k1 more steps. One group of 2 gloo processes is spawned per module:
it trains from scratch and saves (2 ranks -> this process), and it resumes a checkpoint this
process wrote (1 process -> 2 ranks). It also runs the torchrun entry point (train.py) for a
checkpoint of backbone, optimizer and head that this process resumes.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from gloo_processes import run_ranks

from margin_softmax.distributed import PartialFC, SampledRowsOptimizer, load_full
from margin_softmax.distributed.checkpoint import load_sharded, load_trainer_state, save_sharded
from margin_softmax.distributed.commit import committed_save
from margin_softmax.distributed.train import parse_args, train

CLASSES, DIM, SIZES = 11, 6, [5, 3]  # the global batch of every step, split over 2 ranks
STEPS, RESUME_AT = 4, 2
OPTIMIZERS = ("sgd", "adam")
TRAIN = ["--classes", "40", "--batch-size", "16", "--sample-rate", "0.5", "--log-every", "100"]


def step_data(step: int):
    """x (N, D), labels (N,) of step ``step``: the same in every process."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(sum(SIZES), DIM, generator=g, dtype=torch.float64)
    return x, torch.randint(0, CLASSES, (sum(SIZES),), generator=g)


def make_head_and_optimizer(name: str, group=None):
    head = PartialFC(DIM, CLASSES, m2=0.5, scale=30.0, group=group).double()
    weight = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(7),
                         dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(weight[head.start : head.stop])
    if name == "sgd":
        inner = torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    else:
        inner = torch.optim.Adam(head.parameters(), lr=0.05)
    return head, SampledRowsOptimizer(inner, head)


def run_steps(head, optimizer, steps: range) -> None:
    world, rank = head.world_size, head.rank
    for step in steps:
        x, labels = step_data(step)
        mine = slice(0, None) if world == 1 else slice(sum(SIZES[:rank]), sum(SIZES[: rank + 1]))
        loss = head(x[mine], labels[mine])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    train(parse_args([*TRAIN, "--steps", "3", "--save", f"{out}/train-by-2"]))  # makes the group
    for name in OPTIMIZERS:
        head, optimizer = make_head_and_optimizer(name)
        run_steps(head, optimizer, range(RESUME_AT))
        save_sharded(f"{out}/{name}-by-2", head, optimizer)
        head, optimizer = make_head_and_optimizer(name)
        load_sharded(f"{out}/{name}-by-1", head, optimizer)
        run_steps(head, optimizer, range(RESUME_AT, STEPS))
        save_sharded(f"{out}/{name}-resumed-by-2", head, optimizer)
    dist.barrier()
    dist.destroy_process_group()
    # skip the interpreter's teardown: under a loaded `make test`, a thread left in it
    # aborted one rank after all its work was saved ("terminate called without an active
    # exception", exit -6) in about 1 run of 5; everything this worker owes is on disk now
    os._exit(0)


def spawn(world: int, out: str, timeout: float = 60.0) -> None:
    run_ranks(worker, world, out, timeout)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume")
    for name in OPTIMIZERS:  # the checkpoints this process hands to the 2 ranks
        head, optimizer = make_head_and_optimizer(name)
        run_steps(head, optimizer, range(RESUME_AT))
        save_sharded(out / f"{name}-by-1", head, optimizer)
    spawn(2, str(out))
    return out


def in_one_go(name: str) -> torch.Tensor:
    head, optimizer = make_head_and_optimizer(name)
    run_steps(head, optimizer, range(STEPS))
    return head.weight.detach()


CLOSE = {"rtol": 1e-6, "atol": 1e-12}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_two_ranks_resume_in_one_process_as_if_never_stopped(out, name):
    head, optimizer = make_head_and_optimizer(name)
    load_sharded(out / f"{name}-by-2", head, optimizer)
    run_steps(head, optimizer, range(RESUME_AT, STEPS))
    torch.testing.assert_close(head.weight.detach(), in_one_go(name), **CLOSE)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_one_process_resumes_on_two_ranks_as_if_never_stopped(out, name):
    torch.testing.assert_close(load_full(out / f"{name}-resumed-by-2"), in_one_go(name), **CLOSE)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_comparison_sees_a_restart_from_zero_moments(out, name):
    """Loading the weight alone, as before optimizer state was saved, is far off: the tests
    above would catch a resume that loses the moments."""
    head, optimizer = make_head_and_optimizer(name)
    load_sharded(out / f"{name}-by-2", head)
    run_steps(head, optimizer, range(RESUME_AT, STEPS))
    expected = in_one_go(name)
    assert (head.weight.detach() - expected).abs().max() > 1e-3 * expected.abs().max()


def test_loading_into_an_optimizer_needs_optimizer_state_in_every_file(tmp_path):
    head, optimizer = make_head_and_optimizer("adam")
    save_sharded(tmp_path, head)  # the weight alone
    with pytest.raises(ValueError, match=r"classes-0-11\.pt holds no optimizer state"):
        load_sharded(tmp_path, head, optimizer)
    assert optimizer.state[head.weight] == {}  # nothing half-loaded


def test_the_training_entry_point_resumes_exactly_at_the_same_world_size(tmp_path, monkeypatch):
    """Backbone, its optimizer state, the head's rows and momentum and its sampling step all
    come back: 3 + 3 steps equal 6 steps, with Partial FC sampling on."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    whole = train(parse_args([*TRAIN, "--steps", "6", "--save", str(tmp_path / "whole")]))
    train(parse_args([*TRAIN, "--steps", "3", "--save", str(tmp_path / "half")]))
    rest = train(parse_args([*TRAIN, "--steps", "6", "--resume", str(tmp_path / "half"),
                             "--save", str(tmp_path / "resumed")]))
    assert rest == pytest.approx(whole[3:], rel=1e-6)
    torch.testing.assert_close(load_full(tmp_path / "resumed"), load_full(tmp_path / "whole"),
                               rtol=1e-6, atol=1e-9)
    saved = [load_trainer_state(tmp_path / d) for d in ("resumed", "whole")]
    assert saved[0]["step"] == saved[1]["step"] == 6
    for key, value in saved[1]["backbone"].items():
        torch.testing.assert_close(saved[0]["backbone"][key], value, rtol=1e-6, atol=1e-9)


def test_a_two_rank_training_checkpoint_resumes_in_one_process(out, monkeypatch):
    """2 ranks (DDP backbone) -> 1 process: resume, then save at once: the same checkpoint,
    with the head's momentum rows joined into one shard."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert train(parse_args([*TRAIN, "--steps", "3", "--resume", str(out / "train-by-2"),
                             "--save", str(out / "train-by-1")])) == []
    by_2, by_1 = (committed_save(out / name)["folder"] for name in ("train-by-2", "train-by-1"))
    first, second, trainer_2 = (torch.load(by_2 / f, weights_only=True)
                                for f in ("classes-0-20.pt", "classes-20-40.pt", "trainer.pt"))
    shard, trainer = (torch.load(by_1 / f, weights_only=True)
                      for f in ("classes-0-40.pt", "trainer.pt"))
    assert torch.equal(shard["weight"], torch.cat([first["weight"], second["weight"]]))
    momentum = [r["optimizer"]["rows"]["momentum_buffer"] for r in (shard, first, second)]
    assert torch.equal(momentum[0], torch.cat(momentum[1:]))
    assert shard["step"] == first["step"] == 3  # Partial FC's sampling step
    assert trainer["step"] == 3 and len(trainer["optimizer"]["state"]) == 4  # the backbone's
    for key, value in trainer_2["backbone"].items():
        assert torch.equal(trainer["backbone"][key], value)
    for index, value in trainer_2["optimizer"]["state"].items():
        assert torch.equal(trainer["optimizer"]["state"][index]["momentum_buffer"],
                           value["momentum_buffer"])
