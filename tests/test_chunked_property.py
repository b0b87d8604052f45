"""Random problems (hypothesis) through the chunked path against eager in float64: any N, C,
D, margin family and parameters, scale on both sides of the fixed shift's limit, every
reduction, and the schedule's sizes drawn too (one kept block, several, two sweeps; tiles of
1 to C classes), so block and tile edges fall anywhere; and plain softmax with and without a
bias. (1500 examples of the margin test ran clean once; CI runs 60.)"""

import contextlib

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from margin_softmax import margin_cross_entropy, softmax_cross_entropy
from margin_softmax.chunked import plan
from margin_softmax.margins import Margin


@st.composite
def margins(draw):
    """(Margin kwargs, scale_by_norm) from the families the heads use; combinations the core
    refuses (checked elsewhere) are not drawn."""
    family = draw(st.sampled_from(["arc", "sphere", "combined"]))
    by_norm = False
    if family == "arc":
        kwargs = dict(m2=draw(st.floats(0, 1.2)), m3=draw(st.floats(0, 0.5)),
                      fallback=draw(st.sampled_from(["none", "seed", "continuous", "easy"])),
                      straight_through=draw(st.booleans()))
    elif family == "sphere":
        kwargs = dict(m1=float(draw(st.integers(1, 4))), fallback="piecewise",
                      blend=draw(st.sampled_from([0.0, 5.0])))
        by_norm = draw(st.booleans())
    else:
        kwargs = dict(m1=draw(st.floats(1.0, 2.0)), m2=draw(st.floats(0, 0.5)),
                      m3=draw(st.floats(0, 0.3)), fallback="none")
    try:
        Margin(**kwargs)
    except ValueError:
        assume(False)
    return kwargs, by_norm


def random_inputs(n: int, c: int, d: int, seed: int):
    """x (N, D), w (C, D) float64 and labels (N,), drawn from seed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    return x, w, torch.randint(0, c, (n,), generator=g)


@st.composite
def problems(draw):
    # D >= 2: at D = 1 every cosine is +-1, where psi' is clamped to ~1e8 and the weight
    # gradient (exactly 0: all radial) is its float64 residue, ~1e-11
    n, c, d = draw(st.integers(1, 24)), draw(st.integers(1, 40)), draw(st.integers(2, 9))
    sizes = dict(keep_rows=draw(st.integers(1, n + 2)),
                 min_rows=draw(st.sampled_from([1, 10**9])),  # 10**9: two sweeps
                 tile_classes=draw(st.integers(1, c)))
    seed = draw(st.integers(0, 2**16))
    return n, c, d, sizes, seed


@contextlib.contextmanager
def chunked_sizes(n, c, keep_rows, min_rows, tile_classes):
    """The chunked path's constants shrunk to these blocks and tiles, restored after."""
    new = dict(KEEP_BYTES=4 * c * keep_rows, MIN_KEEP_ROWS=min_rows, ROW_ALIGN=1,
               MIN_TILE_CLASSES=1, TILE_BYTES=4 * n * tile_classes,
               FUSED_TILE_BYTES=4 * min(n, keep_rows) * tile_classes)
    old = {name: getattr(plan, name) for name in new}
    for name, value in new.items():
        setattr(plan, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(plan, name, value)


def loss_and_grads(impl, x, w, y, **kwargs):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    loss = margin_cross_entropy(x, w, y, impl=impl, **kwargs)
    loss.sum().backward()
    return loss.detach(), x.grad, w.grad


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), margins(), st.floats(1.0, 90.0), st.sampled_from(["mean", "sum", "none"]))
def test_chunked_equals_eager_on_random_problems(problem, margin, scale, reduction):
    n, c, d, sizes, seed = problem
    kwargs, by_norm = margin
    x, w, y = random_inputs(n, c, d, seed)
    kwargs.update(scale=scale, reduction=reduction, scale_by_norm=by_norm)
    expected = loss_and_grads("eager", x, w, y, **kwargs)
    with chunked_sizes(n, c, **sizes):
        actual = loss_and_grads("chunked", x, w, y, **kwargs)
    for a, e in zip(actual, expected, strict=True):  # relative, plus float64 rounding of s
        assert float((a - e).abs().max()) <= 1e-9 * float(e.abs().max()) + 1e-12 * scale, (a, e)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.booleans(), st.floats(0.1, 30.0), st.sampled_from(["mean", "none"]))
def test_chunked_plain_softmax_equals_eager_on_random_problems(problem, bias, spread, reduction):
    """Plain softmax (no norms, no bound on the logits: the tile max, never the fixed shift),
    with and without a bias, logits spread up to ~30 * |x| |w|."""
    n, c, d, sizes, seed = problem
    g = torch.Generator().manual_seed(seed)
    x = spread * torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64) if bias else None
    y = torch.randint(0, c, (n,), generator=g)

    def run(impl):
        leaves = [t.clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
        loss = softmax_cross_entropy(*leaves[:2], y, leaves[2] if bias else None,
                                     reduction=reduction, impl=impl)
        loss.sum().backward()
        return [loss.detach()] + [t.grad for t in leaves]

    expected = run("eager")
    with chunked_sizes(n, c, **sizes):
        actual = run("chunked")
    for a, e in zip(actual, expected, strict=True):
        assert float((a - e).abs().max()) <= 1e-9 * float(e.abs().max()) + 1e-12 * spread
