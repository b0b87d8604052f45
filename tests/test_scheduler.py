"""MarginScheduler: values at chosen iterations against hand-computed WeSpeaker formula values,
stepping, resuming, and use with several heads."""

import pytest
import torch

import margin_softmax as ms

# 10 iterations per epoch, ramp from the start of epoch 2 (k = 10) to epoch 4 (k = 30).
SCHEDULE = dict(iterations_per_epoch=10, increase_start_epoch=2, fix_start_epoch=4)

# exp: r(u) = 1 - (1e-3 / (1 + 1e-6)) ** u, u = (k - 10) / 20, worked out by hand:
# u = 0.25: 1 - 0.1778279... = 0.8221721034530651;  u = 0.5: 1 - 0.0316227... = 0.968377239...
EXP_VALUES = {  # k -> margin, initial 0.1, final 0.4
    0: 0.1,
    9: 0.1,
    10: 0.1,
    15: 0.1 + 0.3 * 0.8221721034530651,
    20: 0.1 + 0.3 * 0.9683772392096927,
    29: 0.1 + 0.3 * 0.9985874637972866,
    30: 0.4,
    1000: 0.4,
}
LINEAR_VALUES = {0: 0.1, 10: 0.1, 15: 0.175, 20: 0.25, 29: 0.385, 30: 0.4}


def arcface():
    return ms.ArcFace(4, 5, margin=0.5)


@pytest.mark.parametrize("kind, values", [("exp", EXP_VALUES), ("linear", LINEAR_VALUES)])
def test_values_equal_the_formula_at_chosen_iterations(kind, values):
    scheduler = ms.MarginScheduler(arcface(), initial_margin=0.1, final_margin=0.4,
                                   increase_type=kind, **SCHEDULE)
    for k, expected in values.items():
        assert scheduler.margin_at(k) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_step_sets_the_head_margin_once_per_iteration():
    head = arcface()
    scheduler = ms.MarginScheduler(head, initial_margin=0.1, final_margin=0.4, **SCHEDULE)
    assert head.margin == 0.1  # set at construction, as WeSpeaker does
    seen = [scheduler.step() for _ in range(31)]
    assert seen[20] == pytest.approx(EXP_VALUES[20], rel=1e-12)
    assert head.margin == 0.4 == scheduler.margin
    assert seen == sorted(seen)  # non-decreasing
    assert scheduler.step(15) == pytest.approx(EXP_VALUES[15], rel=1e-12)
    assert scheduler.iteration == 16


def test_state_dict_resumes_where_it_stopped():
    head = arcface()
    first = ms.MarginScheduler(head, **SCHEDULE)
    for _ in range(17):
        first.step()
    resumed_head = arcface()
    resumed = ms.MarginScheduler(resumed_head, **SCHEDULE)
    resumed.load_state_dict(first.state_dict())
    assert resumed_head.margin == head.margin
    assert [resumed.step() for _ in range(5)] == [first.step() for _ in range(5)]


def test_the_margin_reaches_each_heads_forward():
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 5, (6,))
    head = ms.ArcFace(4, 5, scale=16.0).double()
    ms.MarginScheduler(head, initial_margin=0.3, **SCHEDULE)
    reference = ms.ArcFace(4, 5, margin=0.3, scale=16.0).double()
    reference.weight.data.copy_(head.weight.data)
    assert head(x, y).item() == reference(x, y).item()
    for other in (ms.SubCenterArcFace(4, 5), ms.ElasticArcFace(4, 5), ms.CurricularFace(4, 5),
                  ms.AdaFace(4, 5), ms.CosFace(4, 5)):
        scheduler = ms.MarginScheduler(other, initial_margin=0.05, **SCHEDULE)
        scheduler.step(25)
        assert other.margin == pytest.approx(0.05 + 0.15 * (1 - (1e-3 / (1 + 1e-6)) ** 0.75))
    mag = ms.MagFace(4, 5)
    ms.MarginScheduler(mag, initial_margin=0.6, final_margin=0.8, attribute="u_margin", **SCHEDULE)
    assert mag.u_margin == 0.6


@pytest.mark.parametrize("kwargs, match", [
    (dict(iterations_per_epoch=0), "iterations_per_epoch.*0"),
    (dict(increase_start_epoch=0), "increase_start_epoch.*0"),
    (dict(increase_start_epoch=5, fix_start_epoch=3), "fix_start_epoch \\(3\\)"),
    (dict(increase_type="cosine"), "increase_type.*cosine"),
    (dict(final_margin=float("inf")), "final_margin.*inf"),
    (dict(attribute="nope"), "no attribute 'nope'"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ms.MarginScheduler(arcface(), **{**SCHEDULE, **kwargs})
