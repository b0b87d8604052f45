"""The chunked path against eager (the readable reference), and the shard contract that the
class-sharded head builds on."""

import math

import pytest
import torch

from margin_softmax import margin_cross_entropy
from margin_softmax.chunked import shard_gradients, shard_logsumexp
from margin_softmax.functional import normalize
from margin_softmax.margins import Margin

MARGINS = {
    "normface": (Margin(), False),
    "cosface": (Margin(m3=0.35), False),
    "arcface-seed": (Margin(m2=0.5, fallback="seed"), False),
    "arcface-none": (Margin(m2=0.5, fallback="none"), False),
    "arcface-continuous": (Margin(m2=0.5, fallback="continuous"), False),
    "arcface-easy": (Margin(m2=0.5, fallback="easy"), False),
    "arcface-straight-through": (Margin(m2=0.5, straight_through=True), False),
    "sphereface-piecewise": (Margin(m1=4), False),
    "sphereface-blend-by-norm": (Margin(m1=4, blend=5.0), True),
    "combined": (Margin(m1=1.2, m2=0.3, m3=0.2), False),
}


def loss_and_grads(impl, x, w, y, margin, by_norm, reduction, scale=30.0, seed=1, **kw):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    loss = margin_cross_entropy(
        x,
        w,
        y,
        scale=scale,
        margin=margin,
        scale_by_norm=by_norm,
        reduction=reduction,
        impl=impl,
        **kw,
    )
    upstream = torch.randn(
        loss.shape, dtype=loss.dtype, generator=torch.Generator().manual_seed(seed)
    )
    dx, dw = torch.autograd.grad(loss, (x, w), upstream)
    return loss.detach(), dx, dw


def problem(n, c, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    return x.to(dtype), w.to(dtype), y


def assert_close_rel(actual, expected, rel):
    for a, e in zip(actual, expected, strict=True):
        scale = e.abs().max().clamp_min(1e-30)
        assert float((a - e).abs().max() / scale) < rel


@pytest.mark.parametrize("name", list(MARGINS))
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_chunked_equals_eager(name, dtype, rel):
    margin, by_norm = MARGINS[name]
    x, w, y = problem(9, 37, 6, dtype)
    for reduction in ("mean", "sum", "none"):
        expected = loss_and_grads("eager", x, w, y, margin, by_norm, reduction)
        actual = loss_and_grads("chunked", x, w, y, margin, by_norm, reduction)
        assert_close_rel(actual, expected, rel)


def shard_inputs(n=6, c=23, d=5, scale=20.0):
    x, w, y = problem(n, c, d)
    x_hat = normalize(x)
    cos_t = (x_hat * normalize(w[y])).sum(1)
    psi, dpsi = Margin(m2=0.4).psi_and_grad(cos_t)
    r = torch.full((n,), scale, dtype=torch.float64) * (1 + torch.rand(n, dtype=torch.float64))
    return x_hat, w, y, r * psi, dpsi, r


@pytest.mark.parametrize("bounds", [(0, 23), (0, 10, 23), (0, 1, 7, 7, 22, 23)])
def test_shards_combine_to_the_full_result(bounds):
    x_hat, w, y, target_logit, dpsi, r = shard_inputs()
    full = shard_logsumexp(x_hat, w, y, target_logit, r, block_size=4)
    parts, pieces = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        local = torch.where((y >= lo) & (y < hi), y - lo, -1)
        parts.append((w[lo:hi], local))
    lse = torch.stack([shard_logsumexp(x_hat, ws, t, target_logit, r, 3) for ws, t in parts])
    combined = torch.logsumexp(lse, 0)
    torch.testing.assert_close(combined, full, rtol=1e-12, atol=1e-12)
    if any(hi == lo for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)):
        assert torch.isneginf(lse).any()

    row_grad = torch.rand(len(y), dtype=torch.float64)
    expected = shard_gradients(x_hat, w, y, target_logit, dpsi, r, full, row_grad, 5)
    for ws, t in parts:
        pieces.append(shard_gradients(x_hat, ws, t, target_logit, dpsi, r, combined, row_grad, 2))
    torch.testing.assert_close(sum(p[0] for p in pieces), expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.cat([p[1] for p in pieces]), expected[1])
    torch.testing.assert_close(sum(p[2] for p in pieces), expected[2], rtol=1e-12, atol=1e-12)


def test_shard_gradients_match_autograd():
    """The primitives against autograd through an explicit (N, C) computation."""
    x, w, y = problem(5, 11, 4)
    x = x.requires_grad_()
    w = w.requires_grad_()
    r = torch.linspace(5, 15, 5, dtype=torch.float64).requires_grad_()
    margin = Margin(m1=1.5, m2=0.2)
    cos = normalize(x) @ normalize(w).t()  # (N, C)
    psi, dpsi = margin.psi_and_grad(cos.gather(1, y[:, None])[:, 0].detach())
    psi = psi + dpsi * (cos.gather(1, y[:, None])[:, 0] - cos.gather(1, y[:, None])[:, 0].detach())
    logits = (r[:, None] * cos).scatter(1, y[:, None], (r * psi)[:, None])
    row_grad = torch.rand(5, dtype=torch.float64)
    loss = (row_grad * (logits.logsumexp(1) - (r * psi))).sum()
    dx_hat_free, dw, dr = torch.autograd.grad(loss, (x, w, r))
    with torch.no_grad():
        x_hat = normalize(x)
        tl = (r * psi).detach()
        lse = shard_logsumexp(x_hat, w, y, tl, r.detach(), 3)
        d_x_hat, d_w, d_r = shard_gradients(x_hat, w, y, tl, dpsi, r.detach(), lse, row_grad, 3)
    torch.testing.assert_close(lse, logits.logsumexp(1).detach())
    torch.testing.assert_close(d_w, dw)
    torch.testing.assert_close(d_r, dr)
    radial = (x_hat * d_x_hat).sum(1, keepdim=True)
    torch.testing.assert_close(
        (d_x_hat - x_hat * radial) / x.norm(dim=1, keepdim=True), dx_hat_free
    )


def test_empty_shard():
    x_hat, w, y, target_logit, dpsi, r = shard_inputs()
    none = torch.full_like(y, -1)
    lse = shard_logsumexp(x_hat, w[:0], none, target_logit, r)
    assert torch.isneginf(lse).all()
    dx, dw, dr = shard_gradients(x_hat, w[:0], none, target_logit, dpsi, r, lse + 1, r)
    assert dw.shape == (0, 5) and not dx.any() and not dr.any()
    assert math.isfinite(float(dx.sum()))
