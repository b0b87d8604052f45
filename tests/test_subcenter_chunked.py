"""SubCenterArcFace's chunked path (chunked/subcenters.py) against its eager path: loss and
both gradients in float64, every fallback, straight-through, reductions, ties in the max over
sub-centres, the memory probe, impl="auto"'s choice, and the penalty's error."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import margin_softmax as ms
from margin_softmax import functional
from margin_softmax.chunked import subcenters
from margin_softmax.chunked.subcenters import chunked_subcenter_cross_entropy
from margin_softmax.heads.eager import ARC_FALLBACKS

D, C = 5, 37  # 37 classes in tiles of 8: the last tile holds 5


def heads(k, **kwargs):
    """(eager, chunked) float64 heads with the same seeded weight."""
    eager = ms.SubCenterArcFace(D, C, sub_centers=k, impl="eager", **kwargs).double()
    chunked = ms.SubCenterArcFace(D, C, sub_centers=k, impl="chunked", **kwargs).double()
    g = torch.Generator().manual_seed(k)
    eager.weight.data.copy_(torch.randn(C * k, D, generator=g, dtype=torch.float64))
    chunked.weight.data.copy_(eager.weight.data)
    return eager, chunked


def batch(n, seed=0, c=C, d=D):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, c, (n,),
                                                                                generator=g)


def loss_and_grads(head, x, y):
    x = x.clone().requires_grad_()
    head.weight.grad = None
    loss = head(x, y)
    loss.backward()
    return loss.detach(), x.grad, head.weight.grad


def assert_same(a, b, tol=1e-9):
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=tol, atol=tol)


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 8 classes for a batch of 12 rows, whatever K."""
    monkeypatch.setattr(subcenters, "tile_classes", lambda n_rows, k: 8)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("fallback", ARC_FALLBACKS)
@pytest.mark.parametrize("straight_through", [False, True])
def test_matches_eager(k, fallback, straight_through, small_tiles):
    """Rows 0-2 point away from their class (theta + m > pi: seed, continuous; cos <= 0:
    easy), rows 3-5 near its first sub-centre, the rest random."""
    eager, chunked = heads(k, margin=1.2, scale=20.0, fallback=fallback,
                           straight_through=straight_through)
    x, y = batch(12, seed=k)
    with torch.no_grad():  # rows 0-2: all K centres of their class opposite to them
        w = eager.weight.view(C, k, D)
        noise = torch.randn(3, k, D, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
        w[y[:3]] = -x[:3, None, :] + 0.1 * noise
        chunked.weight.copy_(eager.weight)
    x[3:6] = eager.weight.detach().view(C, k, D)[y[3:6], 0] + 0.1 * x[3:6]
    with torch.no_grad():
        cos_target = eager.cosine(x, eager.weight).gather(1, y[:, None])
    beyond = cos_target <= torch.cos(torch.tensor(torch.pi - 1.2))  # the fallback's side
    assert beyond[:3].all() and not beyond[3:6].any()
    assert_same(loss_and_grads(chunked, x, y), loss_and_grads(eager, x, y))


@pytest.mark.parametrize("k", [1, 3])
def test_one_row_and_zero_margin(k, small_tiles):
    eager, chunked = heads(k, margin=0.0, scale=30.0)
    x, y = batch(1, seed=5)
    assert_same(loss_and_grads(chunked, x, y), loss_and_grads(eager, x, y))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_match_cross_entropy_over_the_eager_logits(reduction, small_tiles):
    """The function's reductions against F.cross_entropy over the head's training logits;
    reduction="none" backpropagates a weighting that differs per row."""
    head = ms.SubCenterArcFace(D, C, sub_centers=3, margin=0.5, scale=16.0).double()
    x, y = batch(12, seed=7)
    weights = torch.linspace(0.5, 2.0, 12, dtype=torch.float64)
    results = []
    for chunked in (True, False):
        xx = x.clone().requires_grad_()
        head.weight.grad = None
        if chunked:
            loss = chunked_subcenter_cross_entropy(
                xx, head.weight, y, head.scale, head.margin_spec(), 3, reduction
            )
        else:
            loss = F.cross_entropy(head.logits(xx, y), y, reduction=reduction)
        (loss * weights).sum().backward() if reduction == "none" else loss.backward()
        results.append((loss.detach(), xx.grad, head.weight.grad))
    assert results[0][0].shape == ((12,) if reduction == "none" else ())
    assert_same(*results)


def test_ties_go_to_the_first_sub_centre_as_in_eager(small_tiles):
    """Sub-centres 0 and 1 of every class are equal: both paths must credit sub-centre 0."""
    eager, chunked = heads(3, margin=0.5, scale=16.0)
    with torch.no_grad():
        w = eager.weight.view(C, 3, D)
        w[:, 1] = w[:, 0]
        chunked.weight.copy_(eager.weight)
    x, y = batch(12, seed=9)
    with torch.no_grad():
        cos = functional.cosine_logits(x, eager.weight).view(12, C, 3)
    assert bool((cos[:, :, 0] == cos[:, :, 1]).all())  # exact ties in eager's cosines
    assert bool((cos[:, :, :2].amax(2) > cos[:, :, 2]).any())  # and some of them win
    expected = loss_and_grads(eager, x, y)
    assert float(expected[2].view(C, 3, D)[:, 1].abs().max()) == 0.0
    assert_same(loss_and_grads(chunked, x, y), expected)


class LargestAllocation(TorchDispatchMode):
    """The largest storage (in elements) of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes() // t.element_size())
        return out


def largest_allocation(head, x, y):
    x = x.clone().requires_grad_()
    with LargestAllocation() as probe:
        head(x, y).backward()
    return probe.largest


@pytest.mark.parametrize("impl", ["eager", "chunked"])
def test_chunked_never_allocates_n_by_c(impl, monkeypatch):
    """N = 64, K * D = 12 < N: the weight and its gradient (C*K, D) are smaller than (N, C),
    and chunked holds nothing larger than them or one (T*K, N) tile. Eager, under the same
    probe, does allocate (N, C) (the probe can fail)."""
    n, c, k, d, tile = 64, 2000, 3, 4, 128
    monkeypatch.setattr(subcenters, "tile_classes", lambda n_rows, k: tile)
    head = ms.SubCenterArcFace(d, c, sub_centers=k, impl=impl)
    x, y = batch(n, c=c, d=d)
    largest = largest_allocation(head, x.float(), y)
    if impl == "eager":
        assert largest >= n * c * k
    else:
        assert largest < n * c
        assert largest <= max(c * k * d, tile * k * n)


def test_auto_follows_the_core_threshold(monkeypatch):
    """impl="auto" holds the (N, C*K) cosines at or below the CPU threshold on N * C * K,
    and does not above it."""
    n, c, k, d = 64, 500, 3, 4
    head = ms.SubCenterArcFace(d, c, sub_centers=k)
    x, y = batch(n, c=c, d=d)
    monkeypatch.setattr(subcenters, "tile_classes", lambda n_rows, k: 64)
    monkeypatch.setattr(functional, "AUTO_CHUNK_ELEMENTS_CPU", n * c * k)
    assert largest_allocation(head, x.float(), y) >= n * c * k
    monkeypatch.setattr(functional, "AUTO_CHUNK_ELEMENTS_CPU", n * c * k - 1)
    assert largest_allocation(head, x.float(), y) < n * c


def test_penalty_with_chunked_raises_and_auto_stays_eager(monkeypatch):
    with pytest.raises(ValueError, match="impl='chunked'.*hard_margin=0.1.*top_k=2"):
        ms.SubCenterArcFace(D, C, hard_margin=0.1, top_k=2, impl="chunked")
    head = ms.SubCenterArcFace(D, C, impl="chunked").double()  # a scheduler turns it on later
    x, y = batch(12)
    head.hard_margin, head.top_k = 0.1, 2
    with pytest.raises(ValueError, match="top_k=2"):
        head(x, y)
    # "auto" above the threshold: eager, with the penalty (which raises the loss)
    monkeypatch.setattr(functional, "AUTO_CHUNK_ELEMENTS_CPU", 1)
    head.impl = "auto"
    with torch.no_grad():
        expected = F.cross_entropy(head.logits(x, y), y)
        assert float(head(x, y)) == pytest.approx(float(expected), rel=1e-12)
        head.top_k = 0
        assert float(head(x, y)) < float(expected) - 1e-6


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_lower_precision_follows_float64(dtype, tol, small_tiles):
    """float32 and bfloat16 inputs (float32 inside) against the float64 eager loss."""
    eager, chunked = heads(3, margin=0.5, scale=16.0)
    x, y = batch(12, seed=3)
    expected = loss_and_grads(eager, x, y)
    low = loss_and_grads(chunked.to(dtype), x.to(dtype), y)
    assert low[0].dtype == low[1].dtype == low[2].dtype == dtype
    for a, b in zip(low, expected, strict=True):
        assert float((a.double() - b).norm()) <= tol * float(b.norm())


def test_autocast_keeps_the_loss_in_float32():
    """Under bfloat16 autocast the chunked head returns a float32 loss that was not rounded to
    bfloat16 on the way, within eager's own error against float64."""
    eager, chunked = heads(3)
    x, y = batch(9, seed=4)
    exact = eager(x, y).detach()
    errors = {}
    for name, head in (("eager", eager), ("chunked", chunked)):
        head.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = head(x.float(), y).detach()
        assert loss.dtype == torch.float32
        errors[name] = abs(float(loss) - float(exact))
    assert float(loss) != float(loss.bfloat16())
    assert errors["chunked"] <= 2 * errors["eager"] + 1e-5 * float(exact)
