"""The chunked path against eager (the readable reference) under every schedule it has, and
the shard contract that the class-sharded head builds on."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from margin_softmax import margin_cross_entropy, softmax_cross_entropy
from margin_softmax.chunked import plan, shard_gradients, shard_logsumexp, sweeps
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

# name -> (KEEP_BYTES per class, MIN_KEEP_ROWS, tile bytes per row, shift by the tile max):
# the schedules of function.py at test sizes: one kept block, several uneven kept blocks, two
# sweeps; each with the fixed shift r - 64 (r <= 75) and with the tile's max.
SCHEDULES = {
    "fused-one-block": (None, None, None, False),
    "fused-blocks": (4 * 4, 1, 4 * 5, False),  # widest block 4 rows: widths [4, 4, 3], N = 11
    "fused-blocks-tile-max": (4 * 4, 1, 4 * 5, True),
    "two-sweeps": (4 * 4, 10**9, 4 * 6, False),
    "two-sweeps-tile-max": (4 * 4, 10**9, 4 * 6, True),
    "tile-of-one-class": (4 * 5, 1, 4, False),
}


def force_schedule(monkeypatch, name: str, n: int, c: int) -> None:
    """Shrink the chunked path's sizes so that schedule `name` runs at N = n, C = c."""
    keep, min_rows, tile, tile_max = SCHEDULES[name]
    if tile_max:
        monkeypatch.setattr(sweeps, "SHIFT_MAX_SCALE", -1.0)
    monkeypatch.setattr(plan, "ROW_ALIGN", 1)
    monkeypatch.setattr(plan, "MIN_TILE_CLASSES", 1)
    if keep is not None:
        monkeypatch.setattr(plan, "KEEP_BYTES", keep * c)
        monkeypatch.setattr(plan, "MIN_KEEP_ROWS", min_rows)
        for size in ("TILE_BYTES", "FUSED_TILE_BYTES"):
            monkeypatch.setattr(plan, size, tile * n)  # tile / 4 classes per tile


@pytest.fixture(params=list(SCHEDULES))
def schedule(request, monkeypatch):
    force_schedule(monkeypatch, request.param, n=11, c=37)
    return request.param


def problem(n, c, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    return x.to(dtype), w.to(dtype), y


def loss_and_grads(impl, x, w, y, margin, by_norm, reduction="mean", scale=30.0, seed=1):
    """(loss, d/dx, d/dw) of sum(upstream * loss), upstream random for reduction='none'."""
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    loss = margin_cross_entropy(
        x, w, y, scale=scale, margin=margin, scale_by_norm=by_norm, reduction=reduction, impl=impl
    )
    g = torch.Generator().manual_seed(seed)
    upstream = (torch.rand(loss.shape, generator=g, dtype=torch.float64) + 0.5).to(loss)
    dx, dw = torch.autograd.grad(loss, (x, w), upstream)
    return loss.detach(), dx, dw


def assert_close_rel(actual, expected, rel):
    """Each tensor within rel of the largest magnitude in the expected one."""
    for a, e in zip(actual, expected, strict=True):
        assert torch.isfinite(a).all()
        scale = e.abs().max().clamp_min(1e-30)
        assert float((a - e).abs().max() / scale) < rel


@pytest.mark.parametrize("name", list(MARGINS))
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_chunked_equals_eager(name, dtype, rel, schedule):
    margin, by_norm = MARGINS[name]
    x, w, y = problem(11, 37, 6, dtype)
    for reduction in ("mean", "sum", "none"):
        expected = loss_and_grads("eager", x, w, y, margin, by_norm, reduction)
        actual = loss_and_grads("chunked", x, w, y, margin, by_norm, reduction)
        assert_close_rel(actual, expected, rel)


@pytest.mark.parametrize("n,c", [(1, 37), (11, 2), (11, 1), (1, 1), (40, 3)])
def test_awkward_sizes(n, c, schedule):
    x, w, y = problem(n, c, 3)
    for name in ("arcface-seed", "sphereface-blend-by-norm"):
        margin, by_norm = MARGINS[name]
        expected = loss_and_grads("eager", x, w, y, margin, by_norm)
        assert_close_rel(loss_and_grads("chunked", x, w, y, margin, by_norm), expected, 1e-10)


@pytest.mark.parametrize("bias", [False, True])
def test_plain_softmax_equals_eager(bias, schedule):
    x, w, y = problem(11, 37, 6)
    b = torch.randn(37, dtype=torch.float64) if bias else None
    results = []
    for impl in ("eager", "chunked"):
        leaves = [t.detach().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
        loss = softmax_cross_entropy(*leaves[:2], y, leaves[2] if bias else None, impl=impl)
        results.append((loss.detach(), *torch.autograd.grad(loss, leaves)))
    assert_close_rel(results[1], results[0], 1e-10)


def test_gradients_flow_only_where_asked(schedule):
    x, w, y = problem(11, 37, 6)
    margin = Margin(m2=0.3)
    for which in ("x", "w", "none"):
        results = []
        for impl in ("eager", "chunked"):
            xs = x.clone().requires_grad_(which == "x")
            ws = w.clone().requires_grad_(which == "w")
            loss = margin_cross_entropy(xs, ws, y, scale=30.0, margin=margin, impl=impl)
            leaves = [t for t in (xs, ws) if t.requires_grad]
            results.append(
                [loss.detach(), *torch.autograd.grad(loss, leaves)] if leaves else [loss]
            )
        assert_close_rel(results[1], results[0], 1e-10)


def test_upstream_gradient_scales_and_second_backward_raises():
    x, w, y = problem(5, 7, 3)
    grads = []
    for impl in ("eager", "chunked"):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss = margin_cross_entropy(xs, ws, y, scale=30.0, m3=0.2, impl=impl)
        (3 * loss).backward(retain_graph=True)
        grads.append((xs.grad, ws.grad))
    assert_close_rel(grads[1], grads[0], 1e-12)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["arcface-seed", "cosface", "sphereface-blend-by-norm"])
@pytest.mark.parametrize("two_sweeps", [False, True])
def test_half_precision_no_worse_than_eager(dtype, name, two_sweeps, monkeypatch):
    """Error (Frobenius) against float64 on the same rounded inputs no worse than eager's own
    error in that dtype: within 1.5x (both are rounding noise, of either sign) plus a tenth of
    the dtype's eps. A float32 path measures ~1e-7 here, a bf16 softmax ~1e-1."""
    if two_sweeps:
        monkeypatch.setattr(plan, "MIN_KEEP_ROWS", 10**9)
    margin, by_norm = MARGINS[name]
    x, w, y = problem(48, 150, 32)
    half = [t.to(dtype) for t in (x, w)]
    rounded = [t.double() for t in half]
    for reduction in ("mean", "none"):
        exact = loss_and_grads("eager", *rounded, y, margin, by_norm, reduction, scale=16.0)
        eager = loss_and_grads("eager", *half, y, margin, by_norm, reduction, scale=16.0)
        chunked = loss_and_grads("chunked", *half, y, margin, by_norm, reduction, scale=16.0)
        for e, c, ref in zip(eager, chunked, exact, strict=True):
            assert c.dtype == dtype
            eager_error = float((e.double() - ref).norm())
            chunked_error = float((c.double() - ref).norm())
            slack = 0.1 * torch.finfo(dtype).eps * float(ref.norm())
            assert chunked_error <= 1.5 * eager_error + slack


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_autocast_returns_a_float32_loss_as_accurate_as_eager(reduction):
    """Under bfloat16 autocast the loss comes back in float32, as F.cross_entropy's does, and
    is not rounded to bfloat16 on the way (that alone costs up to 2^-9 relative): its error
    against float64 is within eager's, and it holds values no bfloat16 can."""
    x, w, y = problem(11, 37, 16, torch.float32)
    kwargs = dict(scale=16.0, m2=0.3, reduction=reduction)
    exact = margin_cross_entropy(x.double(), w.double(), y, impl="eager", **kwargs)
    errors = {}
    for impl in ("eager", "chunked"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = margin_cross_entropy(x, w, y, impl=impl, **kwargs)
        assert loss.dtype == torch.float32
        errors[impl] = float((loss.double() - exact).abs().max())
    assert not torch.equal(loss, loss.bfloat16().float())
    assert errors["chunked"] <= 2 * errors["eager"] + 1e-5 * float(exact.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_confident_target_has_no_cancellation(dtype):
    """p_target ~ 1 (s = 64, x on its class centre): the loss is ~1e-20 and subtracting the
    plain target term back out of a log-sum-exp would leave errors ~1e-4 in it."""
    x, w, y = problem(6, 50, 32)
    x[:3] = w[y[:3]] * 3.0  # cos = 1 up to rounding
    margin = Margin(m2=0.5)
    exact = loss_and_grads("eager", x, w, y, margin, False, "none", scale=64.0)
    chunked = loss_and_grads("chunked", x.to(dtype), w.to(dtype), y, margin, False, "none", 64.0)
    assert float(chunked[0][:3].abs().max()) < 1e-12
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert_close_rel(chunked[1:], exact[1:], tol)
    assert float((chunked[0] - exact[0]).abs().max()) < tol * float(exact[0].abs().max())


@pytest.mark.parametrize("name", ["arcface-seed", "sphereface-piecewise", "combined"])
def test_poles_and_zero_rows_are_finite(name):
    """cos = +1 and -1 exactly (an embedding on its centre or opposite it) and a zero
    embedding: finite loss and gradients, equal to eager's."""
    margin, by_norm = MARGINS[name]
    x, w, y = problem(4, 9, 5)
    x[0], x[1], x[2] = w[y[0]], -2 * w[y[1]], 0.0
    expected = loss_and_grads("eager", x, w, y, margin, by_norm, "none")
    assert_close_rel(loss_and_grads("chunked", x, w, y, margin, by_norm, "none"), expected, 1e-9)


@pytest.mark.parametrize("two_sweeps", [False, True])
def test_fixed_shift_at_its_limits(two_sweeps, monkeypatch):
    """r = 75 (the largest the fixed shift takes) with every cosine ~ -1: exp(logit - m) is
    ~e^-86, just inside float32's normal range; and a zero weight row (1/|w| = 1e12)."""
    if two_sweeps:
        monkeypatch.setattr(plan, "MIN_KEEP_ROWS", 10**9)
    x, w, y = problem(6, 40, 8)
    w = w * 0.01 + torch.ones(8, dtype=torch.float64)  # all centres near one direction
    x[:4] = -torch.ones(8, dtype=torch.float64)  # opposite every centre
    w[5] = 0.0
    y[5] = 5
    margin = Margin(m3=0.2)
    exact = loss_and_grads("eager", x, w, y, margin, False, "none", scale=75.0)
    single = [t.float() for t in (x, w)]
    chunked = loss_and_grads("chunked", *single, y, margin, False, "none", scale=75.0)
    assert_close_rel(chunked, exact, 1e-5)


class LargestAllocation(TorchDispatchMode):
    """Records the largest storage (in elements) of any tensor an op returns, in all and
    per dtype."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.by_dtype = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                elements = t.untyped_storage().nbytes() // t.element_size()
                self.largest = max(self.largest, elements)
                self.by_dtype[t.dtype] = max(self.by_dtype.get(t.dtype, 0), elements)
        return out


@pytest.mark.parametrize("impl,holds_logits", [("eager", True), ("chunked", False)])
@pytest.mark.parametrize("keep_rows", [0, 8])  # two sweeps; kept blocks of 8 rows
def test_chunked_never_allocates_the_logits(impl, holds_logits, keep_rows, monkeypatch):
    """No op of the chunked forward or backward returns a tensor as large as the (N, C)
    logits: the largest are the weight's gradient (C, D) and the store (C, 8). Eager, run
    through the same probe, does allocate them (the probe can fail)."""
    n, c, d = 64, 3000, 8
    monkeypatch.setattr(plan, "KEEP_BYTES", 4 * c * keep_rows)
    monkeypatch.setattr(plan, "TILE_BYTES", 4 * n * 256)
    x, w, y = problem(n, c, d, torch.float32)
    x.requires_grad_(), w.requires_grad_()
    with LargestAllocation() as probe:
        loss = margin_cross_entropy(x, w, y, scale=30.0, m2=0.5, impl=impl)
        loss.backward()
    assert (probe.largest >= n * c) == holds_logits
    if not holds_logits:
        assert probe.largest <= max(c * d, c * keep_rows, 256 * n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_hold_no_float32_weight_gradient(dtype, monkeypatch):
    """Half inputs where a float32 (C, D) would not fit KEEP_BYTES: two sweeps, each tile's
    float32 gradient cast into the half-precision d_weight, so no float32 tensor has C x D
    elements (the fused schedule's float32 A took 1.6x the memory floor at C = 1M, bf16);
    the gradient is still the fused schedule's up to half-precision rounding."""
    n, c, d = 64, 3000, 8
    x, w, y = problem(n, c, d, dtype)
    fused = loss_and_grads("chunked", x, w, y, Margin(m2=0.5), False, scale=30.0)
    monkeypatch.setattr(plan, "KEEP_BYTES", 4 * c * d)  # the float32 A alone fills it
    monkeypatch.setattr(plan, "MIN_KEEP_ROWS", 1)  # (the store alone: blocks of 8 rows)
    monkeypatch.setattr(plan, "ROW_ALIGN", 1)
    monkeypatch.setattr(plan, "TILE_BYTES", 4 * n * 256)
    with LargestAllocation() as probe:
        two_sweeps = loss_and_grads("chunked", x, w, y, Margin(m2=0.5), False, scale=30.0)
    assert probe.by_dtype[torch.float32] < c * d
    assert probe.by_dtype[dtype] >= c * d  # d_weight itself, in the inputs' dtype
    for a, b in zip(two_sweeps, fused, strict=True):
        assert a.dtype == dtype
        assert float((a.float() - b.float()).norm()) <= 8 * torch.finfo(dtype).eps * float(
            b.float().norm()
        )


def shard_inputs(n=6, c=23, d=5, scale=20.0):
    x, w, y = problem(n, c, d)
    x_hat = normalize(x)
    psi, dpsi = Margin(m2=0.4).psi_and_grad((x_hat * normalize(w[y])).sum(1))
    r = torch.full((n,), scale, dtype=torch.float64) * (1 + torch.rand(n, dtype=torch.float64))
    return x_hat, w, y, r * psi, dpsi, r


@pytest.mark.parametrize("bounds", [(0, 23), (0, 10, 23), (0, 1, 7, 7, 22, 23)])
@pytest.mark.parametrize("block", [1, 3, 100])
def test_shards_combine_to_the_full_result(bounds, block):
    """The contract of the sharded head: per-shard lse combined by logaddexp is the full lse;
    per-shard gradients (with the global lse) sum (x, row scale) or concatenate (weight)."""
    x_hat, w, y, target_logit, dpsi, r = shard_inputs()
    full = shard_logsumexp(x_hat, w, y, target_logit, r, block_size=4)
    shards = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        local = torch.where((y >= lo) & (y < hi), y - lo, -1)
        shards.append((w[lo:hi], local))
    lse = torch.stack([shard_logsumexp(x_hat, ws, t, target_logit, r, block) for ws, t in shards])
    combined = torch.logsumexp(lse, 0)
    torch.testing.assert_close(combined, full, rtol=1e-12, atol=1e-12)
    if any(hi == lo for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)):
        assert torch.isneginf(lse).any()

    row_grad = torch.rand(len(y), dtype=torch.float64)
    expected = shard_gradients(x_hat, w, y, target_logit, dpsi, r, full, row_grad, 5)
    pieces = [
        shard_gradients(x_hat, ws, t, target_logit, dpsi, r, combined, row_grad, block)
        for ws, t in shards
    ]
    close = dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sum(p[0] for p in pieces), expected[0], **close)
    torch.testing.assert_close(torch.cat([p[1] for p in pieces]), expected[1], **close)
    torch.testing.assert_close(sum(p[2] for p in pieces), expected[2], **close)


def test_shard_primitives_match_autograd():
    """The primitives against autograd through an explicit (N, C) computation."""
    x, w, y = problem(5, 11, 4)
    x, w = x.requires_grad_(), w.requires_grad_()
    r = torch.linspace(5, 15, 5, dtype=torch.float64).requires_grad_()
    margin = Margin(m1=1.5, m2=0.2)
    cos = normalize(x) @ normalize(w).t()  # (N, C)
    cos_t = cos.gather(1, y[:, None])[:, 0]
    psi, dpsi = margin.psi_and_grad(cos_t.detach())
    psi = psi + dpsi * (cos_t - cos_t.detach())  # value psi, derivative psi'
    logits = (r[:, None] * cos).scatter(1, y[:, None], (r * psi)[:, None])
    row_grad = torch.rand(5, dtype=torch.float64)
    loss = (row_grad * (logits.logsumexp(1) - r * psi)).sum()
    dx, dw, dr = torch.autograd.grad(loss, (x, w, r))
    with torch.no_grad():
        x_hat, t = normalize(x), r * psi
        lse = shard_logsumexp(x_hat, w, y, t, r, 3)
        d_x_hat, d_w, d_r = shard_gradients(x_hat, w, y, t, dpsi, r, lse, row_grad, 3)
    torch.testing.assert_close(lse, logits.logsumexp(1).detach())
    torch.testing.assert_close(d_w, dw)
    torch.testing.assert_close(d_r, dr)
    radial = (x_hat * d_x_hat).sum(1, keepdim=True)
    norm = x.detach().norm(dim=1, keepdim=True)
    torch.testing.assert_close((d_x_hat - x_hat * radial) / norm, dx)


def test_empty_shard():
    x_hat, w, y, target_logit, dpsi, r = shard_inputs()
    none = torch.full_like(y, -1)
    lse = shard_logsumexp(x_hat, w[:0], none, target_logit, r)
    assert torch.isneginf(lse).all()
    dx, dw, dr = shard_gradients(x_hat, w[:0], none, target_logit, dpsi, r, lse + 1, r)
    assert dw.shape == (0, 5) and not dx.any() and not dr.any()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("two_sweeps", [False, True])
def test_chunked_on_cuda_equals_eager(dtype, two_sweeps, monkeypatch):
    """On a GPU: chunked against eager on the same device (float32 1e-5; bf16 against
    float64 no worse than eager), C not a multiple of the tile, several tiles."""
    if two_sweeps:
        monkeypatch.setattr(plan, "MIN_KEEP_ROWS", 10**9)
    monkeypatch.setattr(plan, "GPU_TILE_FACTOR", 1)
    for name in ("TILE_BYTES", "FUSED_TILE_BYTES"):
        monkeypatch.setattr(plan, name, 4 * 96 * 1000)  # tiles of 1000 classes
    x, w, y = problem(96, 5003, 64)
    margin, by_norm = MARGINS["arcface-seed"]
    exact = loss_and_grads("eager", x, w, y, margin, by_norm, "none")
    inputs = [t.to("cuda", dtype) for t in (x, w)]
    eager = loss_and_grads("eager", *inputs, y.cuda(), margin, by_norm, "none")
    chunked = loss_and_grads("chunked", *inputs, y.cuda(), margin, by_norm, "none")
    if dtype == torch.float32:
        assert_close_rel([t.double().cpu() for t in chunked], exact, 1e-5)
        return
    rounded = loss_and_grads(
        "eager", *[t.double().cpu() for t in inputs], y, margin, by_norm, "none"
    )
    for e, c, ref in zip(eager, chunked, rounded, strict=True):
        eager_error = float((e.double().cpu() - ref).norm())
        chunked_error = float((c.double().cpu() - ref).norm())
        assert chunked_error <= 1.5 * eager_error + 0.1 * torch.finfo(dtype).eps * float(ref.norm())
