"""Edge cases of the class-sharded CurricularFacePartialFC, AdaCosPartialFC and
SubCenterArcFacePartialFC, as a user training them would hit them. The cases that every
sharded head with a rule of its own shares (world size 1 against the single head, bfloat16
and autocast, margin schedules and bad margins, constructor errors, repr, checkpoints, the
entry point's resume) are in test_distributed_heads_common.py.

World size 1 (no process group) runs against the single-device heads (ms.CurricularFace,
ms.AdaCos, ms.SubCenterArcFace without its top-k penalty), PartialFC and float64
references. The multi-rank cases run in one spawn of 2 gloo ranks, then one of 3 (the
module fixture), and are compared here with the single-device heads on the global batch.
Tests marked ``# Was a defect`` failed on the code before their fix.
"""

from __future__ import annotations

import math
import os
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from gloo_processes import run_ranks
from sharded_heads import (
    DIM,
    TOL64,
    K,
    assert_states_equal,
    assert_steps_equal,
    batch,
    full_weight,
    rows_of,
    rows_per_class,
    sgd,
    sharded,
    single,
    state_of,
    step,
)

import margin_softmax as ms
from margin_softmax.distributed import (
    AdaCosPartialFC,
    ArcFacePartialFC,
    CurricularFacePartialFC,
    PartialFC,
    SubCenterArcFacePartialFC,
    class_range,
    load_full,
    load_sharded,
    save_sharded,
)
from margin_softmax.distributed.train import main

NAMES = ["curricularface", "adacos", "subcenter"]


# ---------------------------------------------------------------- world size 1


@pytest.mark.parametrize("seed", [0, 2])
def test_adacos_autocast_loss_is_no_less_accurate_than_the_single_chunked_head(seed):
    """Eval mode (the scale does not move), CPU bfloat16 autocast: ms.AdaCos takes its target
    cosine from the bfloat16 matmul like every other cell; AdaCosPartialFC takes it from
    float32 target_cosines (as the other sharded heads and TargetLogitHead do), so the two
    round differently (2e-4 apart here). The project's half-precision rule: the error
    against float64 on the same rounded inputs is no worse than the single head's + eps/4."""
    weight = full_weight(seed, 13).float()
    ours = sharded("adacos", weight, torch.float32).eval()
    theirs = single("adacos", weight, torch.float32, impl="chunked").eval()
    x, labels = batch(30 + seed, 9, 13, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        found, expected = ours(x, labels), theirs(x, labels)
    exact = single("adacos", weight.to(torch.bfloat16).double(), torch.float64).eval()
    exact.scale = theirs.scale
    truth = exact(x.to(torch.bfloat16).double(), labels).item()
    assert found.dtype == torch.float32
    error, reference_error = abs(found.item() - truth), abs(expected.item() - truth)
    assert error <= reference_error + torch.finfo(torch.bfloat16).eps / 4 * abs(truth)


def adacos_reference_scale(weight, x, labels, scale: float) -> float:
    """ms.AdaCos's update in float64 on the bfloat16-rounded rows and weight."""
    head = ms.AdaCos(DIM, weight.shape[0], scale=scale, impl="eager").double()
    with torch.no_grad():
        head.weight.copy_(weight.to(torch.bfloat16).double())
    head(x.to(torch.bfloat16).double(), labels)
    return head.scale


# Was a defect (fixed): AdaCosPartialFC's scale update runs bfloat16 matmuls (unit rows rounded): up
# to 3e-4 off
@pytest.mark.parametrize("how", ["autocast", "bfloat16_head"])
def test_adacos_scale_update_is_float32_accurate_for_bfloat16_inputs(how):
    """The scale is a float64 running state; a bfloat16 ms.AdaCos updates it in float32
    (1e-7 from the float64 value). AdaCosPartialFC's shard_logsumexp casts the unit rows to
    the weight's bfloat16 for the matmul, and the error stays in the scale for good."""
    for seed in range(4):
        weight = full_weight(seed, 13).float()
        x, labels = batch(30 + seed, 9, 13, torch.float32)
        expected = adacos_reference_scale(weight, x, labels, AdaCosPartialFC.fixed_scale(13))
        if how == "autocast":
            head = sharded("adacos", weight, torch.float32)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                head(x, labels)
        else:
            head = sharded("adacos", weight.to(torch.bfloat16), torch.bfloat16)
            head(x.to(torch.bfloat16), labels)
        assert head.scale == pytest.approx(expected, rel=1e-5), seed


@pytest.mark.parametrize("margin", [0.5, 0.0, 2.9])
@pytest.mark.parametrize("fallback", ["seed", "none", "continuous", "easy"])
def test_one_sub_centre_is_arcface_partial_fc(fallback, margin):
    weight = full_weight(7, 13)
    heads = [SubCenterArcFacePartialFC(DIM, 13, sub_centers=1, margin=margin,
                                       fallback=fallback),
             ArcFacePartialFC(DIM, 13, margin=margin, fallback=fallback),
             PartialFC(DIM, 13, m2=margin, fallback=fallback if margin else "none")]
    x, labels = batch(70, 9, 13)
    results = []
    for head in heads:
        head.double().weight.data.copy_(weight)
        results.append(step(head, x, labels))
    for found in results[:2]:
        assert_steps_equal(found, results[2], {"atol": 1e-9, "rtol": 1e-12})


@pytest.mark.parametrize("sub_centers,block_size", [(16, 2), (40, None)])
def test_many_sub_centres_equal_the_single_head(sub_centers, block_size):
    weight = full_weight(8, 7 * sub_centers)
    ours = SubCenterArcFacePartialFC(DIM, 7, sub_centers=sub_centers,
                                     block_size=block_size).double()
    theirs = ms.SubCenterArcFace(DIM, 7, sub_centers=sub_centers, impl="eager").double()
    for head in (ours, theirs):
        head.weight.data.copy_(weight)
    x, labels = batch(80, 9, 7)
    assert_steps_equal(step(ours, x, labels), step(theirs, x, labels), TOL64)


def test_tied_sub_centres_send_the_gradient_to_the_first_as_the_single_head():
    """Each class's K rows are the same direction (two of them scaled): every cosine ties;
    the gradient goes to sub-centre 0 only, in both heads."""
    weight = full_weight(9, 13).repeat_interleave(K, 0)  # (C K, D)
    weight[1::K] *= 2.0
    weight[2::K] *= 0.5
    ours, theirs = sharded("subcenter", weight), single("subcenter", weight)
    x, labels = batch(90, 9, 13)
    found, expected = step(ours, x, labels), step(theirs, x, labels)
    assert_steps_equal(found, expected, TOL64)
    per_row = found[2].view(13, K, DIM).abs().sum(2)  # (C, K)
    assert torch.count_nonzero(per_row[:, 1:]) == 0 and torch.count_nonzero(per_row[:, 0]) == 13


def test_adacos_keeps_a_given_scale_with_dynamic_false_even_when_sampling():
    head = sharded("adacos", full_weight(10, 13), scale=7.0, dynamic=False, sample_rate=0.5)
    theirs = single("adacos", full_weight(10, 13), scale=7.0, dynamic=False)
    for k in range(3):
        x, labels = batch(100 + k, 9, 13)
        assert math.isfinite(step(head, x, labels)[0])
        step(theirs, x, labels)
        assert len(head.sampled_rows) < 13
    assert head.scale == theirs.scale == 7.0 and int(head.step) == 3


def test_adacos_from_a_given_scale_moves_like_the_single_head():
    weight = full_weight(11, 13)
    ours, theirs = sharded("adacos", weight, scale=5.0), single("adacos", weight, scale=5.0)
    for k in range(3):
        x, labels = batch(110 + k, 9, 13)
        assert_steps_equal(step(ours, x, labels), step(theirs, x, labels), TOL64)
    assert ours.scale != 5.0
    assert_states_equal(state_of(ours), state_of(theirs))


@pytest.mark.parametrize("scale", [None, 5.0, 50.0])
def test_adacos_keeps_its_scale_when_the_update_is_not_positive(scale):
    """C = 3, every non-target at cos = -1: B_avg = 2 exp(-s) < 1 for s > log 2, so
    log(B_avg) / cos(theta_med) <= 0 and the scale must stay."""
    weight = torch.zeros(3, DIM, dtype=torch.float64)
    weight[0, 0], weight[1, 0], weight[2, 0] = 1.0, -1.0, -1.0
    weight[2, 1] = 1e-3
    ours, theirs = sharded("adacos", weight, scale=scale), single("adacos", weight, scale=scale)
    start = ours.scale
    x = torch.zeros(4, DIM, dtype=torch.float64)
    x[:, 0] = 3.0
    labels = torch.zeros(4, dtype=torch.long)
    found, expected = step(ours, x, labels), step(theirs, x, labels)
    assert math.isfinite(found[0]) and found[0] == pytest.approx(expected[0], abs=1e-12)
    assert start > math.log(2) and ours.scale == theirs.scale == start


# Was a defect (fixed): an AdaCos update beyond check_scale's bound (10000) raises ValueError from
# the forward
def test_adacos_update_past_the_scale_bound_does_not_break_the_forward():
    """set_dynamic_scale keeps the scale for a non-finite or non-positive update, but an
    update above 10000 goes to the scale setter, whose check_scale raises mid-forward."""
    head = sharded("adacos", full_weight(12, 13).float(), torch.float32, scale=9999.0)
    loss = head(*batch(5, 9, 13, torch.float32))
    assert math.isfinite(loss.item()) and 0 < head.scale <= 10000


def test_adacos_refuses_dynamic_with_sampling_and_needs_three_classes():
    with pytest.raises(ValueError, match=r"sample_rate=0.5.*dynamic=False"):
        AdaCosPartialFC(DIM, 13, sample_rate=0.5)
    with pytest.raises(ValueError, match="num_classes must be >= 3"):
        AdaCosPartialFC(DIM, 2)
    assert AdaCosPartialFC(DIM, 3).scale == pytest.approx(math.sqrt(2) * math.log(2))


# Was a defect (fixed): AdaCosPartialFC(dynamic="False") (a config string) is taken as True, no
# TypeError
def test_adacos_dynamic_must_be_a_bool():
    with pytest.raises(TypeError, match="dynamic"):
        AdaCosPartialFC(DIM, 13, dynamic="False")


def test_curricularface_has_no_triton_path_and_any_block_size_equals_the_single_head():
    with pytest.raises(ValueError, match="no Triton path"):
        CurricularFacePartialFC(DIM, 13, impl="triton")
    weight = full_weight(13, 13)
    ours = sharded("curricularface", weight, impl="chunked", block_size=1)
    theirs = single("curricularface", weight)
    for k in range(3):
        x, labels = batch(130 + k, 9, 13)
        assert_steps_equal(step(ours, x, labels), step(theirs, x, labels), TOL64)


def test_sub_centre_sampling_keeps_whole_classes_and_the_others_rows_alone():
    head = sharded("subcenter", full_weight(14, 40, "subcenter"), sample_rate=0.25)
    optimizer = sgd(head)
    for k in range(3):
        x, labels = batch(140 + k, 6, 40)
        before = head.weight.detach().clone()
        optimizer.zero_grad()
        head(x, labels).backward()
        optimizer.step()
        rows = head.sampled_rows
        classes = rows[::K] // K
        assert torch.equal(rows, (classes[:, None] * K + torch.arange(K)).view(-1))
        assert 0 < len(classes) < 40 and set(labels.tolist()) <= set(classes.tolist())
        others = torch.ones(40 * K, dtype=torch.bool)
        others[rows] = False
        assert torch.equal(head.weight.detach()[others], before[others])
        assert not torch.equal(head.weight.detach()[rows], before[rows])
    assert int(head.step) == 3


# Was a defect (fixed): gradient accumulation skips sampled sub-centres that won no cell (zero
# gradient)
def test_gradient_accumulation_steps_every_sampled_sub_centre():
    """SampledRowsOptimizer steps the last sample plus the rows with a non-zero gradient.
    A sampled class's sub-centres that are nobody's best get an exactly zero gradient, so
    those of an earlier micro-batch's sample get no weight decay or momentum step, unlike
    the same rows in a step without accumulation (every sampled row moves)."""
    head = sharded("subcenter", full_weight(3, 40, "subcenter"), sample_rate=0.25)
    optimizer = sgd(head)
    optimizer.zero_grad()
    sampled = torch.zeros(40 * K, dtype=torch.bool)
    for k in range(2):
        head(*batch(200 + k, 6, 40)).backward()
        sampled[head.sampled_rows] = True
    before = head.weight.detach().clone()
    optimizer.step()
    moved = (head.weight.detach() != before).any(1)  # (C K,)
    assert torch.equal(moved, sampled)


TRAIN = ["--classes", "40", "--batch-size", "8", "--embedding-dim", "16", "--input-dim", "8",
         "--log-every", "100"]


def test_the_entry_point_refuses_adacos_with_sampling_in_one_line(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main([*TRAIN, "--loss", "adacos", "--sample-rate", "0.5", "--steps", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sample_rate=0.5" in err[0], err


# ---------------------------------------------------------------- 2, then 3 gloo ranks

MODES = ("train", "train", "eval")
SUB = {"classes": 13, "sample_rate": 0.4, "sizes": [4, 3]}  # saved by 2 ranks, loaded by 3
FEW = {  # few classes for 3 ranks: name -> (classes, batch size of each rank)
    "curricularface": (2, [2, 3, 1]),
    "subcenter": (2, [3, 0, 3]),  # rank 1 holds no sample, rank 2 no class
    "adacos": (3, [2, 0, 3]),  # rank 1 holds no sample
}


def few_data(name: str):
    classes, sizes = FEW[name]
    return full_weight(20, classes, name), [batch(21 + k, sum(sizes), classes)
                                            for k in range(len(MODES))]


def hard_data():
    """CurricularFace with momentum 0.9 (t ~ 0.75 after one step), rows near their class
    centres: hard negatives (cos_ij > cos(theta_iy + m)) in every rank's block."""
    weight = full_weight(22, 12)
    g = torch.Generator().manual_seed(23)
    data = []
    for _ in MODES:
        labels = torch.randint(0, 12, (9,), generator=g)
        noise = 0.3 * torch.randn(9, DIM, generator=g, dtype=torch.float64)
        data.append(((torch.nn.functional.normalize(weight, dim=1)[labels] + noise) * 10,
                     labels))
    return weight, data


def run_steps(head, data, sizes, rank):
    out = [step(head, x[rows_of(sizes, rank)], labels[rows_of(sizes, rank)], mode)
           for mode, (x, labels) in zip(MODES, data, strict=True)]
    return {"steps": out, "state": state_of(head)}


def attempt(function):
    """(error type or "ok", message or result, seconds)."""
    begin = time.perf_counter()
    try:
        result = function()
    except Exception as error:  # every kind: the test checks which
        return type(error).__name__, str(error), time.perf_counter() - begin
    return "ok", result, time.perf_counter() - begin


def train_sub(head, optimizer, data, rank):
    """Sampled sub-centre steps: losses and, per step, whether a row not sampled moved."""
    losses, moved = [], []
    for x, labels in data:
        before = head.weight.detach().clone()
        optimizer.zero_grad()
        loss = head(x[rows_of(SUB["sizes"], rank)], labels[rows_of(SUB["sizes"], rank)])
        loss.backward()
        optimizer.step()
        others = torch.ones(head.weight.shape[0], dtype=torch.bool)
        others[head.sampled_rows] = False
        moved.append(not torch.equal(head.weight.detach()[others], before[others]))
        losses.append(loss.item())
    return losses, moved


def sub_steps():
    weight = full_weight(24, SUB["classes"], "subcenter")
    return weight, [batch(25 + k, sum(SUB["sizes"]), SUB["classes"]) for k in range(4)]


def two_ranks(rank: int, out: str) -> dict:
    """4 sampled sub-centre steps in one go, and 2 + save_sharded + load_sharded + 2."""
    weight, data = sub_steps()
    whole = sharded("subcenter", weight, sample_rate=SUB["sample_rate"])
    in_one_go = train_sub(whole, sgd(whole), data, rank)
    first = sharded("subcenter", weight, sample_rate=SUB["sample_rate"])
    first_optimizer = sgd(first)
    train_sub(first, first_optimizer, data[:2], rank)
    save_sharded(f"{out}/sub2", first, first_optimizer)
    resumed = sharded("subcenter", torch.zeros_like(weight), sample_rate=SUB["sample_rate"])
    optimizer = sgd(resumed)
    load_sharded(f"{out}/sub2", resumed, optimizer)
    rest = train_sub(resumed, optimizer, data[2:], rank)
    return {"whole": in_one_go, "rest": rest, "whole_weight": whole.weight.detach().clone(),
            "rest_weight": resumed.weight.detach().clone(),
            "saved_weight": first.weight.detach().clone(),
            "saved_momentum": first_optimizer.state[first.weight]["momentum_buffer"].clone()}


def one_rank_errors(rank: int) -> dict:
    """Bad input or parameters on one rank: (result, state after) per case."""
    x, labels = batch(26, 6, 11)
    mine = rows_of([2, 2, 2], rank)
    cases = {}
    for case, name, bad_rank in (("label", "subcenter", 2), ("margin", "curricularface", 1),
                                 ("sub_margin", "subcenter", 0), ("nan", "adacos", 1)):
        sharding = {} if name == "adacos" else {"sample_rate": 0.5}
        head = sharded(name, full_weight(27, 11, name), **sharding)
        step(head, x[mine], labels[mine])  # the state away from its start
        xs, ys = x[mine].clone(), labels[mine].clone()
        if rank == bad_rank:
            if case == "label":
                ys[0] = 11
            elif case == "margin":
                head.margin = -0.1
            elif case == "sub_margin":
                head.margin = math.nan
            else:
                xs[0, 0] = math.nan
        before = {**state_of(head), "step": head.step.clone()}
        result = attempt(lambda head=head, xs=xs, ys=ys: head(xs, ys).item())
        after = {**state_of(head), "step": head.step}
        cases[case] = (*result, all(torch.equal(after[k], v) for k, v in before.items()))
    return cases


def disagreements(rank: int) -> dict:
    """The running state loaded on one rank only (a checkpoint or load_state_dict there)."""
    x, labels = batch(28, 6, 11)
    mine = rows_of([2, 2, 2], rank)
    cases = {}
    for case, name, key, value, mode in (
            ("curricular_t", "curricularface", "t", 0.4, "train"),
            ("adacos_train", "adacos", "adaptive_scale", 9.0, "train"),
            ("adacos_eval", "adacos", "adaptive_scale", 9.0, "eval")):
        head = sharded(name, full_weight(29, 11)).train(mode == "train")
        if rank == 1:
            head.load_state_dict({**head.state_dict(),
                                  key: torch.tensor(value, dtype=torch.float64)})
        cases[case] = attempt(lambda head=head: [head(x[mine], labels[mine]).item()
                                                 for _ in range(2)])
    return cases


def three_ranks(rank: int, out: str) -> dict:
    results = {"few": {name: run_steps(sharded(name, few_data(name)[0]), few_data(name)[1],
                                       FEW[name][1], rank) for name in FEW}}
    weight, data = hard_data()
    results["hard"] = run_steps(sharded("curricularface", weight, momentum=0.9), data,
                                [3, 3, 3], rank)
    results["errors"] = one_rank_errors(rank)
    results["disagree"] = disagreements(rank)
    head = sharded("subcenter", torch.zeros_like(sub_steps()[0]),
                   sample_rate=SUB["sample_rate"])
    optimizer = sgd(head)
    load_sharded(f"{out}/sub2", head, optimizer)
    results["loaded"] = {"weight": head.weight.detach().clone(), "step": int(head.step),
                         "momentum": optimizer.state[head.weight]["momentum_buffer"].clone(),
                         "start": head.start}
    return results


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=30))
    results = two_ranks(rank, out) if world == 2 else three_ranks(rank, out)
    torch.save(results, f"{out}/world{world}-rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("more_heads"))
    found = {"out": out}
    for world in (2, 3):
        run_ranks(worker, world, out, timeout=90.0)
        found[world] = [torch.load(f"{out}/world{world}-rank{r}.pt", weights_only=False)
                        for r in range(world)]
    return found


def reference_steps(name: str, weight, data, **keywords):
    head = single(name, weight, **keywords)
    out = [step(head, x, labels, mode) for mode, (x, labels) in zip(MODES, data, strict=True)]
    return out, state_of(head)


def check_steps(results, name, weight, data, sizes, **keywords):
    expected, state = reference_steps(name, weight, data, **keywords)
    world, k = len(results), rows_per_class(name)
    for rank, result in enumerate(results):
        start, stop = class_range(weight.shape[0] // k, world, rank)
        for n, (loss, x_grad, w_grad) in enumerate(expected):
            found = result["steps"][n]
            assert found[0] == pytest.approx(loss, rel=1e-12), (rank, n)
            torch.testing.assert_close(found[1] / world, x_grad[rows_of(sizes, rank)], **TOL64)
            torch.testing.assert_close(found[2], w_grad[start * k : stop * k], **TOL64)
        assert_states_equal(result["state"], state)
        for key, value in result["state"].items():  # the same bits on every rank
            assert torch.equal(value, results[0]["state"][key]), (rank, key)


@pytest.mark.parametrize("name", NAMES)
def test_as_many_or_more_ranks_than_classes_equal_the_single_head(ranks, name):
    """C = 2 on 3 ranks (one owns no class); AdaCos (C >= 3): one class per rank, and a
    rank with no sample."""
    results = [r["few"][name] for r in ranks[3]]
    classes, sizes = FEW[name]
    owned = [b - a for a, b in (class_range(classes, 3, r) for r in range(3))]
    assert 0 in owned or (owned == [1, 1, 1] and 0 in sizes)
    weight, data = few_data(name)
    check_steps(results, name, weight, data, sizes)


def test_curricularface_hard_negatives_on_every_rank_equal_the_single_head(ranks):
    weight, data = hard_data()
    w_hat = torch.nn.functional.normalize(weight, dim=1)
    for x, labels in data:  # the premise: hard negatives in each rank's block
        cos = torch.nn.functional.normalize(x, dim=1) @ w_hat.t()  # (N, C)
        bar = torch.cos(torch.acos(cos.gather(1, labels[:, None])) + 0.5)  # (N, 1)
        hard = (cos > bar).scatter(1, labels[:, None], False)
        assert all(hard[:, a:b].any() for a, b in (class_range(12, 3, r) for r in range(3)))
    results = [r["hard"] for r in ranks[3]]
    check_steps(results, "curricularface", weight, data, [3, 3, 3], momentum=0.9)
    assert results[0]["state"]["t"] > 0.5


@pytest.mark.parametrize("case,kind,words", [
    ("label", "ValueError", "rank 2: labels must be in [0, 11), got label 11"),
    ("margin", "ValueError", "rank 1: margin must be"),
    ("sub_margin", "ValueError", "rank 0: margin must be"),
    ("nan", "ValueError", "rank 1: embeddings contains non-finite"),
])
def test_bad_input_on_one_rank_is_the_same_error_on_every_rank(ranks, case, kind, words):
    for rank, result in enumerate(ranks[3]):
        found, message, seconds, unmoved = result["errors"][case]
        assert (found, words in message) == (kind, True), (rank, message)
        assert seconds < 2.0 and unmoved, (rank, seconds, unmoved)


# Was a defect (fixed): CurricularFacePartialFC with t different on one rank trains on silently (t
# never agrees)
def test_curricularface_t_loaded_on_one_rank_only_is_a_value_error_on_every_rank(ranks):
    """t enters only the hard-negative transform, not the target logits that the loss checks
    across ranks, so each rank keeps re-weighting its shard with its own t, for good."""
    for rank, result in enumerate(ranks[3]):
        found, message, _ = result["disagree"]["curricular_t"]
        assert (found, "differ" in message) == ("ValueError", True), (rank, message)


# Was a defect (fixed): AdaCosPartialFC with its scale different on one rank trains on silently in
# training mode
def test_adacos_scale_loaded_on_one_rank_only_is_a_value_error_on_every_rank(ranks):
    """Each rank sums exp(s_old cos) over its shard with its own s_old; the combined sum
    gives every rank the same new scale, so the target logits would agree: the handshake's
    agreement check names the scale first."""
    for rank, result in enumerate(ranks[3]):
        found, message, _ = result["disagree"]["adacos_train"]
        assert (found, "disagree on the head: scale [" in message) == ("ValueError", True), \
            (rank, message)


def test_adacos_scale_different_on_one_rank_in_eval_is_a_value_error(ranks):
    for rank, result in enumerate(ranks[3]):
        found, message, seconds = result["disagree"]["adacos_eval"]
        assert (found, "disagree on the head: scale [" in message) == ("ValueError", True), rank
        assert seconds < 2.0


def test_sampled_sub_centres_resume_exactly_and_leave_unsampled_rows_alone(ranks):
    for result in ranks[2]:
        whole_losses, whole_moved = result["whole"]
        rest_losses, rest_moved = result["rest"]
        assert rest_losses == pytest.approx(whole_losses[2:], rel=1e-12)
        assert not any(whole_moved) and not any(rest_moved)
        torch.testing.assert_close(result["rest_weight"], result["whole_weight"], **TOL64)
    assert len({tuple(r["whole"][0]) for r in ranks[2]}) == 1  # the same loss on every rank


def test_a_two_rank_sub_centre_checkpoint_loads_into_three_ranks_and_one_process(ranks):
    saved = torch.cat([r["saved_weight"] for r in ranks[2]])  # (C K, D)
    momentum = torch.cat([r["saved_momentum"] for r in ranks[2]])
    assert saved.shape == (SUB["classes"] * K, DIM)
    for rank, result in enumerate(r["loaded"] for r in ranks[3]):
        start, stop = class_range(SUB["classes"], 3, rank)
        assert result["start"] == start and result["step"] == 2
        assert torch.equal(result["weight"], saved[start * K : stop * K])
        assert torch.equal(result["momentum"], momentum[start * K : stop * K])
    directory = f"{ranks['out']}/sub2"
    assert torch.equal(load_full(directory), saved)
    theirs = ms.SubCenterArcFace(DIM, SUB["classes"], sub_centers=K, margin=0.3).double()
    theirs.weight.data.copy_(load_full(directory))
    ours = sharded("subcenter", saved)
    x, labels = batch(29, 9, SUB["classes"])
    assert step(ours, x, labels, "eval")[0] == pytest.approx(
        step(theirs, x, labels, "eval")[0], rel=1e-12)
