"""The Triton path against eager. Without a GPU the kernels run in Triton's CPU interpreter
(TRITON_INTERPRET=1, set here before triton is imported, as `make test` does); on a GPU
machine run with TRITON_INTERPRET unset and every test runs the compiled kernels on CUDA."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed")

import margin_softmax as ms  # noqa: E402
from margin_softmax import functional, margin_cross_entropy  # noqa: E402
from margin_softmax.kernels import triton_available  # noqa: E402
from margin_softmax.margins import Margin  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")
DEVICE = "cpu" if INTERPRETED else "cuda"

MARGINS = {
    "normface": (Margin(), False),
    "cosface": (Margin(m3=0.35), False),
    "arcface-seed": (Margin(m2=0.5, fallback="seed"), False),
    "arcface-none": (Margin(m2=0.5, fallback="none"), False),
    "arcface-continuous": (Margin(m2=0.5, fallback="continuous"), False),
    "arcface-easy": (Margin(m2=0.5, fallback="easy"), False),
    "arcface-straight-through": (Margin(m2=0.5, fallback="seed", straight_through=True), False),
    "sphereface": (Margin(m1=4, fallback="piecewise"), False),
    "sphereface-blend-by-norm": (Margin(m1=4, blend=5.0, fallback="piecewise"), True),
    "combined": (Margin(m1=1.2, m2=0.3, m3=0.2, fallback="continuous"), False),
}
SIZES = [(1, 2, 3), (5, 37, 3), (19, 40, 20)]  # (N, C, D): C not a multiple of 16, D < 16


@pytest.fixture(autouse=True, params=["gemm", "fused"])
def schedule(request, monkeypatch):
    """Every test under both schedules (kernels/config.py); the GEMM one in chunks of 16
    classes, so that C = 37 or 70 crosses chunk edges and ends in a partial chunk."""
    from margin_softmax.kernels import config, gradients

    monkeypatch.setattr(config, "SCHEDULE", request.param)
    monkeypatch.setattr(gradients, "CHUNK_BYTES", 1)
    return request.param


def problem(n, c, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 2
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    return x.to(dtype), w.to(dtype), y


def loss_and_grads(impl, x, w, y, margin, by_norm=False, reduction="mean", scale=30.0):
    """Loss and (dx, dw) in float64, under a fixed random upstream gradient."""
    x = x.to(DEVICE).detach().requires_grad_()
    w = w.to(DEVICE).detach().requires_grad_()
    loss = margin_cross_entropy(x, w, y.to(DEVICE), scale=scale, margin=margin,
                                scale_by_norm=by_norm, reduction=reduction, impl=impl)
    g = torch.Generator().manual_seed(7)
    upstream = torch.rand(loss.shape, generator=g, dtype=torch.float64) + 0.5
    dx, dw = torch.autograd.grad(loss, (x, w), upstream.to(loss))
    return [t.detach().cpu().double() for t in (loss, dx, dw)]


def rel_errors(actual, expected):
    return [float((a - e).abs().max() / e.abs().max().clamp_min(1e-30))
            for a, e in zip(actual, expected, strict=True)]


def test_available():
    assert triton_available()


@pytest.mark.parametrize("name", list(MARGINS))
@pytest.mark.parametrize("size", SIZES)
def test_float32_equals_eager(name, size):
    """Within 1e-5 of eager on the same float32 inputs, eager run in float64. Row scales stay
    <= ~10 so that no loss is below ~1e-8: eager computes lse - target, whose rounding
    (~1e-7 |lse| in float32, ~1e-16 |lse| in float64) swamps a loss near 0."""
    margin, by_norm = MARGINS[name]
    x, w, y = problem(*size, seed=sum(size))
    scale = 3.0 if by_norm else 8.0  # |x| ~ 3.5
    expected = loss_and_grads("eager", x.double(), w.double(), y, margin, by_norm,
                              reduction="none", scale=scale)
    actual = loss_and_grads("triton", x, w, y, margin, by_norm, reduction="none", scale=scale)
    assert max(rel_errors(actual, expected)) < 1e-5


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions(reduction):
    x, w, y = problem(6, 70, 5, seed=3)  # 5 class blocks in 4 splits: one is empty
    margin = Margin(m2=0.3, m3=0.1)
    expected = loss_and_grads("eager", x, w, y, margin, reduction=reduction)
    actual = loss_and_grads("triton", x, w, y, margin, reduction=reduction)
    assert actual[0].shape == expected[0].shape
    assert max(rel_errors(actual, expected)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["normface", "arcface-seed", "sphereface-blend-by-norm",
                                  "combined"])
def test_half_precision_error_no_worse_than_eager(dtype, name):
    """Error against float64 (on the same rounded inputs) at most eager's error + eps / 4."""
    margin, by_norm = MARGINS[name]
    x, w, y = problem(19, 70, 40, dtype, seed=5)
    exact = loss_and_grads("eager", x.double(), w.double(), y, margin, by_norm)
    eager = rel_errors(loss_and_grads("eager", x, w, y, margin, by_norm), exact)
    fused = rel_errors(loss_and_grads("triton", x, w, y, margin, by_norm), exact)
    for ours, theirs in zip(fused, eager, strict=True):
        assert ours <= theirs + torch.finfo(dtype).eps / 4


@pytest.mark.parametrize("schedule", ["gemm"], indirect=True)
@pytest.mark.parametrize("scale", [5.86, 11.3])  # AdaCos's first scales for C = 256, 70k
def test_bfloat16_weight_gradient_at_small_scales(schedule, scale):
    """At small s the target cells carry most of dW: rounded into the 16-bit H they gave
    twice eager's error (6.6e-3 against 3.4e-3 here); added in float32, as rank-one terms,
    no worse than eager + eps / 4 (mean over three problems; upstream gradient 1, so that
    no rounding of it enters)."""
    errors = {"eager": [], "triton": []}
    for seed in range(3):
        x, w, y = problem(32, 256, 64, torch.bfloat16, seed=seed)
        grads = {}
        for impl, dtype in (("eager", torch.float64), ("eager", None), ("triton", None)):
            xs, ws = (t.to(DEVICE, dtype or t.dtype, copy=True).requires_grad_() for t in (x, w))
            margin_cross_entropy(xs, ws, y.to(DEVICE), scale=scale, m2=0.5,
                                 impl=impl).backward()
            grads[impl if dtype is None else "exact"] = ws.grad.double().cpu()
        for impl, found in errors.items():
            found.append(float((grads[impl] - grads["exact"]).norm() / grads["exact"].norm()))
    ours, theirs = (sum(v) / len(v) for v in (errors["triton"], errors["eager"]))
    assert ours <= theirs + torch.finfo(torch.bfloat16).eps / 4


@pytest.mark.parametrize("resident", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_both_tile_schedules(resident, dtype, monkeypatch):
    """Each kernel variant, forced as the only config: K-looped logit tiles (D in chunks,
    the whole other tile re-read for the accumulating product) and resident whole-D tiles.
    float32 within 1e-5 of float64 eager; bfloat16 no worse than eager + eps / 4."""
    import triton

    from margin_softmax.kernels import backward, config, forward

    if INTERPRETED:
        chosen = config.interpreter_config(resident)
    else:
        chosen = triton.Config({"BLOCK_N": 32, "BLOCK_C": 32, "BLOCK_K": 16,
                                "RESIDENT": resident}, num_warps=4, num_stages=2)
    monkeypatch.setattr(forward.lse_kernel, "configs", [chosen])
    monkeypatch.setattr(backward.weight_grad_kernel, "configs", [chosen])
    margin, by_norm = MARGINS["sphereface-blend-by-norm"]
    x, w, y = problem(37, 70, 40, dtype, seed=13)  # D = 40: 3 chunks of 16, the last partial
    exact = loss_and_grads("eager", x.double(), w.double(), y, margin, by_norm, scale=3.0)
    fused = rel_errors(loss_and_grads("triton", x, w, y, margin, by_norm, scale=3.0), exact)
    if dtype == torch.float32:
        assert max(fused) < 1e-5
    else:
        eager = rel_errors(loss_and_grads("eager", x, w, y, margin, by_norm, scale=3.0), exact)
        for ours, theirs in zip(fused, eager, strict=True):
            assert ours <= theirs + torch.finfo(dtype).eps / 4


@pytest.mark.parametrize("schedule", ["gemm"], indirect=True)
def test_gemm_schedule_walks_the_classes_in_chunks(schedule, monkeypatch):
    """The GEMM schedule's backward fills H for consecutive chunks of T = 64 classes that
    cover [0, C) once, each into the same (N, 64) store (its only C-independent buffer
    besides A; measured on CUDA by test_gpu_gemm_schedule_memory)."""
    from margin_softmax.kernels import gradients

    n, c, d = 8, 1000, 24
    monkeypatch.setattr(gradients, "CHUNK_BYTES", n * 64 * 4)  # float32 H: 64 classes
    calls = []
    tile = gradients.gradient_tile

    def spy(*args):
        start, stop, out = args[-3:]
        calls.append((start, stop, tuple(out.shape), out.untyped_storage().data_ptr()))
        tile(*args)

    monkeypatch.setattr(gradients, "gradient_tile", spy)
    x, w, y = problem(n, c, d, seed=2)
    expected = loss_and_grads("eager", x, w, y, Margin(m2=0.3))
    actual = loss_and_grads("triton", x, w, y, Margin(m2=0.3))
    assert max(rel_errors(actual, expected)) < 1e-5
    assert [call[:2] for call in calls] == [(a, min(a + 64, c)) for a in range(0, c, 64)]
    assert all(shape == (n, stop - start) for start, stop, shape, _ in calls)
    assert len({call[3] for call in calls}) == 1  # one store, reused


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", ["gemm"], indirect=True)
def test_gpu_gemm_schedule_memory(schedule):
    """Peak CUDA memory of a training step beyond x, W and dW: the chunk's H and A (about
    2 x CHUNK_BYTES) plus O(N D + C), independent of C."""
    from margin_softmax.kernels import gradients

    n, c, d = 1024, 200_000, 512
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, d, device="cuda", generator=g).bfloat16().requires_grad_()
    w = torch.randn(c, d, device="cuda", generator=g).bfloat16().requires_grad_()
    y = torch.randint(0, c, (n,), device="cuda", generator=g)
    margin_cross_entropy(x, w, y, scale=30.0, m2=0.5, impl="triton").backward()  # tunes
    x.grad = w.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    held = torch.cuda.memory_allocated()  # x, W, y
    margin_cross_entropy(x, w, y, scale=30.0, m2=0.5, impl="triton").backward()
    extra = torch.cuda.max_memory_allocated() - held - w.numel() * 2  # beyond dW
    assert extra <= 2.5 * gradients.CHUNK_BYTES + 64 * n * d + 16 * c, extra


def test_float64_goes_to_the_chunked_path():
    x, w, y = problem(5, 37, 3, torch.float64, seed=12)
    expected = loss_and_grads("eager", x, w, y, Margin(m2=0.5, fallback="seed"))
    actual = loss_and_grads("triton", x, w, y, Margin(m2=0.5, fallback="seed"))
    assert max(rel_errors(actual, expected)) < 1e-10


def test_result_dtype_follows_the_input():
    x, w, y = problem(3, 5, 4, torch.bfloat16)
    loss = margin_cross_entropy(x.to(DEVICE), w.to(DEVICE), y.to(DEVICE), scale=10.0,
                                impl="triton", reduction="none")
    assert loss.dtype == torch.bfloat16 and loss.shape == (3,)


@pytest.mark.parametrize("by_norm", [False, True])
@pytest.mark.parametrize("name", ["arcface-seed", "sphereface", "combined"])
def test_finite_at_cos_plus_minus_one(name, by_norm):
    """An embedding on its class centre (cos = +1, where psi' is infinite and clamped) or
    opposite it (cos = -1). Against eager in float32, as the clamp depends on the dtype, at
    1e-3: psi' ~ 340 there multiplies float32 rounding (the radial part it scales cancels in
    the normalisation backward), in eager as in the kernels."""
    margin, _ = MARGINS[name]
    x, w, y = problem(4, 6, 5, seed=2)
    x[0] = w[y[0]] * 0.5
    x[1] = -w[y[1]] * 0.5
    expected = loss_and_grads("eager", x, w, y, margin, by_norm, reduction="none", scale=4.0)
    actual = loss_and_grads("triton", x, w, y, margin, by_norm, reduction="none", scale=4.0)
    assert all(bool(t.isfinite().all()) for t in actual)
    assert max(rel_errors(actual, expected)) < 1e-3


@pytest.mark.parametrize("by_norm", [False, True])
def test_zero_embedding(by_norm):
    """x_i = 0: cos = 0 and, with scale_by_norm, a zero row scale; dL/dx_i = dL/dx_hat_i / eps
    (huge, finite), as in eager. Compared apart from the other rows, which it would dwarf."""
    x, w, y = problem(4, 6, 5, seed=2)
    x[1] = 0.0
    expected = loss_and_grads("eager", x, w, y, Margin(m2=0.5), by_norm, reduction="none")
    actual = loss_and_grads("triton", x, w, y, Margin(m2=0.5), by_norm, reduction="none")
    zero, others = torch.arange(4) == 1, torch.arange(4) != 1
    pieces = [lambda t: t[0], lambda t: t[1][others], lambda t: t[1][zero], lambda t: t[2]]
    actual, expected = [[f(t) for f in pieces] for t in (actual, expected)]
    assert all(bool(t.isfinite().all()) for t in actual)
    assert max(rel_errors(actual, expected)) < 1e-5


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # dL/dw_j in float16
def test_zero_class_centre():
    """|w_j| = 0: w_hat_j = 0 as in eager; dL/dw_j = dL/dw_hat_j / eps, huge but finite in
    float32 (inf in float16, as in eager). In float16 every other gradient stays finite: the
    kernel caps 1/|w| where it weighs the rows of W."""
    x, w, y = problem(5, 20, 6, seed=11)
    w[3] = 0.0
    expected = loss_and_grads("eager", x, w, y, Margin(m2=0.3))
    actual = loss_and_grads("triton", x, w, y, Margin(m2=0.3))
    assert max(rel_errors(actual, expected)) < 1e-5
    expected = loss_and_grads("eager", x.half(), w.half(), y, Margin(m2=0.3))
    actual = loss_and_grads("triton", x.half(), w.half(), y, Margin(m2=0.3))
    others = torch.arange(20) != 3
    actual, expected = [actual[1], actual[2][others]], [expected[1], expected[2][others]]
    assert all(bool(t.isfinite().all()) for t in actual)
    assert max(rel_errors(actual, expected)) < 5e-3


def test_confident_rows_keep_their_precision():
    """p_target ~ 1: with C = 2 the loss is softplus(s (cos_other - cos_target)) ~ 1e-16.
    Computed as logsumexp - target logit it cancels to 0 (eager's float32) or to a few
    float64 ulps of the logits; the fused path leaves the target out of the sum."""
    x, w, y = problem(3, 2, 5, seed=1)
    w[0] = x[0] + 0.3 * w[0]
    w[1] = -x[0] + 0.3 * w[1]
    y[0] = 0
    cos = functional.normalize(x.double()) @ functional.normalize(w.double()).t()  # (N, 2)
    target = cos.gather(1, y[:, None])[:, 0]
    other = cos.gather(1, 1 - y[:, None])[:, 0]
    exact = torch.nn.functional.softplus(20.0 * (other - target))  # (N,)
    loss = loss_and_grads("triton", x, w, y, Margin(), reduction="none", scale=20.0)[0]
    assert float(exact[0]) < 1e-15
    torch.testing.assert_close(loss, exact, rtol=1e-4, atol=0)


def test_single_class_has_zero_loss():
    x, w, y = problem(3, 1, 4, seed=4)
    loss, dx, dw = loss_and_grads("triton", x, w, y, Margin(m2=0.5), reduction="none")
    assert not loss.any() and not dx.any() and not dw.any()


def test_frozen_weight_or_embeddings():
    """Only the gradient asked for is computed (the other product is skipped in the kernel)."""
    x, w, y = (t.to(DEVICE) for t in problem(5, 20, 6, seed=8))
    for trainable in ("x", "w"):
        grads = []
        for impl in ("eager", "triton"):
            xi = x.detach().requires_grad_(trainable == "x")
            wi = w.detach().requires_grad_(trainable == "w")
            loss = margin_cross_entropy(xi, wi, y, scale=30.0, m3=0.2, impl=impl)
            grads.append(torch.autograd.grad(loss, xi if trainable == "x" else wi)[0])
        assert rel_errors(grads[1:], grads[:1])[0] < 1e-5


def test_row_scale_gradient():
    """scale_by_norm: dL/d|x| flows through row_scale = s |x|: scaling rows changes the loss
    only through it (the cosines do not move), so this isolates dL/dr."""
    x, w, y = problem(7, 13, 4, seed=9)
    x = x.to(DEVICE)
    scales = torch.linspace(0.5, 2.0, 7, device=DEVICE)[:, None].requires_grad_()
    grads = []
    for impl in ("eager", "triton"):
        loss = margin_cross_entropy(x * scales, w.to(DEVICE), y.to(DEVICE), scale=8.0,
                                    m1=2.0, scale_by_norm=True, impl=impl)
        grads.append(torch.autograd.grad(loss, scales)[0].cpu().double())
    assert rel_errors(grads[1:], grads[:1])[0] < 1e-5


def test_head_with_triton_impl():
    torch.manual_seed(0)
    head = ms.ArcFace(6, 18, margin=0.3, scale=20.0, impl="triton").to(DEVICE)
    reference = ms.ArcFace(6, 18, margin=0.3, scale=20.0, impl="eager").to(DEVICE)
    reference.load_state_dict(head.state_dict())
    x, _, y = problem(5, 18, 6, seed=10)
    losses = [h(x.to(DEVICE), y.to(DEVICE)) for h in (head, reference)]
    for loss in losses:
        loss.backward()
    assert float(losses[0].detach()) == pytest.approx(float(losses[1].detach()), rel=1e-5)
    assert rel_errors([head.weight.grad.double()], [reference.weight.grad.double()])[0] < 1e-5


def test_cpu_tensors_without_interpreter_raise(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, w, y = problem(2, 3, 4)
    with pytest.raises(ValueError, match="CUDA tensors"):
        margin_cross_entropy(x, w, y, scale=10.0, impl="triton")


@pytest.mark.gpu
def test_gpu_bf16_large_index_offsets():
    """C * D > 2**31: pointer offsets must be 64-bit. Rows of dW near the end are checked."""
    n, c, d = 4, (1 << 22) + 3, 512
    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(c, d, device="cuda", generator=g).to(torch.bfloat16)
    y = torch.tensor([c - 1, c - 2, 5, c - 1], device="cuda")
    x = (w[y].float() + 0.5 * torch.randn(n, d, device="cuda", generator=g)).to(torch.bfloat16)
    results = []
    runs = ((torch.float32, "eager"), (torch.bfloat16, "eager"), (torch.bfloat16, "triton"))
    for dtype, impl in runs:
        xi = x.to(dtype).detach().requires_grad_()
        wi = w.to(dtype).detach().requires_grad_()
        loss = margin_cross_entropy(xi, wi, y, scale=30.0, m2=0.2, impl=impl)
        loss.backward()
        results.append([loss.detach().float(), xi.grad.float(), wi.grad[-4:].float()])
        del xi, wi, loss
    reference, eager, triton = results  # reference: float32 eager on the same bf16 values
    # a wrong (32-bit) offset reads or writes the wrong rows: errors of order 1, not bf16's
    eager_errors, triton_errors = rel_errors(eager, reference), rel_errors(triton, reference)
    for got, bound in zip(triton_errors, eager_errors, strict=True):
        assert got <= max(2 * bound, 2e-2), (triton_errors, eager_errors)


@pytest.mark.parametrize("schedule", ["gemm"], indirect=True)
@pytest.mark.parametrize("bounds", [(0, 23), (0, 10, 23), (0, 1, 7, 7, 22, 23)])
def test_triton_shard_primitives_keep_the_shard_contract(schedule, bounds):
    """The class-sharded head's contract on the Triton primitives: per-shard lse combined by
    logaddexp, per-shard gradients (with the global lse) summed (x) or concatenated (W), equal
    the chunked primitives on the whole class set to 1e-5; an empty shard gives -inf and
    nothing else."""
    from margin_softmax.chunked import shard_gradients, shard_logsumexp
    from margin_softmax.kernels.shard import triton_shard_gradients, triton_shard_logsumexp

    x, w, y = problem(6, 23, 5, seed=14)
    x_hat = functional.normalize(x.double())
    psi, dpsi = Margin(m2=0.4).psi_and_grad((x_hat * functional.normalize(w.double()[y])).sum(1))
    r = torch.linspace(10.0, 20.0, 6, dtype=torch.float64)
    t, row_grad = r * psi, torch.linspace(0.5, 1.5, 6, dtype=torch.float64)
    full = shard_logsumexp(x_hat, w.double(), y, t, r)
    expected = shard_gradients(x_hat, w.double(), y, t, dpsi, r, full, row_grad)[:2]
    inputs = [v.float().to(DEVICE) for v in (x_hat, t, dpsi, r, row_grad)]
    x32, t32, dpsi32, r32, g32 = inputs
    shards = [(w[lo:hi].to(DEVICE), torch.where((y >= lo) & (y < hi), y - lo, -1).to(DEVICE))
              for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    lse = torch.stack([triton_shard_logsumexp(x32, ws, tl, t32, r32) for ws, tl in shards])
    combined = torch.logsumexp(lse, 0)
    assert rel_errors([combined.cpu().double()], [full])[0] < 1e-6
    empty = [lo == hi for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    assert [bool(torch.isneginf(row).all()) for row in lse] == empty
    pieces = [triton_shard_gradients(x32, ws, tl, t32, dpsi32, r32, combined, g32)
              for ws, tl in shards]
    d_x = sum(p[0] for p in pieces).cpu().double()
    d_w = torch.cat([p[1] for p in pieces]).cpu().double()
    assert max(rel_errors([d_x, d_w], list(expected))) < 1e-5


@pytest.mark.parametrize("schedule", ["gemm"], indirect=True)
def test_partial_fc_on_the_triton_primitives(schedule):
    """PartialFC(impl="triton") in one process equals the eager ArcFace head (float32, 1e-5);
    "auto" keeps CPU tensors on the chunked primitives; a bad impl names the value."""
    from margin_softmax.distributed import ArcFacePartialFC
    from margin_softmax.distributed.sharded_loss import use_triton

    x, w, y = problem(9, 37, 6, seed=15)
    head = ArcFacePartialFC(6, 37, margin=0.5, scale=16.0, impl="triton").to(DEVICE)
    with torch.no_grad():
        head.weight.copy_(w)
    xs = x.to(DEVICE).requires_grad_()
    loss = head(xs, y.to(DEVICE))
    loss.backward()
    x64, w64 = x.detach().double().requires_grad_(), w.double().requires_grad_()
    ref = margin_cross_entropy(x64, w64, y, scale=16.0, m2=0.5, fallback="seed", impl="eager")
    ref.backward()
    actual = [t.detach().double().cpu() for t in (loss, xs.grad, head.weight.grad)]
    assert max(rel_errors(actual, [ref.detach(), x64.grad, w64.grad])) < 1e-5
    assert not use_triton("auto", torch.zeros(2, 3))  # CPU tensors: chunked
    with pytest.raises(ValueError, match="impl must be one of"):
        ArcFacePartialFC(6, 37, impl="fused")


@pytest.mark.parametrize("schedule", ["gemm"], indirect=True)
@pytest.mark.parametrize("name", ["adaface", "magface"])
def test_per_sample_sharded_heads_on_the_triton_primitives(schedule, name):
    """AdaFacePartialFC, MagFacePartialFC (impl="triton", one process: the target cells
    left out of the kernels' gradient, their share back through the head's autograd) equal
    the single-device heads run eager in float64 on the same float32 inputs (1e-5), over two
    training steps (AdaFace's EMAs move)."""
    from margin_softmax.distributed import AdaFacePartialFC, MagFacePartialFC

    sharded, single = {"adaface": (AdaFacePartialFC, ms.AdaFace),
                       "magface": (MagFacePartialFC, ms.MagFace)}[name]
    head = sharded(6, 37, scale=16.0, impl="triton").to(DEVICE)
    ref = single(6, 37, scale=16.0, impl="eager").double()
    for step in range(2):
        x, w, y = problem(9, 37, 6, seed=20 + step)
        x = (x * torch.linspace(5, 60, 9)[:, None]).detach()  # norms 5 to 60
        with torch.no_grad():
            head.weight.copy_(w)
            ref.weight.copy_(w.double())
        head.weight.grad, ref.weight.grad = None, None
        xs, x64 = x.to(DEVICE).requires_grad_(), x.double().detach().requires_grad_()
        loss, expected = head(xs, y.to(DEVICE)), ref(x64, y)
        loss.backward()
        expected.backward()
        actual = [t.detach().double().cpu() for t in (loss, xs.grad, head.weight.grad)]
        assert max(rel_errors(actual, [expected.detach(), x64.grad, ref.weight.grad])) < 1e-5


def test_partial_fc_on_the_triton_primitives_keeps_confident_rows():
    """Rows near their centres (loss 1e-9 to 1e-5 at s = 64): the sharded head's loss
    log(1 + e^gap) and p_t - 1 = -sigmoid(gap) from the gap to the target, not from the
    rounded global lse (which gave loss 0 in float32). Float32 against float64 eager."""
    from margin_softmax.distributed import ArcFacePartialFC

    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 64, generator=g, dtype=torch.float64)
    y = torch.randint(0, 40, (12,), generator=g)
    x = torch.nn.functional.normalize(w, dim=1)[y] + 0.3 * torch.randn(
        12, 64, generator=g, dtype=torch.float64) / 8
    head = ArcFacePartialFC(64, 40, margin=0.5, scale=64.0, impl="triton").to(DEVICE)
    with torch.no_grad():
        head.weight.copy_(w)
    xs = x.float().to(DEVICE).requires_grad_()
    loss = head(xs, y.to(DEVICE))
    loss.backward()
    x64, w64 = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = margin_cross_entropy(x64, w64, y, scale=64.0, m2=0.5, fallback="seed", impl="eager")
    ref.backward()
    assert 0 < ref < 1e-4
    actual = [t.detach().double().cpu() for t in (loss, xs.grad, head.weight.grad)]
    assert max(rel_errors(actual, [ref.detach(), x64.grad, w64.grad])) < 1e-4


def test_per_sample_target_logits_equal_eager():
    """target_cross_entropy(impl="triton"): logits s cos off the target, a per-sample target
    logit with its own autograd (here s cos(theta + m_i)) on it; loss and the gradients of x
    and W (through the target logit too) within 1e-5 of float64 eager."""
    x, w, y = problem(9, 37, 6, seed=16)
    m = torch.linspace(0.1, 0.6, 9, dtype=torch.float64)
    results = []
    for impl, dtype, device in (("eager", torch.float64, "cpu"), ("triton", torch.float32, DEVICE)):
        xi = x.to(device, dtype).requires_grad_()
        wi = w.to(device, dtype).requires_grad_()
        yi = y.to(device)
        cos = functional.target_cosines(xi, wi, yi)  # (N,) with autograd
        target = 8.0 * torch.cos(torch.acos(cos.clamp(-1, 1)) + m.to(device, dtype))
        loss = functional.target_cross_entropy(xi, wi, yi, target, scale=8.0,
                                               reduction="none", impl=impl)
        upstream = torch.linspace(0.5, 1.5, 9, dtype=dtype, device=device)
        dx, dw = torch.autograd.grad(loss, (xi, wi), upstream)
        results.append([t.detach().double().cpu() for t in (loss, dx, dw)])
    assert max(rel_errors(results[1], results[0])) < 1e-5


@pytest.mark.parametrize("name", ["AdaFace", "MagFace", "ElasticArcFace"])
def test_per_sample_heads_with_triton_impl(name):
    """The per-sample heads with impl="triton" (eval mode: no state update, no draws) equal
    the same head in eager on the same weights, float32, 1e-5."""
    torch.manual_seed(0)
    heads = [getattr(ms, name)(6, 37, impl=impl).to(DEVICE).eval()
             for impl in ("triton", "eager")]
    heads[1].load_state_dict(heads[0].state_dict())
    x, _, y = problem(9, 37, 6, seed=17)
    results = []
    for head in heads:
        xi = (x * 20).to(DEVICE).requires_grad_()  # |x| ~ 50: inside MagFace's [10, 110]
        loss = head(xi, y.to(DEVICE))
        loss.backward()
        results.append([t.detach().double().cpu() for t in (loss, xi.grad, head.weight.grad)])
    assert max(rel_errors(results[0], results[1])) < 1e-5
