"""Rung 1: every NumPy analytic gradient against central finite differences in float64."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from margin_softmax import reference as R

FD_STEP = 1e-6
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def finite_difference(f, A: np.ndarray) -> np.ndarray:
    """Central differences of the scalar f() with respect to every entry of A (in place)."""
    grad = np.zeros_like(A)
    for index in np.ndindex(A.shape):
        old = A[index]
        A[index] = old + FD_STEP
        up = f()
        A[index] = old - FD_STEP
        down = f()
        A[index] = old
        grad[index] = (up - down) / (2 * FD_STEP)
    return grad


def assert_close_grad(fd: np.ndarray, analytic: np.ndarray) -> None:
    err = np.linalg.norm(fd - analytic)
    assert err <= 1e-6 * np.linalg.norm(analytic) + 1e-8, (err, np.linalg.norm(analytic))


def check_loss_gradients(loss_fn, X, W, y, **kw) -> None:
    loss, dX, dW = loss_fn(X, W, y, **kw)
    assert np.isfinite(loss)
    assert_close_grad(finite_difference(lambda: loss_fn(X, W, y, **kw)[0], X), dX)
    assert_close_grad(finite_difference(lambda: loss_fn(X, W, y, **kw)[0], W), dW)


@st.composite
def problems(draw, min_classes=2):
    n = draw(st.integers(1, 5))
    c = draw(st.integers(min_classes, 6))
    d = draw(st.integers(2, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    X = rng.normal(size=(n, d)) * draw(st.floats(0.1, 10))
    W = rng.normal(size=(c, d))
    y = rng.integers(0, c, size=n)
    return X, W, y


def target_cos(X, W, y):
    Xh, _ = R.normalize(X)
    Wh, _ = R.normalize(W)
    return (Xh * Wh[y]).sum(axis=1)


# ----------------------------------------------------------------------------- softmax / CE


@SETTINGS
@given(problems(), st.floats(0.1, 20))
def test_softmax_loss_gradient(problem, spread):
    X, _, y = problem
    Z = X * spread
    Z = np.concatenate([Z, -Z], axis=1)  # (N, 2D) logits, at least 4 classes
    y = y % Z.shape[1]
    loss, dZ = R.softmax_loss(Z, y)
    assert_close_grad(finite_difference(lambda: R.softmax_loss(Z, y)[0], Z), dZ)
    assert loss >= 0


def test_softmax_loss_is_stable_for_huge_logits():
    Z = np.array([[1e4, 0.0, -1e4], [1e4, 1e4 - 1.0, 3.0]])
    loss, dZ = R.softmax_loss(Z, np.array([1, 0]))
    assert np.isfinite(loss) and np.isfinite(dZ).all()
    # row 0: -log p_1 = 1e4 exactly; row 1: log(1 + e^-1)
    assert loss == pytest.approx((1e4 + math.log1p(math.exp(-1))) / 2, rel=1e-12)


def test_softmax_loss_accepts_one_hot_and_soft_labels():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(4, 3))
    y = np.array([0, 2, 1, 2])
    one_hot = np.eye(3)[y]
    assert R.softmax_loss(Z, y)[0] == pytest.approx(R.softmax_loss(Z, one_hot)[0], rel=1e-14)
    soft = np.full((4, 3), 1 / 3)
    loss, dZ = R.softmax_loss(Z, soft)
    assert_close_grad(finite_difference(lambda: R.softmax_loss(Z, soft)[0], Z), dZ)


@SETTINGS
@given(problems())
def test_cross_entropy_gradient_and_relation_to_softmax_loss(problem):
    X, _, y = problem
    Z = np.tanh(np.concatenate([X, -X], axis=1))  # moderate P: FD steps stay small against P
    y = y % Z.shape[1]
    P = R.softmax(Z)
    loss, dP = R.cross_entropy_loss(P, y)
    assert loss == pytest.approx(R.softmax_loss(Z, y)[0], rel=1e-12)
    assert_close_grad(finite_difference(lambda: R.cross_entropy_loss(P, y)[0], P), dP)
    # chain rule through softmax: J^T dP == softmax_loss's dZ
    N = Z.shape[0]
    dZ_chain = np.stack([(np.diag(p) - np.outer(p, p)) @ g for p, g in zip(P, dP, strict=True)])
    assert np.allclose(dZ_chain, R.softmax_loss(Z, y)[1], atol=1e-12)
    assert np.allclose(dP[np.arange(N), y], -1 / (N * P[np.arange(N), y]))


def test_cross_entropy_rejects_zero_probability_on_the_target():
    with pytest.raises(ValueError, match="P must be > 0"):
        R.cross_entropy_loss(np.array([[0.0, 1.0]]), np.array([0]))


# ----------------------------------------------------------------------------- margins


@SETTINGS
@given(problems(), st.floats(1, 64))
def test_normface_gradient(problem, s):
    check_loss_gradients(R.normface_loss, *problem, s=s)


@SETTINGS
@given(problems(), st.floats(1, 64), st.floats(0, 0.6))
def test_am_softmax_gradient(problem, s, m):
    check_loss_gradients(R.am_softmax_loss, *problem, s=s, m=m)


@SETTINGS
@given(
    problems(),
    st.floats(1, 64),
    st.floats(0.05, 1.2),
    st.sampled_from(["seed", "continuous", "none", "easy"]),
    st.booleans(),
)
def test_aam_softmax_gradient(problem, s, m, fallback, straight_through):
    X, W, y = problem
    c = target_cos(X, W, y)
    # away from the jumps: seed at theta + m = pi, easy at cos = 0
    assume(np.abs(c - math.cos(math.pi - m)).min() > 1e-3 and np.abs(c).min() > 1e-3)
    loss, dX, dW = R.aam_softmax_loss(X, W, y, s=s, m=m, fallback=fallback)
    check_loss_gradients(R.aam_softmax_loss, X, W, y, s=s, m=m, fallback=fallback)
    if straight_through:  # psi' := 1 is a different (documented) gradient, not the exact one
        _, dX_st, _ = R.aam_softmax_loss(X, W, y, s, m, fallback, straight_through=True)
        assert dX_st.shape == dX.shape


@SETTINGS
@given(problems(), st.floats(1, 30), st.integers(1, 4), st.floats(0, 10), st.booleans())
def test_sphereface_gradient(problem, s, m, blend, by_norm):
    check_loss_gradients(R.sphereface_loss, *problem, m=m, s=s, blend=blend, scale_by_norm=by_norm)


@SETTINGS
@given(
    problems(),
    st.floats(1, 64),
    st.floats(0.5, 2.5),
    st.floats(0, 0.8),
    st.floats(0, 0.4),
    st.sampled_from(["continuous", "none", "piecewise"]),
)
def test_combined_margin_gradient(problem, s, m1, m2, m3, fallback):
    check_loss_gradients(R.combined_margin_loss, *problem, s=s, m1=m1, m2=m2, m3=m3,
                         fallback=fallback)


def test_gradients_inside_the_theta_plus_m_beyond_pi_region():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(3, 4))
    y = np.array([0, 1, 2, 0])
    # embeddings pointing nearly away from their class centre: theta ~ 2.9 > pi - 0.5
    X = -R.normalize(W)[0][y] + 0.1 * rng.normal(size=(4, 4))
    m = 0.5
    assert (np.arccos(target_cos(X, W, y)) + m > math.pi + 0.05).all()
    for fallback in ("seed", "continuous", "none"):
        check_loss_gradients(R.aam_softmax_loss, X, W, y, s=30.0, m=m, fallback=fallback)
    check_loss_gradients(R.combined_margin_loss, X, W, y, s=30.0, m1=1.3, m2=0.4, m3=0.1,
                         fallback="piecewise")


def test_straight_through_gradient_equals_psi_prime_one():
    rng = np.random.default_rng(2)
    X, W, y = rng.normal(size=(4, 5)), rng.normal(size=(6, 5)), np.array([0, 1, 2, 3])
    loss_st, dX_st, dW_st = R.aam_softmax_loss(X, W, y, m=0.3, straight_through=True)
    loss, dX, dW = R.aam_softmax_loss(X, W, y, m=0.3)
    assert loss_st == loss
    assert not np.allclose(dX_st, dX)
    # the straight-through gradient is the gradient of the loss with the target logit's
    # deviation psi(cos) - cos held constant: check it by finite differences of that loss
    delta = R.psi_combined(target_cos(X, W, y), m2=0.3, fallback="seed")[0] - target_cos(X, W, y)

    def frozen():
        c = target_cos(X, W, y)
        N = X.shape[0]
        Xh, Wh = R.normalize(X)[0], R.normalize(W)[0]
        cos = Xh @ Wh.T
        cos[np.arange(N), y] = c + delta
        return R.softmax_loss(30.0 * cos, y)[0]

    assert_close_grad(finite_difference(frozen, X), dX_st)
    assert_close_grad(finite_difference(frozen, W), dW_st)


def test_psi_values_match_their_definitions():
    c = np.linspace(-0.999, 0.999, 41)
    theta = np.arccos(c)
    assert np.allclose(R.psi_combined(c, m3=0.35)[0], c - 0.35)
    arc = R.psi_combined(c, m2=0.5, fallback="none")[0]
    assert np.allclose(arc, np.cos(theta + 0.5))
    seed = R.psi_combined(c, m2=0.5, fallback="seed")[0]
    beyond = theta + 0.5 >= math.pi
    assert np.allclose(seed[beyond], c[beyond] - 0.5 * math.sin(0.5))
    assert np.allclose(seed[~beyond], np.cos(theta[~beyond] + 0.5))
    cont = R.psi_combined(c, m2=0.5, fallback="continuous")[0]
    assert np.allclose(cont[beyond], c[beyond] - (1 - math.cos(0.5)))
    easy = R.psi_combined(c, m2=0.5, fallback="easy")[0]
    assert np.allclose(easy[c <= 0], c[c <= 0])
    sphere = R.psi_combined(c, m1=4, fallback="piecewise")[0]
    k = np.floor(4 * theta / math.pi)
    assert np.allclose(sphere, (-1) ** k * np.cos(4 * theta) - 2 * k)
    assert (np.diff(sphere) > 0).all()  # monotonic in cos (decreasing in theta)


def test_margin_losses_reject_soft_labels_but_accept_one_hot():
    rng = np.random.default_rng(3)
    X, W = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    y = np.array([4, 0, 2])
    assert R.aam_softmax_loss(X, W, np.eye(5)[y])[0] == R.aam_softmax_loss(X, W, y)[0]
    with pytest.raises(ValueError, match="soft rows"):
        R.am_softmax_loss(X, W, np.full((3, 5), 0.2))
    soft = np.full((3, 5), 0.2)
    _, dX, _ = R.normface_loss(X, W, soft)
    assert_close_grad(finite_difference(lambda: R.normface_loss(X, W, soft)[0], X), dX)


@pytest.mark.parametrize(
    "y, match",
    [(np.array([0, 5]), r"\[0, 5\), got 5"), (np.array([-1, 0]), "got -1"),
     (np.array([0, 1, 2]), r"shape \(2,\)"), (np.array([0.0, 1.0]), "integer")],
)
def test_reference_rejects_bad_labels(y, match):
    with pytest.raises((ValueError, TypeError), match=match):
        R.am_softmax_loss(np.ones((2, 3)), np.eye(5, 3), y)


def test_accuracy_is_the_seeds_prec1_in_percent():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.4, 0.35, 0.25]])
    y = np.array([1, 1, 2, 1])
    top1, top2 = R.accuracy(logits, y, topk=(1, 2))
    assert top1 == 50.0  # rows 0 and 2
    assert top2 == 100.0  # row 1's label is second, row 3's too
