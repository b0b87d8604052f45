"""Rung 2: PyTorch values and autograd gradients against the NumPy reference (float64)."""

import math

import numpy as np
import pytest
import torch

import margin_softmax as ms
from margin_softmax import reference as R
from margin_softmax.functional import margin_logits, predict, softmax_cross_entropy
from margin_softmax.margins import Margin, apply_margin

CASES = [  # (torch kwargs, reference kwargs)
    (dict(), dict()),
    (dict(m3=0.35), dict(m3=0.35)),
    (dict(m2=0.5), dict(m2=0.5)),
    (dict(m2=0.5, fallback="seed"), dict(m2=0.5, fallback="seed")),
    (dict(m2=0.5, fallback="continuous"), dict(m2=0.5, fallback="continuous")),
    (dict(m2=0.5, fallback="none"), dict(m2=0.5, fallback="none")),
    (dict(m2=0.5, fallback="easy"), dict(m2=0.5, fallback="easy")),
    (dict(m2=0.3, straight_through=True, fallback="seed"),
     dict(m2=0.3, fallback="seed", straight_through=True)),
    (dict(m1=4.0, fallback="piecewise"), dict(m1=4, fallback="piecewise")),
    (dict(m1=3.0, blend=5.0, fallback="piecewise"), dict(m1=3, fallback="piecewise", blend=5.0)),
    (dict(m1=2.0, scale_by_norm=True, fallback="piecewise"),
     dict(m1=2, fallback="piecewise", scale_by_norm=True)),
    (dict(m1=1.0, m2=0.3, m3=0.2), dict(m2=0.3, m3=0.2)),
    (dict(m1=1.4, m2=0.2, m3=0.1, fallback="continuous"),
     dict(m1=1.4, m2=0.2, m3=0.1, fallback="continuous")),
    (dict(m1=0.9, m2=0.4, m3=0.1, fallback="none"), dict(m1=0.9, m2=0.4, m3=0.1, fallback="none")),
]


def make_problem(n, c, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype) * 3
    w = torch.randn(c, d, generator=g, dtype=dtype)
    y = torch.randint(0, c, (n,), generator=g)
    return x, w, y


def torch_loss_and_grads(x, w, y, scale, **kw):
    x = x.clone().requires_grad_()
    w = w.clone().requires_grad_()
    loss = ms.margin_cross_entropy(x, w, y, scale=scale, impl="eager", **kw)
    loss.backward()
    return loss.detach(), x.grad, w.grad


@pytest.mark.parametrize("torch_kw, ref_kw", CASES)
@pytest.mark.parametrize("shape", [(1, 2, 3), (7, 11, 5), (16, 40, 8)])
def test_matches_numpy_reference_in_float64(torch_kw, ref_kw, shape):
    x, w, y = make_problem(*shape, seed=sum(shape))
    loss, dx, dw = torch_loss_and_grads(x, w, y, 30.0, **torch_kw)
    ref_loss, ref_dx, ref_dw = R.margin_softmax_loss(x.numpy(), w.numpy(), y.numpy(), 30.0,
                                                     **ref_kw)
    assert float(loss) == pytest.approx(ref_loss, rel=1e-9)
    np.testing.assert_allclose(dx.numpy(), ref_dx, rtol=1e-9, atol=1e-12 * np.abs(ref_dx).max())
    np.testing.assert_allclose(dw.numpy(), ref_dw, rtol=1e-9, atol=1e-12 * np.abs(ref_dw).max())


def test_matches_reference_beyond_pi_and_at_large_scale():
    x, w, y = make_problem(6, 5, 4, seed=3)
    x = -w[y] + 0.05 * x  # theta near pi: inside every fallback's region
    for fallback in ("seed", "continuous", "none"):
        loss, dx, dw = torch_loss_and_grads(x, w, y, 64.0, m2=0.5, fallback=fallback)
        ref = R.margin_softmax_loss(x.numpy(), w.numpy(), y.numpy(), 64.0, m2=0.5,
                                    fallback=fallback)
        assert float(loss) == pytest.approx(ref[0], rel=1e-9)
        np.testing.assert_allclose(dx.numpy(), ref[1], rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(dw.numpy(), ref[2], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions(reduction):
    x, w, y = make_problem(5, 7, 3, seed=1)
    out = ms.margin_cross_entropy(x, w, y, scale=10.0, m2=0.2, reduction=reduction)
    per_sample = ms.margin_cross_entropy(x, w, y, scale=10.0, m2=0.2, reduction="none")
    mean = ms.margin_cross_entropy(x, w, y, scale=10.0, m2=0.2)
    assert per_sample.shape == (5,)
    assert float(per_sample.mean()) == pytest.approx(float(mean), rel=1e-12)
    if reduction == "sum":
        assert float(out) == pytest.approx(float(per_sample.sum()), rel=1e-12)


def test_softmax_cross_entropy_matches_reference():
    x, w, y = make_problem(6, 9, 4, seed=4)
    b = torch.randn(9, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x.requires_grad_()
    loss = softmax_cross_entropy(x, w, y, b)
    loss.backward()
    loss = loss.detach()
    ref_loss, dZ = R.softmax_loss((x @ w.T + b).detach().numpy(), y.numpy())
    assert float(loss) == pytest.approx(ref_loss, rel=1e-12)
    # atol: an entry of the gradient near 0 (an unseeded bias made one fail rtol alone)
    np.testing.assert_allclose(x.grad.numpy(), dZ @ w.numpy(), rtol=1e-10, atol=1e-14)


def test_margin_logits_and_predict():
    x, w, y = make_problem(8, 6, 4, seed=5)
    plain = margin_logits(x, w, None, scale=2.0)
    cos = torch.nn.functional.normalize(x) @ torch.nn.functional.normalize(w).T
    torch.testing.assert_close(plain, 2.0 * cos)
    with_margin = margin_logits(x, w, y, scale=2.0, margin=Margin(m3=0.4))
    diff = (plain - with_margin) / 2.0
    expected = torch.zeros_like(diff)
    expected[torch.arange(8), y] = 0.4
    torch.testing.assert_close(diff, expected)
    assert torch.equal(predict(x, w, block_size=4), cos.argmax(dim=1))


def test_apply_margin_backward_is_psi_prime_and_finite_at_the_poles():
    c = torch.tensor([-1.0, -0.3, 0.2, 0.99, 1.0], dtype=torch.float64, requires_grad=True)
    m = Margin(m2=0.5, fallback="none")
    apply_margin(c, m).sum().backward()
    assert torch.isfinite(c.grad).all()
    theta = torch.acos(c.detach()[1:4])
    torch.testing.assert_close(c.grad[1:4], torch.sin(theta + 0.5) / torch.sin(theta))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_accurate_and_keeps_dtype(dtype):
    x, w, y = make_problem(32, 50, 16, seed=6, dtype=torch.float64)
    exact = ms.margin_cross_entropy(x, w, y, scale=64.0, m2=0.5)
    xh, wh = x.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()
    loss = ms.margin_cross_entropy(xh, wh, y, scale=64.0, m2=0.5)
    loss.backward()
    assert loss.dtype == dtype and xh.grad.dtype == dtype
    assert torch.isfinite(xh.grad).all() and torch.isfinite(wh.grad).all()
    # rounding the inputs costs ~s * 2^-8 in the logits for bf16: far from an overflow
    assert loss.item() == pytest.approx(exact.item(), rel=0.05)


def test_autocast_casts_weight_and_returns_float32():
    x, w, y = make_problem(8, 10, 6, seed=7, dtype=torch.float32)
    w.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ms.margin_cross_entropy(x, w, y, scale=30.0, m2=0.2)
    assert loss.dtype == torch.float32
    loss.backward()
    assert w.grad.dtype == torch.float32 and torch.isfinite(w.grad).all()
    exact = ms.margin_cross_entropy(x, w.detach(), y, scale=30.0, m2=0.2)
    assert loss.item() == pytest.approx(exact.item(), rel=0.05)


def test_torch_compile_gives_the_same_loss_and_gradient():
    x, w, y = make_problem(6, 9, 5, seed=8, dtype=torch.float32)
    head = ms.ArcFace(5, 9, margin=0.3, scale=16.0)
    head.weight.data.copy_(w)
    compiled = torch.compile(head, backend="aot_eager")
    loss = compiled(x, y)
    loss.backward()
    grad = head.weight.grad.clone()
    head.weight.grad = None
    eager = head(x, y)
    eager.backward()
    torch.testing.assert_close(loss, eager)
    torch.testing.assert_close(grad, head.weight.grad)


def test_ddp_wrapped_head_matches_the_plain_head(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        x, w, y = make_problem(6, 9, 5, seed=9, dtype=torch.float32)
        head = ms.CosFace(5, 9, margin=0.3, scale=16.0)
        head.weight.data.copy_(w)
        ddp = torch.nn.parallel.DistributedDataParallel(head)
        ddp(x, y).backward()
        grad = head.weight.grad.clone()
        head.weight.grad = None
        head(x, y).backward()
        torch.testing.assert_close(grad, head.weight.grad)
    finally:
        dist.destroy_process_group()


def test_cosface_and_arcface_logits_follow_the_formulas():
    x, w, y = make_problem(5, 4, 3, seed=10)
    cos = torch.nn.functional.normalize(x) @ torch.nn.functional.normalize(w).T
    target = cos[torch.arange(5), y]
    arc = Margin(m2=0.5, fallback="none").psi(target)
    torch.testing.assert_close(arc, torch.cos(torch.acos(target) + 0.5))
    sphere = Margin(m1=4.0, fallback="piecewise").psi(target)
    theta = torch.acos(target)
    k = torch.floor(4 * theta / math.pi)
    torch.testing.assert_close(sphere, (-1) ** k * torch.cos(4 * theta) - 2 * k)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sphereface_psi_prime_reaches_its_limit_at_the_pole(dtype):
    # psi = T_4(c) = 8c^4 - 8c^2 + 1 near c = 1 (k = 0) and -T_4(c) - 6 near c = -1 (k = 3),
    # so psi'(1) = 16 and psi'(-1) = +16 (monotonic), neither 0 nor -16
    margin = Margin(m1=4.0, fallback="piecewise")
    c = torch.tensor([1.0, 1 - 1e-3, -1.0, -1 + 1e-3], dtype=dtype)
    _, grad = margin.psi_and_grad(c)
    expected = (32 * c**3 - 16 * c) * torch.tensor([1, 1, -1, -1], dtype=dtype)
    torch.testing.assert_close(grad, expected, rtol=1e-3, atol=0)


@pytest.mark.parametrize("impl", ["eager", "chunked"])
def test_softmax_cross_entropy_under_autocast(impl):
    x, w, y = make_problem(8, 10, 6, seed=11, dtype=torch.float32)
    w.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = softmax_cross_entropy(x.to(torch.bfloat16), w, y, impl=impl)
    assert loss.dtype == torch.float32
    loss.backward()
    assert w.grad.dtype == torch.float32 and torch.isfinite(w.grad).all()
    exact = softmax_cross_entropy(x, w.detach(), y)
    assert loss.item() == pytest.approx(exact.item(), rel=0.05)
