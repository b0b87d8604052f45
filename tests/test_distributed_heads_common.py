"""Edge cases that every class-sharded head with a rule of its own shares (AdaFace, MagFace,
ElasticArcFace, ElasticCosFace, CurricularFace, AdaCos, SubCenterArcFace PartialFC), each
test parametrized over all seven heads of tests/sharded_heads.py: world size 1 against the
single-device head (float64, float32, bfloat16, autocast), margin schedules and bad margins,
constructor errors, repr, checkpoints (resume with optimizer state, single <-> sharded,
another head kind refused) and the training entry point's resume.

The cases of one head kind only, and the multi-rank spawns, stay in
test_distributed_target_heads_edges.py (AdaFace, MagFace, ElasticFace) and
test_distributed_more_heads_edges.py (CurricularFace, AdaCos, SubCenterArcFace). Tests
marked ``# Was a defect`` failed on the code before their fix.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from sharded_heads import (
    DIM,
    HEADS,
    TOL64,
    assert_states_equal,
    assert_steps_equal,
    batch,
    full_weight,
    rows_per_class,
    sgd,
    sharded,
    single,
    state_of,
    step,
)

from margin_softmax.distributed import (
    PartialFC,
    load_full,
    load_sharded,
    load_state,
    save_full,
    save_sharded,
)
from margin_softmax.distributed.train import parse_args, train
from margin_softmax.scheduler import MarginScheduler

ALL = list(HEADS)
STATELESS = {"magface", "subcenter"}  # no running state: a state_dict of the weight alone
SAMPLING = {name: {"sample_rate": 0.5} for name in ALL}
SAMPLING["adacos"] = {}  # a dynamic scale refuses class sampling


def changed(before: dict, after: dict) -> bool:
    """Whether a running state differs from another (ElasticFace's by its generator)."""
    def values(state):
        return {k: v["generator"] if k == "_extra_state" else v for k, v in state.items()}

    a, b = values(before), values(after)
    return a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a)


def float_states_are_float64(head) -> bool:
    return all(v.dtype == torch.float64 for v in state_of(head).values() if torch.is_tensor(v))


# ---------------------------------------------------------------- world size 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ALL)
def test_world_size_one_equals_the_single_device_head(name, dtype):
    """train, train, eval, a no_grad training forward, train: loss, gradients and state."""
    weight = full_weight(1, 13, name)
    ours, theirs = sharded(name, weight, dtype), single(name, weight, dtype)
    start = state_of(ours)
    tol = TOL64 if dtype == torch.float64 else {"atol": 1e-4, "rtol": 1e-4}
    rel = 1e-12 if dtype == torch.float64 else 1e-6
    for k, mode in enumerate(("train", "train", "eval", "no_grad", "train")):
        x, labels = batch(10 + k, 9, 13, dtype)
        found, expected = step(ours, x, labels, mode), step(theirs, x, labels, mode)
        assert found[0] == pytest.approx(expected[0], rel=rel, abs=tol["atol"]), (mode, k)
        assert_steps_equal(found, expected, tol)
    assert_states_equal(state_of(ours), state_of(theirs))
    # the state moved: the comparison above could fail
    assert changed(start, state_of(ours)) == (name not in STATELESS)


# AdaCos: test_distributed_more_heads_edges.py (its target cosine rounds otherwise)
AUTOCAST = [name for name in ALL if name != "adacos"]


# Was a defect (fixed): under CPU bfloat16 autocast the float32 loss is the bfloat16-rounded value
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", AUTOCAST)
def test_autocast_returns_the_float32_loss_of_the_single_chunked_head(name, mode):
    """docs/distributed.md "Mixed precision": the softmax, the sums and the returned loss are
    float32, as in the single-device path (not the loss rounded to bfloat16, up to 2^-9)."""
    weight = full_weight(3, 13, name).float()
    ours = sharded(name, weight, torch.float32).train(mode == "train")
    theirs = single(name, weight, torch.float32, impl="chunked").train(mode == "train")
    for k in range(2):
        x, labels = batch(30 + k, 9, 13, torch.float32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            found, expected = ours(x, labels), theirs(x, labels)
        assert found.dtype == expected.dtype == torch.float32
        assert found.item() == pytest.approx(expected.item(), rel=1e-5)
    assert_states_equal(state_of(ours), state_of(theirs))


# the state of a bfloat16 head against the bfloat16 single head: AdaCos's float32 scale updates
# run in another order (1.6e-7 apart here)
BFLOAT16_STATE = {**{name: TOL64 for name in ALL}, "adacos": {"atol": 0.0, "rtol": 1e-6}}


@pytest.mark.parametrize("name", ALL)
def test_a_bfloat16_head_keeps_float64_state_and_matches_float64(name):
    """A head moved with .to(torch.bfloat16): its loss and gradients against the float64
    single head on the same (bfloat16-rounded) values, its state against the bfloat16
    single head (the norms of bfloat16 rows) and the float64 one, and the state stays
    float64."""
    weight = full_weight(4, 13, name).to(torch.bfloat16).double()
    ours = sharded(name, weight).to(torch.bfloat16)
    theirs, reference = single(name, weight).to(torch.bfloat16), single(name, weight)
    assert float_states_are_float64(ours)
    for k in range(2):
        x, labels = batch(40 + k, 9, 13, torch.bfloat16)
        found, expected = step(ours, x, labels), step(reference, x.double(), labels)
        step(theirs, x, labels)
        assert found[0] == pytest.approx(expected[0], rel=1e-2)
        for a, b in zip(found[1:], expected[1:], strict=True):
            assert a.dtype == torch.bfloat16
            assert (a.double() - b).abs().max() <= 4e-2 * b.abs().max()
    assert float_states_are_float64(ours)
    assert_states_equal(state_of(ours), state_of(theirs), BFLOAT16_STATE[name])
    assert_states_equal(state_of(ours.double()), state_of(theirs), BFLOAT16_STATE[name])
    assert_states_equal(state_of(ours), state_of(reference), {"atol": 0, "rtol": 1e-2})


@pytest.mark.parametrize("name", [*ALL, "partial_fc"])
def test_a_float16_zero_embedding_gets_a_zero_gradient_not_inf(name):
    """x / max(|x|, 1e-12) has gradient g / 1e-12 at x = 0, beyond float16's 65504: the
    zero row's gradient is 0, every other row's matches float32's, the weight's is finite.
    Was a defect: inf (PartialFC) or NaN (the others), as the single heads were before."""
    weight = full_weight(6, 13, name if name != "partial_fc" else "")
    head = (PartialFC(DIM, 13, m2=0.5) if name == "partial_fc" else sharded(name, weight))
    if name == "partial_fc":
        with torch.no_grad():
            head.weight.copy_(weight)
    x, labels = batch(60, 9, 13)
    x[3] = 0.0
    grads = {}
    for dtype in (torch.float16, torch.float32):  # float32: the other rows' reference
        _, dx, dw = step(copy.deepcopy(head).to(dtype), x.to(dtype), labels)
        grads[dtype] = dx.double(), dw.double()
    dx, dw = grads[torch.float16]
    assert bool(dx.isfinite().all()) and bool(dw.isfinite().all())
    assert not bool(dx[3].any())
    others, exact = [0, 1, 2, 4, 5, 6, 7, 8], grads[torch.float32][0]
    torch.testing.assert_close(dx[others], exact[others], rtol=0,
                               atol=0.02 * float(exact.abs().max()))


# ---------------------------------------------------------------- margins

SCHEDULED = [("adaface", "margin"), ("magface", "l_margin"), ("magface", "u_margin"),
             ("elastic_arc", "margin"), ("elastic_cos", "margin"),
             ("curricularface", "margin"), ("subcenter", "margin")]  # AdaCos has no margin


@pytest.mark.parametrize("name,attribute", SCHEDULED)
def test_a_margin_scheduler_moves_the_sharded_margin_like_the_single_heads(name, attribute):
    weight = full_weight(5, 13, name)
    heads = [sharded(name, weight), single(name, weight)]
    start = {"l_margin": 0.2, "u_margin": 0.5}.get(attribute, 0.1)
    schedules = [MarginScheduler(h, iterations_per_epoch=2, increase_start_epoch=1,
                                 fix_start_epoch=2, initial_margin=start,
                                 final_margin=start + 0.25, increase_type="linear",
                                 attribute=attribute) for h in heads]
    for k in range(3):
        x, labels = batch(50 + k, 9, 13)
        margins = [s.step() for s in schedules]
        found, expected = (step(h, x, labels)[0] for h in heads)
        assert margins[0] == margins[1] == pytest.approx(start + 0.125 * k)
        assert found == pytest.approx(expected, rel=1e-12)
    assert_states_equal(state_of(heads[0]), state_of(heads[1]))


BAD_MARGINS = [("adaface", "margin", -0.1), ("adaface", "margin", 2.0),
               ("magface", "u_margin", 0.2), ("magface", "l_margin", -1.0),
               ("elastic_arc", "margin", math.nan), ("elastic_cos", "margin", 4.0),
               *[(name, "margin", value) for name in ("curricularface", "subcenter")
                 for value in (-0.1, 3.5, math.nan, math.pi)]]


# Was a defect (fixed): a forward that raises (a bad margin) has already moved AdaFace's EMAs and
# `step`
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name,attribute,value", BAD_MARGINS)
def test_a_bad_margin_is_a_value_error_naming_it_that_moves_nothing(name, attribute, value,
                                                                    mode):
    """A scheduler's bad margin (a hand-made schedule's or a config's NaN, which the
    scheduler refuses itself): the forward raises and leaves the state and step alone."""
    head = sharded(name, full_weight(6, 13, name), sample_rate=0.5)
    step(head, *batch(60, 9, 13))  # the state and step away from their start
    head.train(mode == "train")
    before = {**state_of(head), "step": head.step.clone()}
    if math.isnan(value):
        setattr(head, attribute, value)
    else:
        MarginScheduler(head, iterations_per_epoch=1, increase_start_epoch=1,
                        fix_start_epoch=1, initial_margin=0.3, final_margin=value,
                        attribute=attribute).step()
    with pytest.raises(ValueError, match=attribute):
        head(*batch(61, 9, 13))
    assert_states_equal({**state_of(head), "step": head.step}, before, {"atol": 0, "rtol": 0})


# ---------------------------------------------------------------- construction

BAD_ARGUMENTS = [  # (head, keywords, error, words in the message)
    ("adaface", {"seed": 1.5}, TypeError, "seed"),
    ("elastic_arc", {"seed": None}, TypeError, "seed"),
    ("magface", {"bogus": 1}, TypeError, "bogus"),
    ("adaface", {"margin": 2.0}, ValueError, "margin"),
    ("adaface", {"t_alpha": 1.5}, ValueError, "t_alpha"),
    ("adaface", {"h": -1.0}, ValueError, "h must"),
    ("magface", {"u_margin": 0.2}, ValueError, "u_margin"),
    ("magface", {"fallback": "none"}, ValueError, "fallback"),
    ("magface", {"l_a": 0.0}, ValueError, "l_a"),
    ("elastic_arc", {"std": -0.1}, ValueError, "std"),
    ("elastic_arc", {"fallback": "bogus"}, ValueError, "fallback"),
    ("elastic_cos", {"plus": 1}, TypeError, "plus"),
    ("elastic_cos", {"plus": False, "plus_order": "official"}, ValueError, "plus_order"),
    ("elastic_cos", {"margin": -0.2}, ValueError, "margin"),
    ("adaface", {"sample_rate": 0.0}, ValueError, "sample_rate"),
    ("magface", {"impl": "eager"}, ValueError, "impl"),
    ("adaface", {"scale": 0.0}, ValueError, "scale"),
    ("curricularface", {"momentum": 1.5}, ValueError, "momentum"),
    ("curricularface", {"margin": -1.0}, ValueError, "margin"),
    ("curricularface", {"impl": "eager"}, ValueError, "impl"),
    ("curricularface", {"sample_rate": 0.0}, ValueError, "sample_rate"),
    ("adacos", {"scale": 0.0}, ValueError, "scale"),
    ("adacos", {"margin": 0.3}, TypeError, "margin"),
    ("subcenter", {"sub_centers": 0}, ValueError, "sub_centers"),
    ("subcenter", {"sub_centers": True}, ValueError, "sub_centers"),
    ("subcenter", {"sub_centers": 2.0}, ValueError, "sub_centers"),
    ("subcenter", {"fallback": "bogus"}, ValueError, "fallback"),
    ("subcenter", {"margin": 4.0}, ValueError, "margin"),
    ("subcenter", {"impl": "triton"}, ValueError, "no Triton path"),
    ("subcenter", {"top_k": 2}, TypeError, "top_k"),
    ("subcenter", {"straight_through": 1}, TypeError, "straight_through"),
    ("subcenter", {"seed": 1.5}, TypeError, "seed"),
]


@pytest.mark.parametrize("name,keywords,error,words", BAD_ARGUMENTS)
def test_the_constructor_names_a_bad_argument(name, keywords, error, words):
    _, kind, defaults = HEADS[name]
    with pytest.raises(error, match=words):
        kind(DIM, 13, **{**defaults, **keywords})


REPRS = {  # name -> (keywords of a head of 13 classes, words its repr shows besides its block)
    "adaface": ({"margin": 0.3, "sample_rate": 0.5}, ["margin=0.3", "sample_rate=0.5"]),
    "magface": ({"u_margin": 0.7}, ["u_margin=0.7"]),
    "elastic_arc": ({"std": 0.1, "plus": True, "plus_order": "official"},
                    ["std=0.1", "plus=True", "plus_order='official'"]),
    "elastic_cos": ({"plus": True}, ["plus=True"]),
    "curricularface": ({"margin": 0.4, "sample_rate": 0.5}, ["margin=0.4", "momentum=0.01"]),
    "adacos": ({"scale": 10.0, "dynamic": False}, ["scale=10.0", "dynamic=False"]),
    "subcenter": ({"sub_centers": 4, "fallback": "none"}, ["sub_centers=4", "fallback='none'"]),
}


@pytest.mark.parametrize("name", ALL)
def test_repr_shows_the_block_and_the_rule_parameters(name):
    keywords, words = REPRS[name]
    text = repr(HEADS[name][1](DIM, 13, **keywords))
    for word in ["classes=[0, 13)", *words]:
        assert word in text, (word, text)


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", ALL)
def test_a_checkpoint_with_optimizer_state_resumes_as_if_never_stopped(name, tmp_path):
    """4 steps in one go against 2, save_sharded(dir, head, optimizer), a fresh head and
    optimizer, load_sharded, 2 more: losses, weight, running state and sampling step."""
    weight = full_weight(11, 40, name)
    steps = [batch(110 + k, 6, 40) for k in range(4)]

    def run(head, optimizer, data):
        losses = []
        for x, labels in data:
            optimizer.zero_grad()
            loss = head(x, labels)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses

    whole = sharded(name, weight, **SAMPLING[name])
    in_one_go = run(whole, sgd(whole), steps)
    first = sharded(name, weight, **SAMPLING[name])
    first_optimizer = sgd(first)
    run(first, first_optimizer, steps[:2])
    save_sharded(tmp_path, first, first_optimizer)
    resumed = sharded(name, torch.zeros_like(weight), **SAMPLING[name])
    optimizer = sgd(resumed)
    load_sharded(tmp_path, resumed, optimizer)
    assert run(resumed, optimizer, steps[2:]) == pytest.approx(in_one_go[2:], rel=1e-12)
    torch.testing.assert_close(resumed.weight, whole.weight, **TOL64)
    assert_states_equal(state_of(resumed), state_of(whole))
    assert int(resumed.step) == int(whole.step) == (4 if SAMPLING[name] else 0)  # draws


@pytest.mark.parametrize("name", ALL)
def test_checkpoints_move_between_single_and_sharded_heads(name, tmp_path):
    """A trained single head -> save_full (K rows per class) -> load_sharded: the next step
    is the single head's; save_sharded -> load_full ((C K, D)) + load_state: again."""
    weight = full_weight(13, 13, name)
    theirs = single(name, weight)
    for k in range(2):
        step(theirs, *batch(130 + k, 9, 13))
    save_full(tmp_path / "single", theirs.weight, theirs.state_dict(),
              rows_per_class=rows_per_class(name))
    ours = sharded(name, torch.zeros_like(weight))
    load_sharded(tmp_path / "single", ours)
    x, labels = batch(132, 9, 13)
    assert_steps_equal(step(ours, x, labels), step(theirs, x, labels), TOL64)
    save_sharded(tmp_path / "sharded", ours)
    full = load_full(tmp_path / "sharded")
    assert full.shape == weight.shape
    back = single(name, torch.zeros_like(weight))
    back.load_state_dict({"weight": full, **load_state(tmp_path / "sharded")})
    x, labels = batch(133, 9, 13)
    assert step(back, x, labels)[0] == pytest.approx(step(theirs, x, labels)[0], rel=1e-12)


# A checkpoint of a head without running state (MagFace's) loads into any head with its rows
# per class; every other pair of kinds (PartialFC's as the loading head too) is refused.
ROWS = {**{name: rows_per_class(name) for name in ALL}, "partial_fc": 1}
KINDS = [(a, b) for a in ALL for b in ROWS
         if a != b and (a not in STATELESS or ROWS[a] != ROWS[b])]


# Was a defect (fixed): ElasticFace-Arc and -Cos checkpoints both hold a generator: each loaded
# silently into the other kind (the shard files do not record the head's kind)
@pytest.mark.parametrize("saved,loaded", KINDS)
def test_a_checkpoint_of_another_head_kind_is_refused_and_loads_nothing(saved, loaded,
                                                                        tmp_path):
    head = sharded(saved, full_weight(12, 13, saved))
    step(head, *batch(120, 9, 13))  # the running state away from its start
    save_sharded(tmp_path, head)
    if loaded == "partial_fc":
        other = PartialFC(DIM, 13).double()
        other.weight.data.zero_()
    else:
        other = sharded(loaded, torch.zeros(13 * ROWS[loaded], DIM, dtype=torch.float64))
    before = state_of(other)
    words = "another kind of head" if ROWS[saved] == ROWS[loaded] else r"row\(s\) per class"
    with pytest.raises(ValueError, match=words):
        load_sharded(tmp_path, other)
    assert torch.count_nonzero(other.weight) == 0
    assert not changed(before, state_of(other))


# ---------------------------------------------------------------- the training entry point

TRAIN = ["--classes", "40", "--batch-size", "8", "--embedding-dim", "16", "--input-dim", "8",
         "--log-every", "100"]
ENTRY = {  # name -> (--loss, --sample-rate)
    "adaface": ("adaface", "0.5"), "magface": ("magface", "0.5"),
    "elastic_arc": ("elastic-arcface", "0.5"), "elastic_cos": ("elastic-cosface", "0.5"),
    "curricularface": ("curricularface", "0.5"), "adacos": ("adacos", "1.0"),
    "subcenter": ("subcenter-arcface", "0.5"),
}


@pytest.mark.parametrize("name", ALL)
def test_the_training_entry_point_resumes_each_head_exactly(name, tmp_path, monkeypatch):
    """6 steps in one go against 3, --save, --resume, 3 more: the losses, the weight and
    the running state bit for bit."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    loss, rate = ENTRY[name]
    args = [*TRAIN, "--loss", loss, "--sample-rate", rate]
    whole = train(parse_args([*args, "--steps", "6", "--save", str(tmp_path / "whole")]))
    train(parse_args([*args, "--steps", "3", "--save", str(tmp_path / "half")]))
    rest = train(parse_args([*args, "--steps", "6", "--resume", str(tmp_path / "half"),
                             "--save", str(tmp_path / "resumed")]))
    assert all(math.isfinite(v) for v in whole) and rest == whole[3:]
    full = load_full(tmp_path / "resumed")
    assert torch.equal(full, load_full(tmp_path / "whole"))
    assert full.shape == (40 * rows_per_class(name), 16)
    state = load_state(tmp_path / "whole")
    assert_states_equal(load_state(tmp_path / "resumed"), state, {"atol": 0, "rtol": 0})
    # the state moved after the save it was resumed from, and travels with the shards
    assert changed(load_state(tmp_path / "half"), state) == (name not in STATELESS)
