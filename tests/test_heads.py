"""The classic heads: API, parity with PyTorch Metric Learning, extremes, bad input."""

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import margin_softmax as ms
from margin_softmax import reference as R

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")


def problem(n=6, c=9, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=g, dtype=dtype) * 2,
        torch.randn(c, d, generator=g, dtype=dtype),
        torch.randint(0, c, (n,), generator=g),
    )


def head_with_weight(head, w):
    head = head.to(w.dtype)
    head.weight.data.copy_(w)
    return head


def grads(module, x, y):
    x = x.clone().requires_grad_()
    module.zero_grad()
    loss = module(x, y)
    loss.backward()
    weight = module.W if hasattr(module, "W") else module.weight
    return loss.detach(), x.grad, weight.grad


# ----------------------------------------------------------------------------- peers


@pytest.mark.parametrize("margin", [0.2, 0.5])
def test_arcface_equals_pml_arcface(margin):
    x, w, y = problem(seed=1)
    x[0] = -w[y[0]] * 3 + 0.01  # one sample beyond theta + m > pi, where conventions differ
    ours = head_with_weight(ms.ArcFace(5, 9, margin=margin, scale=30.0), w)
    theirs = pml_losses.ArcFaceLoss(9, 5, margin=math.degrees(margin), scale=30.0).double()
    theirs.W.data.copy_(w.T)
    for a, b in zip(grads(ours, x, y), grads(theirs, x, y), strict=True):
        torch.testing.assert_close(a, b.T if a.shape != b.shape else b, rtol=1e-9, atol=1e-12)


def test_cosface_equals_pml_cosface():
    x, w, y = problem(seed=2)
    ours = head_with_weight(ms.CosFace(5, 9, margin=0.35, scale=64.0), w)
    theirs = pml_losses.CosFaceLoss(9, 5, margin=0.35, scale=64.0).double()
    theirs.W.data.copy_(w.T)
    for a, b in zip(grads(ours, x, y), grads(theirs, x, y), strict=True):
        torch.testing.assert_close(a, b.T if a.shape != b.shape else b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_sphereface_equals_pml_sphereface(m):
    x, w, y = problem(seed=3)
    ours = head_with_weight(ms.SphereFace(5, 9, margin=m, scale=1.5, scale_by_norm=True), w)
    theirs = pml_losses.SphereFaceLoss(9, 5, margin=m, scale=1.5).double()
    theirs.W.data.copy_(w.T)
    for a, b in zip(grads(ours, x, y), grads(theirs, x, y), strict=True):
        torch.testing.assert_close(a, b.T if a.shape != b.shape else b, rtol=1e-8, atol=1e-11)


# ----------------------------------------------------------------------------- API


def test_seed_one_liner_returns_loss_and_prec1():
    x, w, y = problem(n=40, c=4, d=3, seed=4, dtype=torch.float32)
    head = head_with_weight(ms.AAMSoftmax(3, 4, margin=0.2, scale=30.0), w)
    loss, prec1 = head.loss_and_accuracy(x, y)
    assert loss.requires_grad and loss.dim() == 0
    cos = torch.nn.functional.normalize(x) @ torch.nn.functional.normalize(w).T
    assert prec1 == pytest.approx(R.accuracy(cos.numpy(), y.numpy())[0])


def test_logits_with_and_without_margin():
    x, w, y = problem(seed=5)
    head = head_with_weight(ms.CosFace(5, 9, margin=0.3, scale=10.0), w)
    plain, trained = head.logits(x), head.logits(x, y)
    diff = plain - trained
    assert torch.allclose(diff[torch.arange(6), y], torch.full((6,), 3.0, dtype=torch.float64))
    diff[torch.arange(6), y] = 0
    assert torch.count_nonzero(diff) == 0
    assert torch.equal(head.predict(x), plain.argmax(dim=1))


def test_head_loss_equals_reference_losses():
    x, w, y = problem(seed=6)
    X, W, Y = x.numpy(), w.numpy(), y.numpy()
    pairs = [
        (ms.NormFace(5, 9, scale=20.0), R.normface_loss(X, W, Y, s=20.0)),
        (ms.AMSoftmax(5, 9, margin=0.35, scale=30.0), R.am_softmax_loss(X, W, Y)),
        (ms.ArcFace(5, 9, margin=0.2, scale=30.0), R.aam_softmax_loss(X, W, Y)),
        (ms.SphereFace(5, 9, margin=4, scale=30.0), R.sphereface_loss(X, W, Y)),
        (ms.CombinedMargin(5, 9, m1=1.0, m2=0.3, m3=0.2, scale=64.0),
         R.combined_margin_loss(X, W, Y, 64.0, 1.0, 0.3, 0.2)),
    ]
    for head, (ref_loss, ref_dx, ref_dw) in pairs:
        loss, dx, dw = grads(head_with_weight(head, w), x, y)
        assert float(loss) == pytest.approx(ref_loss, rel=1e-9), type(head).__name__
        np.testing.assert_allclose(dx.numpy(), ref_dx, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(dw.numpy(), ref_dw, rtol=1e-8, atol=1e-12)


def test_combined_margin_uses_every_margin():
    """InsightFace's combined mode silently runs as CosFace when m3 > 0: ours must not."""
    x, w, y = problem(seed=7)
    losses = {}
    for m in [(1.0, 0.3, 0.2), (1.0, 0.0, 0.2), (1.0, 0.3, 0.0), (1.2, 0.3, 0.2)]:
        head = head_with_weight(ms.CombinedMargin(5, 9, m1=m[0], m2=m[1], m3=m[2]), w)
        losses[m] = head(x, y).item()
    assert len({round(v, 9) for v in losses.values()}) == 4


def test_sphereface_annealing_blends_softmax_in():
    x, w, y = problem(seed=8)
    head = head_with_weight(ms.SphereFace(5, 9, margin=4, anneal=True), w)
    first = head(x, y)  # lambda = 1000 / 1.12
    assert head.blend == pytest.approx(max(5.0, 1000 / (1 + 0.12 * 1)))
    ref = R.sphereface_loss(x.numpy(), w.numpy(), y.numpy(), blend=1000 / 1.12)[0]
    assert first.item() == pytest.approx(ref, rel=1e-9)
    for _ in range(3000):
        head.iteration += 1
    assert head.blend == 5.0  # lambda_min
    head.eval()
    head(x, y)
    assert int(head.iteration) == 3001  # eval forwards do not advance the schedule


def test_softmax_loss_head_with_and_without_bias():
    x, w, y = problem(seed=9)
    head = head_with_weight(ms.SoftmaxLoss(5, 9), w)
    head.bias.data = torch.linspace(-1, 1, 9, dtype=torch.float64)
    ref = R.softmax_loss((x @ w.T + head.bias).detach().numpy(), y.numpy())[0]
    assert head(x, y).item() == pytest.approx(ref, rel=1e-12)
    assert ms.SoftmaxLoss(5, 9, bias=False).bias is None


def test_state_dict_round_trip():
    head = ms.ArcFace(4, 7)
    other = ms.ArcFace(4, 7)
    other.load_state_dict(head.state_dict())
    assert torch.equal(head.weight, other.weight)


# ----------------------------------------------------------------------------- extremes

HEADS = [
    lambda: ms.NormFace(4, 3),
    lambda: ms.CosFace(4, 3),
    lambda: ms.ArcFace(4, 3, margin=0.5, fallback="seed"),
    lambda: ms.ArcFace(4, 3, margin=0.5, fallback="none"),
    lambda: ms.ArcFace(4, 3, margin=0.5, fallback="continuous"),
    lambda: ms.SphereFace(4, 3, margin=4),
    lambda: ms.SphereFace(4, 3, margin=4, scale_by_norm=True, scale=1.0),
    lambda: ms.CombinedMargin(4, 3, m1=1.2, m2=0.3, m3=0.2),
]


@pytest.mark.parametrize("make_head", HEADS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_finite_at_cos_plus_minus_one_and_zero_embeddings(make_head, dtype):
    head = make_head().to(dtype)
    w = head.weight.detach()
    x = torch.stack([w[0] * 2.5, -w[1], torch.zeros_like(w[0]), w[2]])  # cos = 1, -1, 0-row
    y = torch.tensor([0, 1, 2, 2])
    x.requires_grad_()
    loss = head(x, y)
    loss.backward()
    assert loss.dtype == dtype
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "labels, match",
    [
        (torch.tensor([0, 1, 9]), r"labels must be in \[0, 9\), got label 9"),
        (torch.tensor([0, -1, 2]), "got label -1"),
        (torch.tensor([0, 1]), r"labels must have shape \(3,\).*got shape \(2,\)"),
        (torch.tensor([0.0, 1.0, 2.0]), "labels must be integer.*float32"),
    ],
)
def test_bad_labels(labels, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ms.ArcFace(5, 9)(torch.randn(3, 5), labels)


def test_bad_embeddings():
    head = ms.CosFace(5, 9)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="size 4 in dim 1 .*embedding_dim=5"):
        head(torch.randn(2, 4), y)
    for bad in (float("nan"), float("inf")):
        x = torch.randn(2, 5)
        x[1, 2] = bad
        with pytest.raises(ValueError, match=f"embeddings contains non-finite.*{bad}"):
            head(x, y)
    with pytest.raises(ValueError, match="2-D"):
        head(torch.randn(5), y)
    with pytest.raises(TypeError, match="dtype torch.float64 differs"):
        head(torch.randn(2, 5, dtype=torch.float64), y)


@pytest.mark.parametrize("impl", ["eager", "chunked"])
@pytest.mark.parametrize("make", [
    lambda impl: ms.ArcFace(5, 9, impl=impl),
    lambda impl: ms.SoftmaxLoss(5, 9, impl=impl),
    lambda impl: ms.SubCenterArcFace(5, 9, sub_centers=2, impl=impl),
    lambda impl: ms.CurricularFace(5, 9, impl=impl),
])
def test_a_weight_with_nan_or_inf_is_named_not_a_silent_nan_loss(make, impl):
    """A diverged run's weight (one NaN or inf in a row no sample targets): a ValueError that
    names the weight, from every path, instead of a NaN loss."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 5, generator=g), torch.tensor([0, 1, 2, 3])
    for bad in (float("nan"), float("inf"), -float("inf")):
        head = make(impl)
        with torch.no_grad():
            head.weight[-1, 2] = bad
        with pytest.raises(ValueError, match=f"weight contains non-finite.*{bad}"):
            head(x.clone().requires_grad_(), y)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("impl", ["eager", "chunked"])
def test_a_weight_inf_that_gives_only_minus_inf_logits_is_named_not_a_nan_gradient(impl,
                                                                                   reduction):
    """Plain softmax, an inf in a weight row whose logit is -inf for every sample: the loss is
    finite (that class has probability 0) but d_x = sum_j p_ij w_j is 0 * inf = NaN. A
    ValueError naming the weight (was a defect: a silent NaN gradient in 1 of 16 random
    batches). reduction "none" runs the chunked path's backward sweep; without a gradient the
    finite loss is the right answer and comes back."""
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    x[:, 2] = -x[:, 2].abs() - 0.1  # x_i2 < 0: logit_i8 = x_i2 * inf = -inf for every i
    y = torch.tensor([0, 1, 2, 3])
    w = torch.randn(9, 5, generator=torch.Generator().manual_seed(2))
    w[-1, 2] = float("inf")
    loss = ms.softmax_cross_entropy(x, w, y, reduction=reduction, impl=impl)
    expected = F.cross_entropy(x @ w[:-1].t(), y, reduction=reduction)  # class 8 has p = 0
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="weight contains non-finite.*inf"):
        out = ms.softmax_cross_entropy(x.clone().requires_grad_(), w, y, reduction=reduction,
                                       impl=impl)
        out.sum().backward()


def test_labels_on_another_device_and_an_absurd_scale_are_named():
    x, w = torch.randn(3, 5), torch.randn(9, 5)
    y = torch.zeros(3, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match="labels are on meta but the embeddings are on cpu"):
        ms.margin_cross_entropy(x, w, y, scale=30.0)
    y = torch.zeros(3, dtype=torch.long)
    for scale in (2e4, 1e300):
        with pytest.raises(ValueError, match=r"scale must be a float in \(0, 10000\], got "
                           + re.escape(repr(scale))):
            ms.margin_cross_entropy(x, w, y, scale=scale, impl="chunked")
    assert torch.isfinite(ms.margin_cross_entropy(x, w, y, scale=1e4, m2=0.5, impl="chunked"))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ms.ArcFace(5, 9, margin=-0.1), r"margin must be in \[0, pi\).*-0.1"),
        (lambda: ms.ArcFace(5, 9, margin=math.pi), r"\[0, pi\).*3.14"),
        (lambda: ms.ArcFace(5, 9, fallback="clamp"), "fallback must be one of.*'clamp'"),
        (lambda: ms.SphereFace(5, 9, margin=1.5), "positive int.*1.5"),
        (lambda: ms.SphereFace(5, 9, margin=0), "positive int.*0"),
        (lambda: ms.CosFace(5, 9, scale=0.0), r"scale must be a float in \(0, 10000\], got 0.0"),
        (lambda: ms.NormFace(5, 9, scale=-2.0), "scale.*-2.0"),
        (lambda: ms.CosFace(5, 0), "num_classes must be a positive int, got 0"),
        (lambda: ms.CombinedMargin(5, 9, m1=0.0), "m1 must be > 0, got 0.0"),
        (lambda: ms.CombinedMargin(5, 9, m1=2.0, m2=0.1, fallback="seed"), "m1 == 1 only"),
        (lambda: ms.CosFace(5, 9, margin=float("nan")),
         r"margin \(additive cosine margin\) must be in \[0, 2\), got nan"),
    ],
)
def test_bad_parameters(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_bad_impl_and_reduction():
    x, w, y = problem()
    with pytest.raises(ValueError, match="impl must be one of.*'fast'"):
        ms.margin_cross_entropy(x, w, y, scale=1.0, impl="fast")
    with pytest.raises(ValueError, match="reduction must be one of.*'avg'"):
        ms.margin_cross_entropy(x, w, y, scale=1.0, reduction="avg")


def test_sizes_may_be_numpy_integers_but_not_floats_or_bools():
    """num_classes = labels.max() + 1 on a NumPy array is an np.int64: accepted wherever a
    size is (as a Python int); 10.0 and True are not sizes."""
    from margin_softmax.distributed import ArcFacePartialFC

    c = np.arange(10).max() + 1  # np.int64(10)
    head = ms.SubCenterArcFace(np.int32(5), c, sub_centers=np.int64(2))
    assert (head.num_classes, head.embedding_dim, head.sub_centers) == (10, 5, 2)
    assert type(head.num_classes) is int and head.weight.shape == (20, 5)
    assert ArcFacePartialFC(5, c).num_classes == 10
    scheduler = ms.MarginScheduler(head, iterations_per_epoch=np.int64(3), increase_start_epoch=1,
                                   fix_start_epoch=np.int64(2))
    scheduler.step()
    for bad in (10.0, True):
        with pytest.raises(ValueError, match=f"num_classes must be a positive int, got {bad}"):
            ms.ArcFace(5, bad)


def test_softmax_loss_refuses_triton_and_magface_its_bounds_set_later():
    """Both were accepted until the first forward, or (MagFace, a scheduler lowering
    u_margin under l_margin) not at all: the margin then shrank as the magnitude grew."""
    with pytest.raises(ValueError, match="impl='triton' covers the margin losses"):
        ms.SoftmaxLoss(5, 9, impl="triton")
    head = ms.MagFace(5, 9)
    head.u_margin = 0.2  # below l_margin = 0.45
    with pytest.raises(ValueError, match=r"l_margin must be <= u_margin, .* u_margin=0.2"):
        head(torch.randn(3, 5) * 20, torch.tensor([0, 1, 2]))
