"""The functional core (functional.py) on hand cases with closed-form losses, the paths that
impl picks, and the exact message of each bad argument."""

import importlib.util
import math

import pytest
import torch
from exact_message import exactly

from margin_softmax import functional as F
from margin_softmax.margins import Margin

# x_0 on class 0's centre (cos 1, 0), x_1 halfway between them (cos 1/sqrt2 to each)
X = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
W = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
Y = torch.tensor([0, 1])
R = 1 / math.sqrt(2)


IMPLS = ["eager", "chunked", pytest.param("triton", marks=pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="needs triton"))]
TOLERANCE = {"eager": 1e-12, "chunked": 1e-12, "triton": 1e-5}  # the kernels sum in float32


def softplus(z: float) -> float:
    return math.log1p(math.exp(z))


def by_hand(s: float, psi0: float, psi1: float) -> list[float]:
    """Per-sample losses: logsumexp(s cos_i) with the target replaced, minus the target."""
    return [softplus(s * 0 - s * psi0), softplus(s * R - s * psi1)]


@pytest.mark.parametrize("impl", IMPLS)
def test_margin_cross_entropy_by_hand(impl):
    s, m2, m3 = 4.0, 0.25, 0.125
    loss = F.margin_cross_entropy(X, W, Y, scale=s, m2=m2, m3=m3, reduction="none", impl=impl)
    want = by_hand(s, math.cos(m2) - m3, math.cos(math.pi / 4 + m2) - m3)
    rel = TOLERANCE[impl]
    assert loss.tolist() == pytest.approx(want, rel=rel)
    assert loss.dtype == torch.float64
    mean = F.margin_cross_entropy(X, W, Y, scale=s, m2=m2, m3=m3, impl=impl)
    total = F.margin_cross_entropy(X, W, Y, scale=s, m2=m2, m3=m3, reduction="sum", impl=impl)
    assert (mean.item(), total.item()) == pytest.approx((sum(want) / 2, sum(want)), rel=rel)
    norm = F.margin_cross_entropy(X, W, Y, scale=s, reduction="none", impl=impl)  # NormFace
    assert norm.tolist() == pytest.approx(by_hand(s, 1.0, R), rel=rel)


@pytest.mark.parametrize("impl", IMPLS)
def test_margin_object_blend_and_scale_by_norm(impl):
    margin = Margin(m1=2.0, fallback="piecewise", blend=1.0)
    loss = F.margin_cross_entropy(X, W, Y, scale=2.0, margin=margin, scale_by_norm=True,
                                  reduction="none", impl=impl)
    r = [2.0 * 2.0, 2.0 * math.sqrt(2)]  # s |x_i|
    psi1 = (R + math.cos(2 * math.pi / 4)) / 2  # (blend cos + cos(2 theta)) / (1 + blend)
    want = [softplus(-r[0] * 1.0), softplus(r[1] * R - r[1] * psi1)]
    assert loss.tolist() == pytest.approx(want, rel=TOLERANCE[impl])


@pytest.mark.parametrize("impl", IMPLS)
def test_target_cross_entropy_by_hand(impl):
    target = torch.tensor([1.0, -2.0], dtype=torch.float64)
    loss = F.target_cross_entropy(X, W, Y, target, scale=3.0, reduction="none", impl=impl)
    want = [softplus(3.0 * 0 - 1.0), softplus(3.0 * R + 2.0)]
    assert loss.tolist() == pytest.approx(want, rel=TOLERANCE[impl])
    mean = F.target_cross_entropy(X, W, Y, target, scale=3.0, impl=impl)
    assert mean.item() == pytest.approx(sum(want) / 2, rel=TOLERANCE[impl])


@pytest.mark.parametrize("impl", ["eager", "chunked"])
def test_target_cross_entropy_with_a_non_target_transform(impl):
    def doubled(cos, param):  # f(cos) = param * cos, f' = param
        return param * cos, param.expand_as(cos)

    doubled.row_param = torch.tensor([2.0, 3.0], dtype=torch.float64)
    target = torch.tensor([1.0, -2.0], dtype=torch.float64)
    loss = F.target_cross_entropy(X, W, Y, target, scale=3.0, reduction="none", impl=impl,
                                  non_target=doubled)
    want = [softplus(3.0 * 2 * 0 - 1.0), softplus(3.0 * 3 * R + 2.0)]
    assert loss.tolist() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("impl", ["eager", "chunked"])
def test_softmax_cross_entropy_by_hand(impl):
    bias = torch.tensor([0.5, -1.0], dtype=torch.float64)
    loss = F.softmax_cross_entropy(X, W, Y, bias, reduction="none", impl=impl)
    # logits x W^T + b: row 0 [6.5, -1], row 1 [3.5, -0.5]
    assert loss.tolist() == pytest.approx([softplus(-7.5), softplus(4.0)], rel=1e-12)
    plain = F.softmax_cross_entropy(X, W, Y, reduction="sum", impl=impl)
    assert plain.item() == pytest.approx(softplus(-6.0) + softplus(2.5), rel=1e-12)


@pytest.mark.parametrize("reduction, shape", [("mean", ()), ("sum", ()), ("none", (0,))])
def test_an_empty_batch_is_a_zero_loss_with_zero_gradients(reduction, shape):
    x = torch.zeros(0, 2, dtype=torch.float64, requires_grad=True)
    w = W.clone().requires_grad_()
    target = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long)
    for loss, inputs in (
        (F.margin_cross_entropy(x, w, labels, scale=2.0, reduction=reduction), (x, w)),
        (F.target_cross_entropy(x, w, labels, target, scale=2.0, reduction=reduction),
         (x, w, target)),
        (F.softmax_cross_entropy(x, w, labels, reduction=reduction), (x, w)),
    ):
        assert loss.shape == shape and loss.dtype == torch.float64
        assert loss.sum().item() == 0.0
        grads = torch.autograd.grad(loss.sum(), inputs)  # raises where one is not in the graph
        assert all(g.shape == t.shape and not g.any() for g, t in zip(grads, inputs, strict=True))


def test_resolve_impl_picks_chunked_above_the_crossover():
    cpu, meta = torch.zeros(1, 2), torch.zeros(1, 2, device="meta")
    assert F.resolve_impl("auto", cpu, F.AUTO_CHUNK_ELEMENTS_CPU) == "eager"
    assert F.resolve_impl("auto", cpu, F.AUTO_CHUNK_ELEMENTS_CPU + 1) == "chunked"
    assert F.resolve_impl("auto", meta, F.AUTO_CHUNK_ELEMENTS) == "eager"
    assert F.resolve_impl("auto", meta, F.AUTO_CHUNK_ELEMENTS + 1) == "chunked"
    assert F.resolve_impl("auto", cpu, F.AUTO_CHUNK_ELEMENTS_CPU + 1, plain=True) == "chunked"
    assert F.resolve_impl("eager", cpu, 10**9) == "eager"
    assert F.resolve_impl("triton", cpu, 2) == "triton"
    with pytest.raises(ValueError, match=exactly(
            "impl must be one of ('auto', 'eager', 'chunked', 'triton'), got 'fast'")):
        F.resolve_impl("fast", cpu, 2)
    with pytest.raises(ValueError, match=exactly(
            "impl='triton' covers the margin losses; use 'chunked' for plain softmax")):
        F.resolve_impl("triton", cpu, 2, plain=True)


def test_bad_target_logits_and_reduction_are_named_exactly():
    good = torch.zeros(2, dtype=torch.float64)
    calls = [
        (lambda: F.target_cross_entropy(X, W, Y, good.long(), scale=1.0), TypeError,
         "target_logit must be a float tensor, got dtype torch.int64"),
        (lambda: F.target_cross_entropy(X, W, Y, torch.zeros(3), scale=1.0), ValueError,
         "target_logit must have shape (2,) on cpu, got shape (3,) on cpu"),
        (lambda: F.target_cross_entropy(X, W, Y, good.to("meta"), scale=1.0), ValueError,
         "target_logit must have shape (2,) on cpu, got shape (2,) on meta"),
        (lambda: F.target_cross_entropy(X, W, Y, torch.tensor([0.0, math.inf]), scale=1.0),
         ValueError, "target_logit contains non-finite values (e.g. inf); check the inputs"),
        (lambda: F.target_cross_entropy(X, W, Y, good, scale=0.0), ValueError,
         "scale must be a float in (0, 10000], got 0.0"),
        (lambda: F.margin_cross_entropy(X, W, Y, scale=1.0, reduction="avg"), ValueError,
         "reduction must be one of ('mean', 'sum', 'none'), got 'avg'"),
        (lambda: F.softmax_cross_entropy(X, W, Y, reduction="avg"), ValueError,
         "reduction must be one of ('mean', 'sum', 'none'), got 'avg'"),
    ]
    for call, error, message in calls:
        with pytest.raises(error, match=exactly(message)):
            call()


def test_non_target_row_param_shape_and_triton_are_named_exactly():
    def f(cos, param):
        return cos, torch.ones_like(cos)

    f.row_param = torch.zeros(3)
    with pytest.raises(ValueError, match=exactly(
            "non_target.row_param must have shape (2,), got (3,)")):
        F.target_cross_entropy(X, W, Y, torch.zeros(2, dtype=torch.float64), scale=1.0,
                               non_target=f)
    f.row_param = torch.zeros(2)
    with pytest.raises(ValueError, match=exactly(
            "impl='triton' has no non-target transform (non_target, e.g. CurricularFace); "
            "use impl='chunked'")):
        F.target_cross_entropy(X, W, Y, torch.zeros(2, dtype=torch.float64), scale=1.0,
                               impl="triton", non_target=f)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_non_finite_weight_is_named(impl):
    w = W.clone()
    w[1, 0] = math.nan
    message = exactly("weight contains non-finite values (e.g. nan); check the inputs")
    with pytest.raises(ValueError, match=message):
        F.margin_cross_entropy(X, w, Y, scale=1.0, impl=impl)
    with pytest.raises(ValueError, match=message):
        F.target_cross_entropy(X, w, Y, torch.zeros(2, dtype=torch.float64), scale=1.0,
                               impl=impl)
    if impl != "triton":
        with pytest.raises(ValueError, match=message):
            F.softmax_cross_entropy(X, w, Y, impl=impl)


def test_margin_logits_and_cosines_by_hand():
    def same(got: torch.Tensor, want: list) -> None:
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-15,
                                   atol=1e-15)

    same(F.cosine_logits(X, W), [[1.0, 0.0], [R, R]])
    same(F.target_cosines(X, W, Y), [1.0, R])
    margin = Margin(m3=0.5)
    same(F.margin_logits(X, W, Y, scale=2.0, margin=margin), [[1.0, 0.0], [2 * R, 2 * R - 1]])
    same(F.margin_logits(X, W, None, scale=2.0, margin=margin), [[2.0, 0.0], [2 * R, 2 * R]])
    half = F.cosine_logits(X.half(), W.half())
    assert half.dtype == torch.float32
    assert F.compute_dtype(torch.bfloat16) == torch.float32
    assert F.compute_dtype(torch.float64) == torch.float64


def test_predict_takes_the_best_class_across_blocks():
    x = torch.tensor([[1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    w = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.2], [-1.0, 0.0], [0.0, 2.0]])
    # row 0: class 2 (cos of [1, 0.2] beats [1, 0]); row 1: classes 0 and 4 tie, the first
    assert F.predict(x, w, block_size=2).tolist() == [2, 0, 3]
    assert F.predict(x, w, block_size=1).tolist() == [2, 0, 3]


def test_autocast_returns_float32():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.margin_cross_entropy(X.float(), W.float(), Y, scale=2.0, m3=0.5)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(sum(by_hand(2.0, 0.5, R - 0.5)) / 2, rel=2e-2)


def spy_on_paths(monkeypatch) -> list[str]:
    """The paths ("chunked", "triton") that each later call runs, in order."""
    import margin_softmax.chunked as chunked
    import margin_softmax.kernels as kernels

    ran = []

    def spy(module, name: str):
        real = getattr(module, name)

        def run(*args, **kwargs):
            ran.append(name.split("_")[0])
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, run)

    for name in ("chunked_margin_cross_entropy", "chunked_target_cross_entropy",
                 "chunked_softmax_cross_entropy"):
        spy(chunked, name)
    for name in ("triton_margin_cross_entropy", "triton_target_cross_entropy"):
        spy(kernels, name)
    return ran


@pytest.mark.parametrize("impl", IMPLS)
def test_impl_runs_its_own_path(monkeypatch, impl):
    ran = spy_on_paths(monkeypatch)
    target = torch.zeros(2, dtype=torch.float64)
    F.margin_cross_entropy(X, W, Y, scale=2.0, m3=0.5, impl=impl)
    F.target_cross_entropy(X, W, Y, target, scale=2.0, impl=impl)
    if impl != "triton":
        F.softmax_cross_entropy(X, W, Y, impl=impl)
    if impl == "triton":  # the kernels' own entry points may hand parts to chunked
        assert ran.count("triton") == 2 and ran[0] == "triton"
    else:
        assert ran == {"eager": [], "chunked": ["chunked"] * 3}[impl]


def test_auto_picks_chunked_by_the_number_of_classes(monkeypatch):
    ran = spy_on_paths(monkeypatch)
    many = F.AUTO_CHUNK_ELEMENTS_CPU + 1  # classes for one sample: past the crossover
    x, w, y = X[:1], torch.ones(many, 2, dtype=torch.float64), Y[:1]
    target = torch.zeros(1, dtype=torch.float64)
    F.margin_cross_entropy(x, w, y, scale=2.0, m3=0.5)
    F.target_cross_entropy(x, w, y, target, scale=2.0)
    F.softmax_cross_entropy(x, w, y)
    assert ran == ["chunked"] * 3
    F.margin_cross_entropy(x, w[:-1], y, scale=2.0, m3=0.5)
    F.target_cross_entropy(x, w[:-1], y, target, scale=2.0)
    F.softmax_cross_entropy(x, w[:-1], y)
    assert ran == ["chunked"] * 3  # at the crossover: eager


def test_auto_asks_for_the_kernels_only_for_margin_losses(monkeypatch):
    import margin_softmax.kernels as kernels

    monkeypatch.setattr(kernels, "auto_picks_triton", lambda tensor: True)  # a checked GPU
    cpu = torch.zeros(1, 2)
    assert F.resolve_impl("auto", cpu, 2) == "triton"
    assert F.resolve_impl("auto", cpu, 2, plain=True) == "eager"
    ran = spy_on_paths(monkeypatch)
    many = torch.ones(F.AUTO_CHUNK_ELEMENTS_CPU + 1, 2, dtype=torch.float64)

    def f(cos, param):
        return cos, torch.ones_like(cos)

    f.row_param = torch.zeros(1)
    F.target_cross_entropy(X[:1], many, Y[:1], torch.zeros(1, dtype=torch.float64), scale=2.0,
                           non_target=f)
    F.softmax_cross_entropy(X[:1], many, Y[:1])
    assert ran == ["chunked", "chunked"]


def test_predict_stays_on_the_embeddings_device():
    meta = torch.zeros(3, 2, device="meta")  # a stand-in for a GPU: no CPU tensor may mix in
    index = F.predict(meta, torch.zeros(5, 2, device="meta"), block_size=2)
    assert (index.device.type, index.dtype, index.shape) == ("meta", torch.int64, (3,))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n", [2, 0])
def test_the_loss_comes_back_in_the_inputs_dtype_or_float32_under_autocast(impl, n):
    x, w, y = X[:n].float(), W.float(), Y[:n]

    def losses(x, w, target_dtype):
        target = torch.zeros(n, dtype=target_dtype)
        return [F.margin_cross_entropy(x, w, y, scale=2.0, m3=0.5, impl=impl),
                F.target_cross_entropy(x, w, y, target, scale=2.0, impl=impl),
                *([] if impl == "triton" else [F.softmax_cross_entropy(x, w, y, impl=impl)])]

    dtypes = [loss.dtype for loss in losses(x.bfloat16(), w.bfloat16(), torch.bfloat16)]
    assert set(dtypes) == {torch.bfloat16}
    assert {loss.dtype for loss in losses(x, w, torch.float64)} == {torch.float32}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert {loss.dtype for loss in losses(x, w, torch.float32)} == {torch.float32}


def test_half_inputs_are_summed_in_float32():
    # logits x W^T are exact in bfloat16; a bfloat16 softmax would give row 0's loss as 0
    loss = F.softmax_cross_entropy(X.bfloat16(), W.bfloat16(), Y, reduction="none")
    want = torch.tensor([softplus(-6.0), softplus(2.5)], dtype=torch.float64).bfloat16()
    assert torch.equal(loss, want)
    cos = F.target_cosines(X.half(), torch.ones(2, 2).half(), Y)  # normalised in float32
    assert cos.dtype == torch.float32 and cos[0].item() == pytest.approx(R, abs=1e-7)


def test_target_logits_and_bias_of_another_float_dtype_are_cast():
    target = torch.tensor([1.0, -2.0], dtype=torch.float64)
    loss = F.target_cross_entropy(X.float(), W.float(), Y, target, scale=3.0, reduction="none",
                                  impl="eager")
    assert loss.tolist() == pytest.approx([softplus(-1.0), softplus(3.0 * R + 2.0)], abs=1e-6)
    bias = torch.tensor([0.5, -1.0], dtype=torch.float64)
    loss = F.softmax_cross_entropy(X.float(), W.float(), Y, bias, reduction="none",
                                   impl="eager")
    assert loss.tolist() == pytest.approx([softplus(-7.5), softplus(4.0)], abs=1e-6)


def test_half_weights_are_normalised_in_float32_and_rounded_once():
    w = torch.tensor([[-0.751953125, -1.3017578125]])  # exact in float16
    true = -0.751953125 / math.hypot(0.751953125, 1.3017578125)
    cos = F.cosine_logits(torch.tensor([[1.0, 0.0]]).half(), w.half())
    assert cos.item() == torch.tensor(true).half().item()  # -0.5, not -0.50048828125
