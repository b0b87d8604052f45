"""The modern heads: float64 finite-difference gradients (state frozen in eval mode), finite
values at cos = +-1 and for zero embeddings, clear errors, state_dict round trips, and the
special cases where a head reduces to a classic one computed by the functional core."""

import math

import pytest
import torch
from torch.func import functional_call

import margin_softmax as ms

D, C = 5, 7


def problem(n=9, c=C, d=D, seed=0, norm=None, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    if norm is not None:  # rows with norms spread over [norm/2, 3 norm/2]
        x = x / x.norm(dim=1, keepdim=True) * norm * (0.5 + torch.rand(n, 1, generator=g))
    y = torch.randint(0, c, (n,), generator=g)
    return x, y


def fixed_norm_adaface(**kw):
    """AdaFace with non-trivial statistics; its margins take the norm without gradient (as
    the official code), so finite differences must see fixed norms too."""
    head = ms.AdaFace(D, C, scale=16.0, **kw).double()
    head.batch_mean.fill_(20.0)
    head.batch_std.fill_(5.0)
    return head


HEADS = {  # name -> (factory, typical embedding norm)
    "subcenter": (lambda: ms.SubCenterArcFace(D, C, scale=16.0, sub_centers=3), None),
    "subcenter_topk": (
        lambda: ms.SubCenterArcFace(D, C, scale=16.0, hard_margin=0.1, top_k=2), None),
    "subcenter_continuous": (
        lambda: ms.SubCenterArcFace(D, C, scale=16.0, margin=0.9, fallback="continuous"), None),
    "adacos": (lambda: ms.AdaCos(D, C), None),
    "curricularface": (lambda: ms.CurricularFace(D, C, scale=16.0), None),
    "adaface": (fixed_norm_adaface, 20.0),
    "magface": (lambda: ms.MagFace(D, C, scale=16.0, lambda_g=35.0), 40.0),
    "magface_seed": (lambda: ms.MagFace(D, C, scale=16.0, fallback="seed"), 60.0),
    "elastic_arc": (lambda: ms.ElasticArcFace(D, C, scale=16.0, seed=0), None),
    "elastic_cos": (lambda: ms.ElasticCosFace(D, C, scale=16.0, seed=0), None),
}


def make(name):
    factory, norm = HEADS[name]
    return factory().double(), norm


@pytest.mark.parametrize("name", HEADS)
def test_gradients_match_finite_differences_in_float64(name):
    head, norm = make(name)
    if name == "curricularface":
        head.t.fill_(0.4)  # a non-zero t, so the hard negatives' weighting is exercised
    head.eval()
    x, y = problem(norm=norm, seed=1)
    if name == "adaface":
        norms = head.feature_norms(x)
        head.feature_norms = lambda embeddings: norms  # hold the (detached) norms fixed
    w = head.weight.detach().clone().requires_grad_()

    def loss(x, w):
        return functional_call(head, {"weight": w}, (x, y))

    assert torch.autograd.gradcheck(loss, (x.requires_grad_(), w), eps=1e-6, atol=1e-7)


def test_curricularface_gradcheck_sees_hard_negatives():
    head, _ = make("curricularface")
    x, y = problem(seed=1)
    cos = head.logits(x) / head.scale
    bar = torch.cos(torch.acos(cos.gather(1, y[:, None])) + head.margin)
    assert (cos > bar).sum() > x.shape[0]  # hard negatives exist besides the targets


def extreme_batch(head, norm, dtype):
    """Rows at cos = +1 and -1 with their target centre, a zero row, and random rows."""
    x, y = problem(n=6, norm=norm or 1.0, dtype=dtype, seed=2)
    k = getattr(head, "sub_centers", 1)
    w = head.weight.detach().to(dtype)
    scale = norm or 1.0
    x[0] = w[y[0] * k] / w[y[0] * k].norm() * scale
    x[1] = -w[y[1] * k] / w[y[1] * k].norm() * scale
    x[2] = 0.0
    return x, y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name", HEADS)
def test_finite_at_cos_plus_minus_one_and_zero_embeddings(name, train, dtype):
    head, norm = make(name)
    head = head.to(dtype).train(train)
    x, y = extreme_batch(head, norm, dtype)
    x.requires_grad_()
    loss = head(x, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()
    for value in head.state_dict().values():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert torch.isfinite(value).all()


BAD = [
    (ms.SubCenterArcFace, dict(sub_centers=0), "sub_centers.*0"),
    (ms.SubCenterArcFace, dict(top_k=C), "top_k.*7"),
    (ms.SubCenterArcFace, dict(hard_margin=-0.1), "hard_margin.*-0.1"),
    (ms.SubCenterArcFace, dict(margin=4.0), "margin.*4.0"),
    (ms.SubCenterArcFace, dict(fallback="bogus"), "fallback.*bogus"),
    (ms.SubCenterArcFace, dict(scale=-1.0), "scale.*-1.0"),
    (ms.SubCenterArcFace, dict(impl="chunked", hard_margin=0.1, top_k=2), "impl.*chunked"),
    (ms.CurricularFace, dict(momentum=1.5), "momentum.*1.5"),
    (ms.CurricularFace, dict(margin=-0.2), "margin.*-0.2"),
    (ms.AdaFace, dict(h=-1.0), "h .*-1.0"),
    (ms.AdaFace, dict(t_alpha=2.0), "t_alpha.*2.0"),
    (ms.AdaFace, dict(margin=-0.1), "margin.*-0.1"),
    (ms.MagFace, dict(l_a=0.0), "l_a.*0.0"),
    (ms.MagFace, dict(u_a=5.0), "u_a.*5.0"),
    (ms.MagFace, dict(u_margin=0.1), "u_margin.*0.1"),
    (ms.MagFace, dict(lambda_g=-1.0), "lambda_g.*-1.0"),
    (ms.MagFace, dict(fallback="none"), "fallback.*none"),
    (ms.ElasticArcFace, dict(std=-0.01), "std.*-0.01"),
    (ms.ElasticArcFace, dict(fallback="bogus"), "fallback.*bogus"),
    (ms.ElasticCosFace, dict(margin=float("nan")), "margin.*nan"),
    (ms.AdaCos, dict(scale=0.0), "scale.*0.0"),
]


@pytest.mark.parametrize("cls, kwargs, match", BAD)
def test_bad_parameters_raise_value_errors_naming_them(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(D, C, **kwargs)


def test_more_bad_parameters():
    with pytest.raises(ValueError, match="num_classes must be >= 3.*2"):
        ms.AdaCos(D, 2)
    with pytest.raises(TypeError, match="seed.*'x'"):
        ms.ElasticArcFace(D, C, seed="x")
    with pytest.raises(ValueError, match="labels must be in"):
        ms.SubCenterArcFace(D, C)(torch.randn(2, D), torch.tensor([0, C]))
    with pytest.warns(UserWarning, match="lambda_g=1"):
        ms.MagFace(D, C, lambda_g=1.0)


STATEFUL = {  # name -> the state_dict keys that carry the running state
    "curricularface": ["t"],
    "adaface": ["batch_mean", "batch_std"],
    "adacos": ["adaptive_scale"],
}


@pytest.mark.parametrize("name", STATEFUL)
def test_state_dict_round_trip_carries_the_running_state(name):
    head, norm = make(name)
    x, y = problem(norm=norm, seed=3)
    before = {k: head.state_dict()[k].clone() for k in STATEFUL[name]}
    head.train()
    for _ in range(3):
        head(x, y)
    after = head.state_dict()
    for key in STATEFUL[name]:
        assert not torch.equal(after[key], before[key])  # the state moved
    fresh, _ = make(name)
    fresh.load_state_dict(after)
    for key in STATEFUL[name]:
        assert torch.equal(fresh.state_dict()[key], after[key])
    head.eval(), fresh.eval()
    with torch.no_grad():
        assert float(fresh(x, y)) == float(head(x, y))


@pytest.mark.parametrize("cls", [ms.ElasticArcFace, ms.ElasticCosFace])
def test_elastic_state_dict_carries_the_generator(cls):
    head = cls(D, C, scale=16.0, seed=5).double()
    x, y = problem(seed=4)
    head(x, y)  # advance the generator
    state = head.state_dict()
    assert "_extra_state" in state
    resumed = cls(D, C, scale=16.0, seed=99).double()
    resumed.load_state_dict(state)
    for _ in range(2):
        assert resumed(x, y).item() == head(x, y).item()


@pytest.mark.parametrize("cls", [ms.ElasticArcFace, ms.ElasticCosFace])
def test_elastic_heads_are_reproducible_under_a_seed(cls):
    x, y = problem(seed=6)
    a, b, c = (cls(D, C, seed=s).double() for s in (7, 7, 8))
    b.load_state_dict(a.state_dict(), strict=False)  # same weight; b keeps its own generator
    c.weight.data.copy_(a.weight.data)
    losses_a = [a(x, y).item() for _ in range(3)]
    assert losses_a == [b(x, y).item() for _ in range(3)]
    assert losses_a != [c(x, y).item() for _ in range(3)]
    assert len(set(losses_a)) == 3  # a new draw every step
    torch.manual_seed(11)
    first = cls(D, C).draw_margins(4)
    torch.manual_seed(11)
    assert torch.equal(first, cls(D, C).draw_margins(4))  # seed=None follows torch's seed


def test_elastic_draws_follow_the_normal_distribution():
    draws = ms.ElasticArcFace(D, C, margin=0.5, std=0.05, seed=0).draw_margins(40000)
    assert abs(float(draws.mean()) - 0.5) < 0.002  # 5 standard errors
    assert abs(float(draws.std()) - 0.05) < 0.002


def core_loss(cls, x, y, weight, **kw):
    head = cls(D, weight.shape[0], impl="eager", **kw).double()
    head.weight.data.copy_(weight)
    return head(x, y)


@torch.no_grad()
def test_special_cases_reduce_to_classic_heads_through_the_core():
    x, y = problem(seed=7)
    sub = ms.SubCenterArcFace(D, C, margin=0.4, scale=20.0, sub_centers=1).double()
    assert float(sub(x, y)) == pytest.approx(
        float(core_loss(ms.ArcFace, x, y, sub.weight, margin=0.4, scale=20.0)), rel=1e-12)

    arc = ms.ElasticArcFace(D, C, margin=0.4, scale=20.0).double().eval()
    assert float(arc(x, y)) == pytest.approx(float(core_loss(
        ms.ArcFace, x, y, arc.weight, margin=0.4, scale=20.0, fallback="none")), rel=1e-12)

    cos = ms.ElasticCosFace(D, C, margin=0.3, scale=20.0).double().eval()
    assert float(cos(x, y)) == pytest.approx(
        float(core_loss(ms.CosFace, x, y, cos.weight, margin=0.3, scale=20.0)), rel=1e-12)

    ada = ms.AdaFace(D, C, margin=0.3, h=0.0, scale=20.0).double()  # z = 0: CosFace(m)
    assert float(ada(x, y)) == pytest.approx(
        float(core_loss(ms.CosFace, x, y, ada.weight, margin=0.3, scale=20.0)), rel=1e-12)

    mag = ms.MagFace(D, C, l_margin=0.4, u_margin=0.4, lambda_g=0.0, fallback="seed",
                     scale=20.0).double()  # a constant margin: ArcFace
    assert float(mag(x * 30, y)) == pytest.approx(
        float(core_loss(ms.ArcFace, x, y, mag.weight, margin=0.4, scale=20.0)), rel=1e-12)


@torch.no_grad()
@pytest.mark.parametrize("impl", ["eager", "chunked"])
def test_adacos_loss_is_normface_at_its_scale_through_the_core(impl):
    x, y = problem(seed=8)
    head = ms.AdaCos(D, C, impl=impl).double()
    loss = head(x, y)  # training mode: the scale moves first
    assert head.scale != pytest.approx(math.sqrt(2) * math.log(C - 1))
    normface = core_loss(ms.NormFace, x, y, head.weight, scale=head.scale)
    assert float(loss) == pytest.approx(float(normface), rel=1e-12)


@torch.no_grad()
def test_eval_mode_freezes_the_state_and_empty_batches_are_zero():
    x, y = problem(norm=20.0, seed=9)
    for name in ("curricularface", "adaface", "adacos"):
        head, _ = make(name)
        head.eval()
        state = {k: v.clone() for k, v in head.state_dict().items()}
        head(x, y)
        assert all(torch.equal(v, head.state_dict()[k]) for k, v in state.items())
    for name in HEADS:
        head, _ = make(name)
        empty = head(torch.zeros(0, D, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
        assert float(empty) == 0.0


@torch.no_grad()
@pytest.mark.parametrize("name", HEADS)
def test_bfloat16_in_bfloat16_out_close_to_float32(name):
    head, norm = make(name)
    head = head.float().eval()
    x, y = problem(n=16, norm=norm, seed=10, dtype=torch.float32)
    reference = head(x, y).item()
    loss = head.to(torch.bfloat16)(x.bfloat16(), y)
    assert loss.dtype == torch.bfloat16
    assert loss.item() == pytest.approx(reference, rel=0.03, abs=0.05)
