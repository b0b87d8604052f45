"""A face-recognition engineer's checks: reduced precision, torch.compile, gradient
accumulation, state that must survive save/load and dtype changes, and awkward inputs.
Small problems (N <= 64, C <= 3000, D <= 64); every comparison is against float64 or the
uncompiled / eager head, never against the path under test itself."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import margin_softmax as ms
from margin_softmax import registry
from margin_softmax.chunked import plan

N, C, D = 24, 200, 16


def batch(n: int = N, seed: int = 0, norm: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) * norm, torch.randint(0, C, (n,), generator=g)


STATEFUL = {  # head -> (its float64 running state, a batch norm that moves it)
    "adacos": (lambda: ms.AdaCos(D, C, impl="eager"), ("adaptive_scale",), 1.0),
    "adaface": (lambda: ms.AdaFace(D, C, impl="eager"), ("batch_mean", "batch_std"), 30.0),
    "curricularface": (lambda: ms.CurricularFace(D, C, impl="eager"), ("t",), 1.0),
}


@pytest.mark.parametrize("name", STATEFUL)
def test_compiled_heads_update_their_running_state(name):
    """torch.compile (AOT autograd, as inductor uses) dropped in-place updates of 0-dim
    float64 buffers: AdaCos kept its initial scale, CurricularFace's t stayed 0 and AdaFace's
    EMAs only decayed (mul_ kept, add_ lost), so training silently used stale state."""
    make, buffers, norm = STATEFUL[name]
    torch.manual_seed(0)
    head = make()
    compiled_head = copy.deepcopy(head)
    compiled = torch.compile(compiled_head, backend="aot_eager")
    for seed in (1, 2):
        x, y = batch(seed=seed, norm=norm)
        expected, actual = head(x, y), compiled(x, y)
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    for buffer in buffers:
        before = getattr(make(), buffer)
        after, compiled_after = getattr(head, buffer), getattr(compiled_head, buffer)
        assert not torch.equal(after, before)  # the uncompiled head did move it
        torch.testing.assert_close(compiled_after, after, rtol=1e-9, atol=0)


@pytest.mark.parametrize("impl", ["eager", "chunked"])
def test_adacos_takes_half_embeddings_under_autocast(impl):
    """Under autocast a backbone hands bfloat16 embeddings to a float32 head; AdaCos's scale
    update checked them against the float32 weight before autocast's casts and raised
    TypeError, where every other head trains. Loss and scale against a float64 twin on the
    same rounded embeddings."""
    torch.manual_seed(0)
    head = ms.AdaCos(D, C, impl=impl)
    twin = copy.deepcopy(head).double()
    x, y = batch()
    x = x.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head(x, y)
    expected = twin(x.double(), y)
    assert loss.dtype == torch.float32
    assert head.scale != ms.AdaCos(D, C).scale  # it did update
    assert head.scale == pytest.approx(twin.scale, rel=1e-2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-2)


@pytest.mark.parametrize("name", registry.loss_names())
def test_loss_and_accuracy_under_autocast(name):
    """The seed's one-liner ``loss, prec1 = head.loss_and_accuracy(x, y)`` with the
    backbone's bfloat16 embeddings under autocast: predict checked them against the float32
    weight without autocast's casts and raised TypeError for every head. Half the rows sit
    on their class centre, half carry another label: 50%."""
    torch.manual_seed(0)
    head = registry.build_head(name, D, C)
    head.weight.data = torch.nn.functional.normalize(head.weight.data, dim=1)  # softmax too
    k = getattr(head, "sub_centers", 1)
    y = torch.randint(0, C, (N,))
    x = head.weight.detach()[y * k] * 2.0  # (N, D) on the centres
    y[N // 2 :] = (y[N // 2 :] + 1) % C
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, accuracy = head.loss_and_accuracy(x.bfloat16(), y)
        logits = head.logits(x.bfloat16())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert accuracy == pytest.approx(50.0)
    assert logits.shape == (N, C)


WIDE = 64  # embedding_dim of the confident batches: random centres far apart


def confident_batch(n: int = N, c: int = C, spread: float = 0.3, seed: int = 0):
    """x_i near its class centre (angle ~ spread): at s = 64 and ArcFace's m = 0.5,
    1 - p_target is 1e-9 to 1e-5 and the loss per row about as small. float64."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c, WIDE, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    noise = torch.randn(n, WIDE, generator=g, dtype=torch.float64) / WIDE**0.5
    return torch.nn.functional.normalize(w, dim=1)[y] + spread * noise, w, y


def relative_errors(actual, expected) -> list[float]:
    """|a - e| / |e| (Frobenius) for each pair of tensors."""
    pairs = zip(actual, expected, strict=True)
    return [float((a.double() - e.double()).norm() / e.double().norm()) for a, e in pairs]


def confident_heads(impl: str):
    return {
        "arcface": ms.ArcFace(WIDE, C, margin=0.5, scale=64.0, impl=impl),
        "adaface": ms.AdaFace(WIDE, C, scale=64.0, impl=impl).eval(),  # |x| ~ 1: ArcFace-like
        "subcenter": ms.SubCenterArcFace(WIDE, C, sub_centers=1, scale=64.0, impl=impl),
    }


@pytest.mark.parametrize("name", ["arcface", "adaface", "subcenter"])
def test_chunked_float32_is_exact_for_confident_rows(name):
    """The chunked loss was lse - t and its target gradient expm1(t - lse), both from the
    rounded lse ~ t, which holds nothing of a loss below ulp(t) ~ 4e-6: in float32 the loss
    came out 0 and the gradients 69% off (as eager's F.cross_entropy, whose p_t rounds to 1).
    From gap = lse_other - t both are exact, log(1 + e^gap) and -sigmoid(gap), as in the
    Triton kernels: 3e-6 and 9e-6 here."""
    x, w, y = confident_batch()
    results = []
    for dtype, impl in ((torch.float64, "eager"), (torch.float32, "chunked")):
        head = confident_heads(impl)[name].to(dtype)
        head.weight.data.copy_(w)
        xd = x.to(dtype, copy=True).requires_grad_()
        loss = head(xd, y)
        loss.backward()
        results.append((loss.detach(), xd.grad, head.weight.grad))
    assert results[0][0] < 1e-4  # confident indeed
    assert max(relative_errors(results[1], results[0])) < 1e-4


@pytest.mark.parametrize("reduction", ["sum", "none"])  # the two schedules
def test_chunked_float32_per_row_losses_of_confident_rows(reduction):
    """The same through margin_cross_entropy: per-row losses with a per-sample weighting
    (reduction="none", two sweeps) and the sum (fused), against float64."""
    x, w, y = confident_batch(seed=1)
    weights = torch.rand(N, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = []
    for dtype, impl in ((torch.float64, "eager"), (torch.float32, "chunked")):
        xd, wd = (t.to(dtype, copy=True).requires_grad_() for t in (x, w))
        loss = ms.margin_cross_entropy(xd, wd, y, scale=64.0, m2=0.5, fallback="seed",
                                       reduction=reduction, impl=impl)
        (loss * weights.to(dtype)).sum().backward()
        results.append((loss.detach(), xd.grad, wd.grad))
    assert max(relative_errors(results[1], results[0])) < 1e-4


LOSS_SCALE = 2.0**16  # torch.amp.GradScaler's initial scale


@pytest.mark.parametrize("keep_bytes", [None, 0])  # fused; two sweeps
def test_chunked_float16_gradients_are_scaled_before_they_are_rounded(keep_bytes, monkeypatch):
    """float16 autocast with a GradScaler: the loss is multiplied by 2^16 so that small
    gradients survive float16. The chunked path computed its gradients in the forward,
    rounded them to float16, and only then multiplied by backward's 2^16: every entry below
    float16's 6e-8 was already 0 (9% of dL/dW here, none in eager). Entries that float16
    holds once scaled must not be 0, and the error against float64 stays within eager's."""
    if keep_bytes is not None:
        monkeypatch.setattr(plan, "KEEP_BYTES", keep_bytes)
    n, c = 64, 3000
    x, w, y = confident_batch(n, c, spread=0.3, seed=3)
    w = w * 0.05  # class centres of xavier-like size
    x, w = x.half().double(), w.half().double()  # the values float16 autocast will see
    results = {}
    for impl in ("float64", "eager", "chunked"):
        dtype = torch.float64 if impl == "float64" else torch.float32
        xd, wd = (t.to(dtype, copy=True).requires_grad_() for t in (x, w))
        with torch.autocast("cpu", dtype=torch.float16, enabled=impl != "float64"):
            loss = ms.margin_cross_entropy(xd, wd, y, scale=30.0, m2=0.5, fallback="seed",
                                           impl="eager" if impl == "float64" else impl)
        (loss * LOSS_SCALE).backward()
        results[impl] = [xd.grad, wd.grad]
    exact = results["float64"]
    for grad, reference in zip(results["chunked"], exact, strict=True):
        assert not bool(((grad == 0) & (reference.abs() >= 2.0**-14)).any())
    eager_errors = relative_errors(results["eager"], exact)
    for error, eager in zip(relative_errors(results["chunked"], exact), eager_errors,
                            strict=True):
        assert error <= 1.5 * eager


class MatmulFlops(TorchDispatchMode):
    """Counts the flops of the matrix products run inside it (mm, addmm, in place or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_):
            a, b = args[-2:]
            self.flops += 2 * a.shape[0] * a.shape[1] * b.shape[1]
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["arcface", "adaface", "softmax"])
def test_chunked_forward_under_no_grad_computes_no_gradients(name):
    """A validation loss under torch.no_grad: the chunked forward computed the gradients
    too (needs_input_grad follows requires_grad, not the grad mode): 3 products of 2 N D C
    flops and a float32 (C, D) where the loss needs one product."""
    head = registry.build_head(name, D, C)
    head.impl = "chunked"
    x, y = batch()
    with torch.no_grad(), MatmulFlops() as counter:
        loss = head(x.requires_grad_(), y)
    expected = head(x, y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert counter.flops <= 1.01 * 2 * N * D * C
