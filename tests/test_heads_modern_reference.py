"""The modern heads' losses and state updates against independent NumPy transcriptions of
each paper's formula (float64), written from the equations, not from the heads' code."""

import numpy as np
import pytest
import torch

import margin_softmax as ms

D, C, N = 6, 9, 16


def problem(seed, norm=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D))
    if norm is not None:
        x = x / np.linalg.norm(x, axis=1, keepdims=True) * rng.uniform(norm / 2, 3 * norm / 2,
                                                                        size=(N, 1))
    return x, rng.integers(0, C, size=N)


def with_weight(head, rng_seed=0):
    head = head.double()
    w = np.random.default_rng(rng_seed + 100).normal(size=tuple(head.weight.shape))
    head.weight.data.copy_(torch.from_numpy(w))
    return head, w


def cosines(x, w):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    return xn @ wn.T


def cross_entropy(logits, y):
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float(np.mean(lse - logits[np.arange(len(y)), y]))


def with_target(cos, y, target):
    out = cos.copy()
    out[np.arange(len(y)), y] = target
    return out


def loss_of(head, x, y):
    with torch.no_grad():
        return head(torch.from_numpy(x), torch.from_numpy(y)).item()


def test_curricularface_matches_the_paper():
    m, s = 0.5, 64.0
    head, w = with_weight(ms.CurricularFace(D, C, margin=m, scale=s))
    x, y = problem(1)
    cos = cosines(x, w)
    cy = cos[np.arange(N), y]
    t = 0.01 * cy.mean() + 0.99 * 0.0  # the first training step updates t before the logits
    theta = np.arccos(cy)
    target = np.where(theta + m < np.pi, np.cos(theta + m), cy - m * np.sin(m))
    hard = cos > np.cos(theta + m)[:, None]
    logits = with_target(np.where(hard, cos * (t + cos), cos), y, target)
    assert loss_of(head, x, y) == pytest.approx(cross_entropy(s * logits, y), rel=1e-10)
    assert float(head.t) == pytest.approx(t, rel=1e-12)
    t2 = 0.01 * cy.mean() + 0.99 * t
    loss_of(head, x, y)
    assert float(head.t) == pytest.approx(t2, rel=1e-12)


def test_adaface_matches_the_official_formula():
    m, h, s, alpha, eps = 0.4, 0.333, 64.0, 0.01, 1e-3
    head, w = with_weight(ms.AdaFace(D, C, margin=m, h=h, scale=s, t_alpha=alpha))
    x, y = problem(2, norm=20.0)
    norms = np.clip(np.linalg.norm(x, axis=1), 0.001, 100)
    mean = alpha * norms.mean() + (1 - alpha) * 20.0
    std = alpha * norms.std(ddof=1) + (1 - alpha) * 100.0
    z = np.clip(h * (norms - mean) / (std + eps), -1, 1)
    cy = np.clip(cosines(x, w)[np.arange(N), y], -1 + eps, 1 - eps)
    theta = np.clip(np.arccos(cy) - m * z, eps, np.pi - eps)
    target = np.cos(theta) - (m + m * z)
    expected = cross_entropy(s * with_target(cosines(x, w), y, target), y)
    assert loss_of(head, x, y) == pytest.approx(expected, rel=1e-10)
    assert float(head.batch_mean) == pytest.approx(mean, rel=1e-12)
    assert float(head.batch_std) == pytest.approx(std, rel=1e-12)
    assert np.ptp(z) > 0.05  # the margins really differ between samples


def test_adaface_single_sample_keeps_the_std():
    head = ms.AdaFace(D, C).double()
    head(torch.randn(1, D, dtype=torch.float64) * 30, torch.tensor([0]))
    assert float(head.batch_std) == 100.0 and float(head.batch_mean) != 20.0


@pytest.mark.parametrize("fallback", ["easy", "seed"])
def test_magface_matches_the_paper(fallback):
    s, l_a, u_a, l_m, u_m, lam = 64.0, 10.0, 110.0, 0.45, 0.8, 35.0
    head, w = with_weight(ms.MagFace(D, C, fallback=fallback))
    x, y = problem(3, norm=60.0)
    x[0] *= 0.05  # below l_a: clamped
    a = np.clip(np.linalg.norm(x, axis=1), l_a, u_a)
    margin = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m
    cos = cosines(x, w)
    cy = cos[np.arange(N), y]
    theta = np.arccos(cy)
    if fallback == "easy":
        target = np.where(cy > 0, np.cos(theta + margin), cy)
    else:
        target = np.where(theta + margin < np.pi, np.cos(theta + margin),
                          cy - margin * np.sin(margin))
    expected = cross_entropy(s * with_target(cos, y, target), y) + lam * np.mean(1 / a + a / u_a**2)
    assert loss_of(head, x, y) == pytest.approx(expected, rel=1e-10)


def test_magface_regulariser_gradient_matches_its_derivative():
    head = ms.MagFace(D, C, lambda_g=35.0).double()
    a = torch.tensor([[30.0] + [0.0] * (D - 1)], dtype=torch.float64, requires_grad=True)
    head.extra_loss(a).backward()
    assert a.grad[0, 0].item() == pytest.approx(35.0 * (-1 / 30.0**2 + 1 / 110.0**2), rel=1e-12)


@pytest.mark.parametrize("blocks", [False, True])
def test_adacos_scale_update_and_loss_match_the_paper(blocks, monkeypatch):
    if blocks:  # several blocks of classes in the B_avg sum
        monkeypatch.setattr("margin_softmax.heads.adacos.AUTO_CHUNK_ELEMENTS", 2 * N)
    head, w = with_weight(ms.AdaCos(D, C, impl="eager"))
    s0 = np.sqrt(2) * np.log(C - 1)
    assert head.scale == pytest.approx(s0, rel=1e-15)
    x, y = problem(4)
    cos = cosines(x, w)
    others = np.ones_like(cos, dtype=bool)
    others[np.arange(N), y] = False
    b_avg = np.exp(s0 * cos[others]).sum() / N
    theta_med = np.sort(np.arccos(cos[np.arange(N), y]))[(N - 1) // 2]  # the lower median
    s1 = np.log(b_avg) / np.cos(min(np.pi / 4, theta_med))
    assert loss_of(head, x, y) == pytest.approx(cross_entropy(s1 * cos, y), rel=1e-10)
    assert head.scale == pytest.approx(s1, rel=1e-12)

    fixed, _ = with_weight(ms.AdaCos(D, C, dynamic=False))
    assert loss_of(fixed, x, y) == pytest.approx(cross_entropy(s0 * cos, y), rel=1e-10)


@pytest.mark.parametrize("kind", ["arc", "cos"])
def test_elastic_training_loss_uses_the_seeded_draws(kind):
    m, std, s, seed = (0.5, 0.05, 64.0, 3) if kind == "arc" else (0.35, 0.05, 64.0, 3)
    cls = ms.ElasticArcFace if kind == "arc" else ms.ElasticCosFace
    head, w = with_weight(cls(D, C, margin=m, std=std, scale=s, seed=seed))
    margins = cls(D, C, margin=m, std=std, seed=seed).draw_margins(N).numpy()  # same stream
    x, y = problem(5)
    cos = cosines(x, w)
    cy = cos[np.arange(N), y]
    target = np.cos(np.arccos(cy) + margins) if kind == "arc" else cy - margins
    expected = cross_entropy(s * with_target(cos, y, target), y)
    assert loss_of(head, x, y) == pytest.approx(expected, rel=1e-10)
