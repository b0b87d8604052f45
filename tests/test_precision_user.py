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


# Checks that held (each could fail): half precision, autocast, state, accumulation, inputs.

HALF_TOLERANCE = {torch.bfloat16: 2.0**-8 / 4, torch.float16: 2.0**-11 / 4, "autocast": 2.0**-8 / 4}


def run_head(head, x, y, autocast: bool = False):
    """(loss, dL/dx, dL/dW) of one training step."""
    x = x.clone().requires_grad_()
    head.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = head(x, y)
    loss.backward()
    return loss.detach(), x.grad, head.weight.grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, "autocast"])
@pytest.mark.parametrize("name", registry.loss_names())
def test_half_precision_heads_as_documented(name, dtype):
    """Half inputs: loss and gradients in the input dtype; float32 parameters under bfloat16
    autocast: a float32 loss (as F.cross_entropy) and float32 gradients. Finite, and chunked's
    error against a float64 twin on the same rounded inputs within eager's own plus
    eps / 4."""
    torch.manual_seed(0)
    base = registry.build_head(name, D, C)
    x, y = batch(norm=5.0 if name in ("adaface", "magface") else 1.0)
    autocast = dtype == "autocast"
    errors = {}
    for impl in ("eager", "chunked"):
        head = copy.deepcopy(base)
        head.impl = impl
        if not autocast:
            head = head.to(dtype)
        twin = copy.deepcopy(head).double()  # the float64 twin sees the rounded values
        rounded = x.bfloat16() if autocast else x.to(dtype)
        if autocast:
            twin.weight.data = head.weight.data.bfloat16().double()
            if getattr(twin, "bias", None) is not None:
                twin.bias.data = head.bias.data.bfloat16().double()
        result = run_head(head, x if autocast else rounded, y, autocast)
        exact = run_head(twin, rounded.double(), y)
        loss_dtype = torch.float32 if autocast else dtype
        grad_dtype = torch.float32 if autocast else dtype
        assert result[0].dtype == loss_dtype
        assert result[1].dtype == grad_dtype and result[2].dtype == grad_dtype
        assert all(bool(t.isfinite().all()) for t in result)
        errors[impl] = relative_errors(result, exact)
    for chunked, eager in zip(errors["chunked"], errors["eager"], strict=True):
        assert chunked <= 1.5 * eager + HALF_TOLERANCE[dtype]


@pytest.mark.parametrize("name", ["adacos", "adaface", "curricularface", "sphereface"])
def test_state_trained_chunked_moves_to_eager_and_to_bfloat16(name, tmp_path):
    """A head trained with impl="chunked", saved, loaded into an eager head and into a
    bfloat16 one: the running state arrives whole (float64 in both) and the eager head's
    next loss (train and eval) equals the chunked one's."""
    torch.manual_seed(0)
    head = registry.build_head(name, D, C)
    head.impl = "chunked"
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    for seed in range(3):
        optimizer.zero_grad()
        head(*batch(seed=seed, norm=20.0)).backward()
        optimizer.step()
    torch.save(head.state_dict(), tmp_path / "head.pt")
    state = torch.load(tmp_path / "head.pt")
    running = {k: v for k, v in state.items() if k not in ("weight", "bias")}
    assert any(not torch.equal(v, registry.build_head(name, D, C).state_dict()[k])
               for k, v in running.items())  # training moved it
    eager = registry.build_head(name, D, C)
    eager.impl = "eager"
    eager.load_state_dict(state)
    half = registry.build_head(name, D, C).to(torch.bfloat16)
    half.load_state_dict(state)
    for key, value in running.items():
        assert torch.equal(half.state_dict()[key], value)
        if value.is_floating_point():
            assert half.state_dict()[key].dtype == torch.float64
    x, y = batch(seed=9, norm=20.0)
    for train in (True, False):
        expected = copy.deepcopy(head).train(train)(x, y)
        actual = copy.deepcopy(eager).train(train)(x, y)
        assert actual.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("keep_bytes", [None, 0])  # fused; two sweeps
@pytest.mark.parametrize("name", ["arcface", "adaface", "softmax"])
def test_gradient_accumulation_over_two_micro_batches(name, keep_bytes, monkeypatch):
    """Two micro-batches of N / 2, each loss (a mean) halved and backward'ed into the same
    .grad: the gradients of one batch of N through float64 eager, within float32's error."""
    if keep_bytes is not None:
        monkeypatch.setattr(plan, "KEEP_BYTES", keep_bytes)
    torch.manual_seed(0)
    head = registry.build_head(name, D, C).eval()  # eval: AdaFace's EMAs stay put
    twin = copy.deepcopy(head).double()
    head.impl, twin.impl = "chunked", "eager"
    x, y = batch(norm=5.0)
    x = x.requires_grad_()
    for part in (slice(0, N // 2), slice(N // 2, N)):
        (head(x[part], y[part]) / 2).backward()
    x64 = x.detach().double().requires_grad_()
    twin(x64, y).backward()
    assert max(relative_errors((x.grad, head.weight.grad), (x64.grad, twin.weight.grad))) < 1e-5


def awkward_inputs(case: str):
    """(x (n, D), w (C, D), y (n,)) in float64, w possibly a non-contiguous view."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(C, D, generator=g, dtype=torch.float64)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    if case == "zero-row":
        x[0] = 0.0
    elif case == "on-centre":
        x[:4] = w[y[:4]] * 2.0
    elif case == "duplicated-centres":
        w[1], y[:6] = w[0], 0
    elif case == "single-sample":
        x, y = x[:1], y[:1]
    elif case == "int32-labels":
        y = y.int()
    elif case == "transposed-weight":
        w = w.t().contiguous().t()
    return x, w, y


WELL_CONDITIONED = ("duplicated-centres", "single-sample", "int32-labels", "transposed-weight")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["zero-row", "on-centre", *WELL_CONDITIONED])
@pytest.mark.parametrize("name", ["arcface", "curricularface", "subcenter-arcface"])
def test_awkward_inputs_in_half_precision(name, case, dtype):
    """Finite loss and gradients in both paths (float16's zero row gets dL/dx = 0, as
    docs/index.md says: g / 1e-12 does not fit in float16); where the problem is well
    conditioned, chunked within eager's own error against float64 plus eps / 4."""
    overflow = case == "zero-row" and dtype == torch.float16  # row 0 of dL/dx is 0
    x, w, y = awkward_inputs(case)
    torch.manual_seed(0)
    base = registry.build_head(name, D, C).eval()
    errors = {}
    for impl in ("eager", "chunked"):
        head = copy.deepcopy(base).to(dtype)
        head.impl = impl
        k = getattr(head, "sub_centers", 1)
        centres = w if k == 1 else w.repeat_interleave(k, 0)  # (C * k, D)
        head.weight = torch.nn.Parameter(centres.to(dtype))  # .to keeps a transposed layout
        assert head.weight.is_contiguous() == (case != "transposed-weight" or k > 1)
        twin = copy.deepcopy(head).double()
        result, exact = run_head(head, x.to(dtype), y), run_head(twin, x.to(dtype).double(), y)
        if overflow:
            assert not bool(result[1][0].any())
            result, exact = ((loss, dx[1:], dw) for loss, dx, dw in (result, exact))
        assert all(bool(t.isfinite().all()) for t in result)
        errors[impl] = relative_errors(result, exact)
    if case in WELL_CONDITIONED:
        for chunked, eager in zip(errors["chunked"], errors["eager"], strict=True):
            assert chunked <= 1.5 * eager + HALF_TOLERANCE[dtype]


class Model(torch.nn.Module):
    """A small backbone and a head: what a user compiles."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(),
                                            torch.nn.Linear(32, D))
        self.head = head

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x), y)


@pytest.mark.parametrize("name,impl", [("arcface", "eager"), ("arcface", "chunked"),
                                       ("adaface", "chunked")])
def test_compiled_model_with_head_matches_and_takes_another_batch_size(name, impl):
    """torch.compile(model) (AOT autograd): loss and every gradient as the plain model's,
    also for a second batch size (a recompile, or dynamic shapes), not a stale graph."""
    torch.manual_seed(0)
    head = registry.build_head(name, D, C)
    head.impl = impl
    model = Model(head)
    twin = copy.deepcopy(model)
    compiled = torch.compile(model, backend="aot_eager")
    for n in (N, 17):
        g = torch.Generator().manual_seed(n)
        x, y = torch.randn(n, 8, generator=g), torch.randint(0, C, (n,), generator=g)
        for module in (compiled, twin):
            module.zero_grad()
        loss, expected = compiled(x, y), twin(x, y)
        loss.backward()
        expected.backward()
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
