"""The heads that run through target_cross_entropy (AdaFace, MagFace, ElasticArcFace,
ElasticCosFace: a per-sample target logit; CurricularFace: and a non-target transform): the
chunked path against eager (loss and gradients, each schedule), never an (N, C) tensor, and
no cancellation at p_target ~ 1."""

import pytest
import torch
from test_chunked import LargestAllocation, assert_close_rel, force_schedule

import margin_softmax as ms
from margin_softmax.chunked import plan
from margin_softmax.functional import target_cosines, target_cross_entropy
from margin_softmax.heads.curricularface import HardNegatives

N, C, D = 11, 37, 6


def adaface(d, c, **kw):
    head = ms.AdaFace(d, c, **{"scale": 32.0, **kw})
    head.batch_mean.fill_(20.0)
    head.batch_std.fill_(5.0)  # |x| in [10, 30]: z spreads over (-1, 1)
    return head


def curricularface(d, c, **kw):
    head = ms.CurricularFace(d, c, **{"scale": 32.0, **kw})
    head.t.fill_(0.4)  # hard negatives weighted by t + cos
    return head


HEADS = {  # name -> (factory(embedding_dim, num_classes, **keywords), embedding norm)
    "adaface": (adaface, 20.0),
    "magface-easy": (lambda d, c, **kw: ms.MagFace(d, c, **{"scale": 32.0, **kw}), 60.0),
    "magface-seed": (
        lambda d, c, **kw: ms.MagFace(d, c, fallback="seed", **{"scale": 32.0, **kw}), 60.0),
    "elastic-arc": (
        lambda d, c, **kw: ms.ElasticArcFace(d, c, seed=3, **{"scale": 32.0, **kw}), 1.0),
    "elastic-arc-seed": (lambda d, c, **kw: ms.ElasticArcFace(
        d, c, seed=3, fallback="seed", **{"scale": 32.0, **kw}), 1.0),
    "elastic-cos": (
        lambda d, c, **kw: ms.ElasticCosFace(d, c, seed=3, **{"scale": 32.0, **kw}), 1.0),
    "curricularface": (curricularface, 1.0),
}
PROBED = ["adaface", "magface-easy", "elastic-arc", "elastic-cos", "curricularface"]

# one kept block, uneven kept blocks, two sweeps (with and without the tile-max shift)
HEAD_SCHEDULES = ["fused-one-block", "fused-blocks", "two-sweeps", "two-sweeps-tile-max"]


@pytest.fixture(params=HEAD_SCHEDULES)
def schedule(request, monkeypatch):
    force_schedule(monkeypatch, request.param, n=N, c=C)
    return request.param


def problem(n=N, c=C, d=D, norm=1.0, seed=0):
    """x (n, d) with norms spread over [norm/2, 3 norm/2], w (c, d), y (n,), float64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * norm * (0.5 + torch.rand(n, 1, generator=g))
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    return x, w, torch.randint(0, c, (n,), generator=g)


def head_loss_and_grads(name, impl, x, w, y, train=True, **kw):
    """(loss, d/dx, d/dweight) of a fresh head (same seed, so the same draws) in x's dtype
    and on x's device."""
    head = HEADS[name][0](x.shape[1], w.shape[0], impl=impl, **kw).to(x.device, x.dtype)
    head.train(train)
    head.weight.data.copy_(w)
    x = x.detach().requires_grad_()
    loss = head(x, y)
    return (loss.detach(), *torch.autograd.grad(loss, (x, head.weight)))


@pytest.mark.parametrize("name", list(HEADS))
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_heads_chunked_equal_eager(name, dtype, rel, schedule):
    x, w, y = (t.to(dtype) if t.is_floating_point() else t for t in problem(norm=HEADS[name][1]))
    for train in (True, False):  # training: AdaFace's EMAs move, ElasticFace draws
        expected = head_loss_and_grads(name, "eager", x, w, y, train)
        actual = head_loss_and_grads(name, "chunked", x, w, y, train)
        assert actual[0].dtype == dtype
        assert_close_rel(actual, expected, rel)


def test_curricularface_problem_has_hard_negatives():
    x, w, y = problem(norm=HEADS["curricularface"][1])
    head = curricularface(D, C).double()
    head.weight.data.copy_(w)
    cos = head.logits(x) / head.scale  # (N, C)
    bar = torch.cos(torch.acos(cos.gather(1, y[:, None])) + head.margin)
    assert int((cos > bar).sum()) > 2 * N  # besides the targets


def test_magface_margin_gradient_through_the_norm_reaches_chunked():
    """MagFace's margin m(|x|) carries a gradient through |x| (the target logit's autograd):
    with lambda_g = 0 and the norm inside [l_a, u_a], d loss / d|x| is not zero and the
    chunked path has it as eager does."""
    x, w, y = problem(norm=60.0, seed=1)
    grads = [head_loss_and_grads("magface-seed", impl, x, w, y, lambda_g=0.0)[1]
             for impl in ("eager", "chunked")]
    radial = [(g * x / x.norm(dim=1, keepdim=True)).sum(1) for g in grads]  # (N,)
    assert float(radial[0].abs().max()) > 1e-4
    torch.testing.assert_close(radial[1], radial[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_target_cross_entropy_gradients_of_every_input(reduction, schedule):
    """target_cross_entropy with a target logit that depends on |x| and on a free leaf:
    d/dx, d/dw and d/dleaf, chunked against eager, upstream gradient random for 'none'."""
    x, w, y = problem(norm=3.0, seed=2)
    extra = torch.linspace(-0.2, 0.3, N, dtype=torch.float64)
    results = []
    for impl in ("eager", "chunked"):
        leaves = [t.clone().requires_grad_() for t in (x, w, extra)]
        xs, ws, es = leaves
        cos_t = target_cosines(xs, ws, y)  # (N,)
        target = 30.0 * (cos_t - 0.1 * xs.norm(dim=1)) + es  # (N,)
        loss = target_cross_entropy(xs, ws, y, target, scale=30.0, reduction=reduction,
                                    impl=impl)
        upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(3),
                              dtype=torch.float64) + 0.5
        results.append((loss.detach(), *torch.autograd.grad(loss, leaves, upstream)))
    assert_close_rel(results[1], results[0], 1e-10)


@pytest.mark.parametrize(  # AdaFace at |x| ~ 2: z = -1, ArcFace's cos(theta + m)
    "name,norm", [("adaface", 2.0), ("magface-easy", 60.0), ("elastic-arc", 1.0),
                  ("elastic-cos", 1.0), ("curricularface", 1.0)])
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
def test_confident_targets_do_not_cancel(name, norm, dtype, rel):
    """Half the rows on their class centre at s = 64, so 1 - p_target < 1e-6 there: chunked
    (loss and gradients) against float64 eager. Taking the plain target's exp back out of a
    log-sum-exp would lose exp(s cos_t) * eps against a remainder e^14 or more smaller."""
    x, w, y = problem(n=8, c=50, d=64, norm=norm, seed=4)
    centres = w[y[:4]] / w[y[:4]].norm(dim=1, keepdim=True)  # (4, D)
    x[:4] = centres * norm * torch.linspace(0.8, 1.2, 4, dtype=torch.float64)[:, None]
    kw = {"scale": 64.0, "lambda_g": 0.0} if name.startswith("magface") else {"scale": 64.0}
    exact = head_loss_and_grads(name, "eager", x, w, y, False, **kw)
    chunked = head_loss_and_grads(name, "chunked", x.to(dtype), w.to(dtype), y, False, **kw)
    head = HEADS[name][0](64, 50, **kw).double().eval()
    head.weight.data.copy_(w)
    per_row = torch.nn.functional.cross_entropy(head.logits(x, y), y, reduction="none")
    assert float(per_row[:4].max().detach()) < 1e-6 < float(per_row[4:].min().detach())
    assert_close_rel([t.double() for t in chunked], exact, rel)


@pytest.mark.parametrize("impl,holds_logits", [("eager", True), ("chunked", False),
                                               ("auto", False)])
@pytest.mark.parametrize("keep_rows", [0, 8])  # two sweeps; kept blocks of 8 rows
@pytest.mark.parametrize("name", PROBED)
def test_chunked_heads_never_allocate_the_logits(name, impl, holds_logits, keep_rows,
                                                 monkeypatch):
    """A training step (forward and backward) of each head: chunked (and auto, since
    N * C = 192000 > 2^17) returns no tensor as large as the (N, C) logits; eager, through the
    same probe, does (the probe can fail)."""
    n, c, d = 64, 3000, 8
    monkeypatch.setattr(plan, "KEEP_BYTES", 4 * c * keep_rows)
    monkeypatch.setattr(plan, "TILE_BYTES", 4 * n * 256)
    x, w, y = problem(n, c, d, norm=HEADS[name][1], seed=5)
    head = HEADS[name][0](d, c, impl=impl).float().train()
    head.weight.data.copy_(w)
    x = x.float().requires_grad_()
    with LargestAllocation() as probe:
        head(x, y).backward()
    assert (probe.largest >= n * c) == holds_logits
    if not holds_logits:
        assert probe.largest <= max(c * d, c * keep_rows, 256 * n)


@torch.no_grad()
@pytest.mark.parametrize("name", ["adaface", "magface-easy", "elastic-cos", "curricularface"])
def test_bfloat16_chunked_close_to_float32(name):
    x, w, y = problem(n=16, norm=HEADS[name][1], seed=6)
    losses = []
    for dtype, impl in ((torch.float32, "eager"), (torch.bfloat16, "chunked")):
        head = HEADS[name][0](D, C, impl=impl).to(dtype).eval()
        head.weight.copy_(w)
        losses.append(head(x.to(dtype), y))
    assert losses[1].dtype == torch.bfloat16
    assert float(losses[1]) == pytest.approx(float(losses[0]), rel=0.03, abs=0.05)


def test_bad_inputs_name_the_argument():
    x, w, y = problem()
    t = torch.zeros(N, dtype=torch.float64)
    with pytest.raises(ValueError, match="impl.*triton"):
        ms.CurricularFace(D, C, impl="triton")  # the kernels have no hard-negative transform
    hard = HardNegatives(torch.tensor(0.1, dtype=torch.float64), torch.zeros_like(t))
    with pytest.raises(ValueError, match="impl='triton' has no non-target transform"):
        target_cross_entropy(x, w, y, t, scale=30.0, impl="triton", non_target=hard)
    with pytest.raises(ValueError, match=r"target_logit must have shape \(11,\)"):
        target_cross_entropy(x, w, y, t[:3], scale=30.0)
    with pytest.raises(ValueError, match="target_logit contains non-finite"):
        target_cross_entropy(x, w, y, t / 0, scale=30.0)
    with pytest.raises(TypeError, match="target_logit must be a float tensor"):
        target_cross_entropy(x, w, y, y, scale=30.0)


@pytest.mark.gpu
@pytest.mark.parametrize("name", PROBED)
@pytest.mark.parametrize("two_sweeps", [False, True])
def test_heads_chunked_on_cuda_equal_float64(name, two_sweeps, monkeypatch):
    """On a GPU, float32: chunked within 1e-5 of float64 eager, several tiles (1000 classes
    each, C not a multiple), one kept block or two sweeps."""
    if two_sweeps:
        monkeypatch.setattr(plan, "MIN_KEEP_ROWS", 10**9)
    monkeypatch.setattr(plan, "GPU_TILE_FACTOR", 1)
    for key in ("TILE_BYTES", "FUSED_TILE_BYTES"):
        monkeypatch.setattr(plan, key, 4 * 96 * 1000)
    x, w, y = problem(96, 5003, 64, norm=HEADS[name][1], seed=7)
    exact = head_loss_and_grads(name, "eager", x, w, y)
    inputs = [t.to("cuda", torch.float32) for t in (x, w)]
    chunked = head_loss_and_grads(name, "chunked", *inputs, y.cuda())
    assert_close_rel([t.double().cpu() for t in chunked], exact, 1e-5)
