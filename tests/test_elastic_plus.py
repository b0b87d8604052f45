"""ElasticFace+ (plus=True): the sorted draws matched to the samples by their target cosines,
in the paper's order (the farther from its centre, the larger the margin) or the official
code's (sorted draws indexed by the cosines' sort permutation). Expected margins from NumPy
argsorts and from the paper's ordering property; gradients against finite differences and
eager against chunked."""

import numpy as np
import pytest
import torch
from test_chunked import assert_close_rel, force_schedule
from test_heads_modern_reference import (
    C,
    D,
    N,
    cosines,
    cross_entropy,
    loss_of,
    problem,
    with_target,
    with_weight,
)

import margin_softmax as ms
from margin_softmax.functional import target_cosines

CLASSES = {"arc": ms.ElasticArcFace, "cos": ms.ElasticCosFace}
SEED, STD, SCALE = 3, 0.05, 16.0


def expected_margins(draws, cy, order):
    """The margin of each sample (N,): NumPy's descending argsort of the target cosines."""
    rank = np.argsort(-cy, kind="stable")  # rank[k]: the sample with the k-th largest cos
    ascending = np.sort(draws)
    if order == "official":
        return ascending[rank]
    out = np.empty_like(ascending)
    out[rank] = ascending  # the k-th largest cosine gets the k-th smallest draw
    return out


def target_of(kind, cy, m):
    return np.cos(np.arccos(cy) + m) if kind == "arc" else cy - m


def plus_head(kind, order, **kw):
    return with_weight(CLASSES[kind](D, C, std=STD, scale=SCALE, seed=SEED, plus=True,
                                     plus_order=order, **kw))


@pytest.mark.parametrize("order", ["paper", "official"])
@pytest.mark.parametrize("kind", ["arc", "cos"])
def test_plus_assigns_the_draws_in_the_chosen_order(kind, order):
    head, w = plus_head(kind, order)
    draws = CLASSES[kind](D, C, std=STD, seed=SEED).draw_margins(N).numpy()  # same stream
    x, y = problem(5)
    cy = cosines(x, w)[np.arange(N), y]
    m = expected_margins(draws, cy, order)
    paper, official = (expected_margins(draws, cy, o) for o in ("paper", "official"))
    assert not np.allclose(paper, official)  # this batch tells the gather from the scatter

    t = head.training_target_logit(target_cosines(torch.from_numpy(x), head.weight,
                                                  torch.from_numpy(y)), None)  # (N,)
    np.testing.assert_allclose(t.detach().numpy() / SCALE, target_of(kind, cy, m), rtol=1e-12)

    head.generator.manual_seed(SEED)  # the same draws again, now through the whole loss
    expected = cross_entropy(SCALE * with_target(cosines(x, w), y, target_of(kind, cy, m)), y)
    assert loss_of(head, x, y) == pytest.approx(expected, rel=1e-10)


def test_paper_order_gives_farther_samples_larger_margins():
    """The paper's property, checked without any argsort: cos_i > cos_j => m_i <= m_j, and
    the margins are the draws (a permutation of them). CosFace reads m_i = cos_i - t_i / s."""
    head, w = plus_head("cos", "paper")
    draws = ms.ElasticCosFace(D, C, std=STD, seed=SEED).draw_margins(N).numpy()
    x, y = problem(6)
    cy = cosines(x, w)[np.arange(N), y]
    t = head.training_target_logit(target_cosines(torch.from_numpy(x), head.weight,
                                                  torch.from_numpy(y)), None)
    m = cy - t.detach().numpy() / SCALE  # (N,)
    np.testing.assert_allclose(np.sort(m), np.sort(draws), atol=1e-12)
    closer = cy[:, None] > cy[None, :]  # (N, N): sample i closer to its centre than j
    assert np.all((m[:, None] <= m[None, :] + 1e-12)[closer])
    assert m[np.argmax(cy)] == pytest.approx(draws.min(), abs=1e-12)
    assert m[np.argmin(cy)] == pytest.approx(draws.max(), abs=1e-12)


@pytest.mark.parametrize("order", ["paper", "official"])
@pytest.mark.parametrize("kind", ["arc", "cos"])
def test_plus_eval_uses_the_mean_margin(kind, order):
    head, _ = plus_head(kind, order, margin=0.4)
    plain = CLASSES[kind](D, C, margin=0.4, scale=SCALE, impl="eager").double().eval()
    plain.weight.data.copy_(head.weight.data)
    x, y = problem(7)
    head.eval()
    state = head.generator.get_state()
    assert loss_of(head, x, y) == loss_of(plain, x, y)
    assert torch.equal(head.generator.get_state(), state)  # eval draws nothing
    core = (ms.ArcFace(D, C, margin=0.4, scale=SCALE, fallback="none", impl="eager")
            if kind == "arc" else ms.CosFace(D, C, margin=0.4, scale=SCALE, impl="eager"))
    core = core.double()
    core.weight.data.copy_(head.weight.data)
    assert loss_of(head, x, y) == pytest.approx(loss_of(core, x, y), rel=1e-12)


@pytest.mark.parametrize("kind", ["arc", "cos"])
def test_plus_false_is_the_unsorted_head(kind):
    x, y = problem(8)
    default, _ = with_weight(CLASSES[kind](D, C, scale=SCALE, seed=SEED))
    explicit, _ = with_weight(CLASSES[kind](D, C, scale=SCALE, seed=SEED, plus=False))
    plus, _ = with_weight(CLASSES[kind](D, C, scale=SCALE, seed=SEED, plus=True))
    losses = [loss_of(default, x, y) for _ in range(3)]
    assert losses == [loss_of(explicit, x, y) for _ in range(3)]
    assert losses != [loss_of(plus, x, y) for _ in range(3)]  # same draws, other owners


@pytest.mark.parametrize("order", ["paper", "official"])
@pytest.mark.parametrize("kind", ["arc", "cos"])
def test_plus_gradients_match_finite_differences(kind, order):
    """With the generator rewound before every call the draws repeat, and the ranking holds
    under a small step (distinct cosines): the training loss is smooth in x and the weight."""
    head, _ = plus_head(kind, order, impl="eager")
    state = head.generator.get_state()
    x, y = problem(9)
    x, y = torch.from_numpy(x).requires_grad_(), torch.from_numpy(y)
    weight = head.weight.detach().clone().requires_grad_()

    def loss(x, weight):
        head.generator.set_state(state)
        return torch.func.functional_call(head, {"weight": weight}, (x, y))

    assert torch.autograd.gradcheck(loss, (x, weight), eps=1e-6, atol=1e-6)
    gx, gw = torch.autograd.grad(loss(x, weight), (x, weight))
    assert float(gx.abs().max()) > 1e-3 and float(gw.abs().max()) > 1e-3


@pytest.mark.parametrize("schedule_name", ["fused-blocks", "two-sweeps"])
@pytest.mark.parametrize("order", ["paper", "official"])
@pytest.mark.parametrize("kind", ["arc", "cos"])
def test_plus_chunked_equals_eager(kind, order, schedule_name, monkeypatch):
    force_schedule(monkeypatch, schedule_name, n=N, c=C)
    x, y = problem(10)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    results = []
    for impl in ("eager", "chunked"):
        head, _ = plus_head(kind, order, impl=impl)
        xs = x.clone().requires_grad_()
        loss = head(xs, y)
        results.append((loss.detach(), *torch.autograd.grad(loss, (xs, head.weight))))
    assert_close_rel(results[1], results[0], 1e-9)


@pytest.mark.parametrize("cls", [ms.ElasticArcFace, ms.ElasticCosFace])
@pytest.mark.parametrize("kwargs,error,match", [
    (dict(plus="yes"), TypeError, "plus.*yes"),
    (dict(plus=1), TypeError, "plus.*1"),
    (dict(plus=True, plus_order="rank"), ValueError, "plus_order.*rank"),
    (dict(plus=True, plus_order=None), ValueError, "plus_order.*None"),
    (dict(plus_order="official"), ValueError, "plus_order.*official.*plus=True"),
])
def test_bad_plus_arguments_are_named(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(D, C, **kwargs)
