"""Edge cases of the class-sharded per-sample heads (AdaFacePartialFC, MagFacePartialFC,
ElasticArcFacePartialFC, ElasticCosFacePartialFC), as a user training them would hit them.
The cases that every sharded head with a rule of its own shares (world size 1 against the
single head, bfloat16 and autocast, margin schedules and bad margins, constructor errors,
repr, checkpoints, the entry point's resume) are in test_distributed_heads_common.py.

World size 1 (no process group) runs against the single-device heads; the multi-rank cases
run in ONE spawn of 3 gloo ranks (module fixture) and are compared here with the
single-device heads on the global batch. Tests marked ``# Was a defect`` failed on
the code before their fix.
"""

from __future__ import annotations

import math
import os
import time
import zlib
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_processes import free_port
from sharded_heads import (
    DIM,
    TOL64,
    assert_states_equal,
    batch,
    full_weight,
    rows_of,
    sgd,
    sharded,
    single,
    state_of,
    step,
)
from torch import nn

from margin_softmax.distributed import class_range, load_sharded, save_sharded
from margin_softmax.scheduler import MarginScheduler

NAMES = ["adaface", "magface", "elastic_arc", "elastic_cos"]


# ---------------------------------------------------------------- world size 1


@pytest.mark.parametrize("name", NAMES)
def test_eval_and_no_grad_evaluation_leave_the_running_state_alone(name):
    weight = full_weight(2, 13)
    head = sharded(name, weight, sample_rate=0.5)
    step(head, *batch(20, 9, 13))  # move the EMAs and the generator away from their start
    before = {**state_of(head), "step": head.step.clone()}
    x, labels = batch(21, 9, 13)
    head.eval()
    with torch.no_grad():
        quiet = head(x, labels)
    loud = head(x, labels)
    assert head.sampled_rows is None  # eval mode samples nothing
    assert_states_equal({**state_of(head), "step": head.step}, before)
    assert quiet.item() == loud.item()
    reference = single(name, weight)
    reference.load_state_dict({"weight": weight, **state_of(head)})
    assert loud.item() == pytest.approx(step(reference, x, labels, "eval")[0], rel=1e-12)


# Was a defect (fixed): l_margin scheduled above u_margin raises an error that names u_margin only
def test_magface_l_margin_scheduled_above_u_margin_names_l_margin():
    head = sharded("magface", full_weight(6, 13))
    MarginScheduler(head, iterations_per_epoch=1, increase_start_epoch=1, fix_start_epoch=1,
                    initial_margin=0.9, final_margin=0.9, attribute="l_margin")
    with pytest.raises(ValueError, match="l_margin"):
        head(*batch(61, 9, 13))


@pytest.mark.parametrize("dtype,row_scale", [(torch.float64, 0.0), (torch.float32, 1e-30),
                                             (torch.float32, 1e25)])
@pytest.mark.parametrize("name", NAMES)
def test_zero_tiny_and_huge_norms_equal_the_single_head(name, dtype, row_scale):
    weight = full_weight(8, 13).to(dtype)
    x, labels = batch(80, 9, 13, dtype)
    x[1] *= row_scale
    found = step(sharded(name, weight, dtype), x, labels)
    expected = step(single(name, weight, dtype), x, labels)
    assert math.isfinite(found[0])
    assert found[0] == pytest.approx(expected[0], rel=1e-5)
    for a, b in zip(found[1:], expected[1:], strict=True):
        assert torch.isfinite(a).all()
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


BAD_INPUTS = [  # (embeddings, labels, error, words in the message)
    (torch.randn(3, DIM), torch.tensor([0, 1, 13]), ValueError, "got label 13"),
    (torch.randn(3, DIM), torch.tensor([0, -1, 2]), ValueError, "got label -1"),
    (torch.full((3, DIM), math.nan), torch.tensor([0, 1, 2]), ValueError, "non-finite"),
    (torch.randn(3, DIM).double(), torch.tensor([0, 1, 2]), TypeError, "dtype"),
    (torch.randn(3, DIM + 1), torch.tensor([0, 1, 2]), ValueError, "embedding_dim=6"),
    (torch.randn(3, DIM), torch.tensor([0, 1]), ValueError, "shape"),
    (torch.randn(3, DIM), torch.tensor([0.0, 1, 2]), TypeError, "integer"),
    (torch.randn(DIM), torch.tensor([0]), ValueError, "2-D"),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("x,labels,error,words", BAD_INPUTS)
def test_bad_input_is_a_clear_error(name, x, labels, error, words):
    head = sharded(name, full_weight(9, 13), torch.float32)
    with pytest.raises(error, match=words):
        head(x, labels)


@pytest.mark.parametrize("name", NAMES)
def test_an_empty_global_batch_is_a_zero_loss_that_moves_nothing(name):
    head = sharded(name, full_weight(9, 13), sample_rate=0.5)
    before = {**state_of(head), "step": head.step.clone()}
    x = torch.zeros(0, DIM, dtype=torch.float64, requires_grad=True)
    loss = head(x, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0 and torch.count_nonzero(head.weight.grad) == 0
    assert_states_equal({**state_of(head), "step": head.step}, before)


@pytest.mark.parametrize("name", NAMES)
def test_sampled_rows_optimizer_leaves_the_rows_not_sampled_alone(name):
    head = sharded(name, full_weight(10, 40), sample_rate=0.25)
    optimizer = sgd(head)
    for k in range(3):
        x, labels = batch(100 + k, 6, 40)
        before = head.weight.detach().clone()
        optimizer.zero_grad()
        head(x, labels).backward()
        optimizer.step()
        others = torch.ones(40, dtype=torch.bool)
        others[head.sampled_rows] = False
        assert 0 < len(head.sampled_rows) < 40 and set(labels.tolist()) <= set(
            head.sampled_rows.tolist())
        assert torch.equal(head.weight.detach()[others], before[others])
        assert not torch.equal(head.weight.detach(), before)
    assert int(head.step) == 3


@pytest.mark.parametrize("name", NAMES)
def test_a_state_dict_round_trip_continues_the_same_run(name):
    weight = full_weight(14, 13)
    ours, theirs = sharded(name, weight, sample_rate=0.5), single(name, weight)
    for k in range(2):
        step(ours, *batch(140 + k, 9, 13))
        step(theirs, *batch(140 + k, 9, 13))
    copy = sharded(name, torch.zeros_like(weight), sample_rate=0.5)
    copy.load_state_dict(ours.state_dict())
    x, labels = batch(142, 9, 13)
    assert step(copy, x, labels)[0] == step(ours, x, labels)[0]
    assert_states_equal(state_of(copy), state_of(ours))
    step(theirs, x, labels)  # the single head took the same three steps without sampling
    assert_states_equal(state_of(copy), state_of(theirs))


# ---------------------------------------------------------------- 3 gloo ranks

WORLD = 3
FEW_CLASSES = 2  # fewer classes than ranks: rank 2 owns none
SIZES = [2, 3, 1]
MODES = ("train", "train", "eval")


def global_steps(name: str, num_classes: int, sizes: list[int]):
    seed = zlib.crc32(name.encode())
    return [batch(seed + k, sum(sizes), num_classes) for k in range(len(MODES))]


def run_steps(head, data, sizes, rank):
    out = []
    for mode, (x, labels) in zip(MODES, data, strict=True):
        mine = rows_of(sizes, rank)
        loss, x_grad, w_grad = step(head, x[mine], labels[mine], mode)
        out.append((loss, x_grad, w_grad))
    return {"steps": out, "state": state_of(head)}


def attempt(function):
    """(error type or "ok", message or result, seconds)."""
    begin = time.perf_counter()
    try:
        result = function()
    except Exception as error:  # every kind: the test checks which
        return type(error).__name__, str(error), time.perf_counter() - begin
    return "ok", result, time.perf_counter() - begin


def ddp_gradients(name: str, rank: int) -> dict:
    weight = full_weight(20, 11)
    x, labels = batch(21, 7, 11)
    torch.manual_seed(0)
    backbone = nn.parallel.DistributedDataParallel(nn.Linear(DIM, DIM).double())
    mine = rows_of([3, 0, 4], rank)
    sharded(name, weight)(backbone(x[mine]), labels[mine]).backward()
    return {"weight": backbone.module.weight.grad, "bias": backbone.module.bias.grad}


def one_rank_errors(rank: int) -> dict:
    weight = full_weight(22, 11)
    x, labels = batch(23, 6, 11)
    mine = rows_of([2, 2, 2], rank)
    cases = {}
    for case, bad_rank in (("nan", 1), ("label", 2), ("dtype", 0), ("no_grad", 1)):
        xs, ys = x[mine].clone(), labels[mine].clone()
        if rank == bad_rank:
            if case == "nan":
                xs[0, 0] = math.nan
            elif case == "label":
                ys[0] = 11
            elif case == "dtype":
                xs = xs.float()
        head = sharded("adaface", weight)

        def forward(head=head, xs=xs, ys=ys, case=case):
            if case == "no_grad" and rank == 1:
                with torch.no_grad():
                    return head(xs.requires_grad_(), ys).item()
            return head(xs.requires_grad_(), ys).item()

        cases[case] = attempt(forward)
    return cases


def disagreements(rank: int) -> dict:
    """A checkpoint, a scheduler, eval mode, a NaN weight on one rank only."""
    weight = full_weight(24, 11)
    x, labels = batch(25, 6, 11)
    mine = rows_of([2, 2, 2], rank)
    cases = {}
    head = sharded("adaface", weight)
    if rank == 1:
        head.load_state_dict({**head.state_dict(),
                              "batch_mean": torch.tensor(21.0, dtype=torch.float64)})
    cases["load_state_dict"] = attempt(lambda: head(x[mine], labels[mine]).item())
    head = sharded("magface", weight)
    if rank == 2:
        MarginScheduler(head, iterations_per_epoch=1, increase_start_epoch=1,
                        fix_start_epoch=2, initial_margin=0.5, attribute="l_margin")
    cases["scheduler"] = attempt(lambda: head(x[mine], labels[mine]).item())
    head = sharded("elastic_cos", weight).train(rank != 0)
    cases["eval"] = attempt(lambda: head(x[mine], labels[mine]).item())
    head = sharded("adaface", weight)
    if rank == 1:
        with torch.no_grad():
            head.weight[0, 0] = math.nan
    cases["nan_weight"] = attempt(lambda: head(x[mine], labels[mine]).item())
    return cases


def sampled_training(rank: int, out: str) -> dict:
    """ElasticFace-Cos with Partial FC sampling under SampledRowsOptimizer, 2 steps, then a
    checkpoint with the optimizer state."""
    weight = full_weight(26, 25)
    head = sharded("elastic_cos", weight, sample_rate=0.3)
    optimizer = sgd(head)
    sizes, moved_outside = [3, 2, 4], []
    for k in range(2):
        x, labels = batch(27 + k, sum(sizes), 25)
        before = head.weight.detach().clone()
        optimizer.zero_grad()
        head(x[rows_of(sizes, rank)], labels[rows_of(sizes, rank)]).backward()
        optimizer.step()
        others = torch.ones(head.weight.shape[0], dtype=torch.bool)
        others[head.sampled_rows] = False
        moved_outside.append(not torch.equal(head.weight.detach()[others], before[others]))
    save_sharded(f"{out}/sampled", head, optimizer)
    momentum = optimizer.state[head.weight]["momentum_buffer"].clone()
    return {"moved_outside": moved_outside, "weight": head.weight.detach().clone(),
            "momentum": momentum, "state": state_of(head), "start": head.start}


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=30))
    short = dist.new_group(backend="gloo", timeout=timedelta(seconds=3))
    results = {"ddp": {name: ddp_gradients(name, rank) for name in ("adaface", "magface")}}
    weight = full_weight(30, FEW_CLASSES)
    results["few_classes"] = {
        name: run_steps(sharded(name, weight), global_steps(name, FEW_CLASSES, SIZES), SIZES,
                        rank) for name in NAMES}
    one = [0, 1, 0]  # a global batch of one sample: AdaFace's std stays
    results["one_sample"] = run_steps(sharded("adaface", full_weight(31, 11)),
                                      global_steps("one", 11, one), one, rank)
    results["errors"] = one_rank_errors(rank)
    results["disagree"] = disagreements(rank)
    results["sampled"] = sampled_training(rank, out)
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.barrier()
    # a margin that only rank 2's scheduler made bad: the others wait in the loss's
    # all-gather until the group's timeout (3 s here)
    head = sharded("adaface", full_weight(32, 11), group=short)
    if rank == 2:
        head.margin = -0.1
    x, labels = batch(33, 6, 11)
    late = {"bad_margin": attempt(lambda: head(x[rows_of([2, 2, 2], rank)],
                                               labels[rows_of([2, 2, 2], rank)]).item())}
    torch.save(late, f"{out}/late{rank}.pt")
    dist.barrier()
    # last: heads of different dtypes (.double() on ranks 0 and 1 only) abort gloo in C++
    head = sharded("magface", full_weight(34, 11), torch.float64 if rank < 2 else torch.float32)
    x = x.to(head.weight.dtype)
    result = attempt(lambda: head(x[rows_of([2, 2, 2], rank)],
                                  labels[rows_of([2, 2, 2], rank)]).item())
    torch.save(result, f"{out}/dtype{rank}.pt")
    try:
        dist.barrier()
        dist.destroy_process_group()
    except RuntimeError:
        pass


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """One spawn of 3 gloo ranks. Exit codes are recorded, not asserted here: the last case
    (mismatched dtypes) kills a rank on the current code, after the other results are saved."""
    out = str(tmp_path_factory.mktemp("target_edges"))
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, WORLD, port, out)) for r in range(WORLD)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()

    def load(prefix: str):
        paths = [f"{out}/{prefix}{r}.pt" for r in range(WORLD)]
        return [torch.load(p, weights_only=False) if os.path.exists(p) else None
                for p in paths]

    return {"main": load("rank"), "late": load("late"), "dtype": load("dtype"),
            "exit_codes": [p.exitcode for p in procs], "out": out}


def main_results(ranks) -> list[dict]:
    assert all(r is not None for r in ranks["main"]), ranks["exit_codes"]
    return ranks["main"]


@pytest.mark.parametrize("name", ["adaface", "magface"])
def test_ddp_backbone_gets_the_global_mean_gradient(ranks, name):
    weight = full_weight(20, 11)
    x, labels = batch(21, 7, 11)
    torch.manual_seed(0)
    backbone = nn.Linear(DIM, DIM).double()
    single(name, weight)(backbone(x), labels).backward()
    for result in main_results(ranks):
        torch.testing.assert_close(result["ddp"][name]["weight"], backbone.weight.grad, **TOL64)
        torch.testing.assert_close(result["ddp"][name]["bias"], backbone.bias.grad, **TOL64)


def check_steps(results, name, weight, data, sizes):
    reference = single(name, weight)
    expected = [step(reference, x, labels, mode)
                for mode, (x, labels) in zip(MODES, data, strict=True)]
    for rank, result in enumerate(results):
        start, stop = class_range(weight.shape[0], WORLD, rank)
        for k, (loss, x_grad, w_grad) in enumerate(expected):
            found = result["steps"][k]
            assert found[0] == pytest.approx(loss, rel=1e-12), (rank, k)
            torch.testing.assert_close(found[1] / WORLD, x_grad[rows_of(sizes, rank)], **TOL64)
            torch.testing.assert_close(found[2], w_grad[start:stop], **TOL64)
        assert_states_equal(result["state"], state_of(reference))


@pytest.mark.parametrize("name", NAMES)
def test_more_ranks_than_classes_equal_the_single_head(ranks, name):
    results = [r["few_classes"][name] for r in main_results(ranks)]
    assert results[2]["steps"][0][2].shape == (0, DIM)  # rank 2 owns no class
    check_steps(results, name, full_weight(30, FEW_CLASSES),
                global_steps(name, FEW_CLASSES, SIZES), SIZES)


def test_a_global_batch_of_one_sample_equals_the_single_head(ranks):
    results = [r["one_sample"] for r in main_results(ranks)]
    check_steps(results, "adaface", full_weight(31, 11), global_steps("one", 11, [0, 1, 0]),
                [0, 1, 0])
    assert results[0]["state"]["batch_std"].item() == 100.0  # one sample has no std


@pytest.mark.parametrize("case,kind,words", [
    ("nan", "ValueError", "rank 1: embeddings contains non-finite"),
    ("label", "ValueError", "rank 2: labels must be in [0, 11), got label 11"),
    ("dtype", "TypeError", "rank 0: embeddings dtype torch.float32"),
    ("no_grad", "ValueError", "some ranks build an autograd graph"),
])
def test_bad_input_on_one_rank_is_the_same_error_on_every_rank(ranks, case, kind, words):
    for result in main_results(ranks):
        found, message, seconds = result["errors"][case]
        assert (found, words in message) == (kind, True), message
        assert seconds < 2.0


@pytest.mark.parametrize("case,words", [
    ("load_state_dict", "running state differs"),  # caught before any state moves
    ("scheduler", "l_margin [0.45, 0.45, 0.5]"),  # the handshake's agreement check
    ("eval", "training [False, True, True]"),
    ("nan_weight", "rank(s) [1]"),
])
def test_ranks_that_disagree_raise_the_same_value_error_on_every_rank(ranks, case, words):
    for result in main_results(ranks):
        found, message, seconds = result["disagree"][case]
        assert (found, words in message) == ("ValueError", True), message
        assert seconds < 2.0


def test_sampled_training_checkpoint_loads_into_one_process_with_its_momentum(ranks):
    results = [r["sampled"] for r in main_results(ranks)]
    assert not any(moved for r in results for moved in r["moved_outside"])
    head = sharded("elastic_cos", torch.zeros(25, DIM, dtype=torch.float64), sample_rate=0.3)
    optimizer = sgd(head)
    load_sharded(f"{ranks['out']}/sampled", head, optimizer)
    assert torch.equal(head.weight.detach(), torch.cat([r["weight"] for r in results]))
    assert torch.equal(optimizer.state[head.weight]["momentum_buffer"],
                       torch.cat([r["momentum"] for r in results]))
    assert int(head.step) == 2
    for result in results:
        assert_states_equal(result["state"], state_of(head))


# Was a defect (fixed): a bad margin on one rank only: that rank raises, the others hang until the
# timeout
def test_a_bad_margin_on_one_rank_is_a_value_error_on_every_rank(ranks):
    late = ranks["late"]
    assert all(r is not None for r in late), ranks["exit_codes"]
    for rank, result in enumerate(late):
        found, message, seconds = result["bad_margin"]
        assert (found, "margin" in message) == ("ValueError", True), (rank, message)
        assert seconds < 2.0, (rank, seconds)


# Was a defect (fixed): heads of different dtypes on different ranks abort gloo (SIGABRT) in the
# all-gather
def test_heads_of_different_dtypes_are_a_value_error_on_every_rank(ranks):
    assert ranks["exit_codes"] == [0] * WORLD
    for rank, result in enumerate(ranks["dtype"]):
        assert result is not None, rank
        found, message, _ = result
        assert (found, "dtype" in message) == ("ValueError", True), (rank, message)
