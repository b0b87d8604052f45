"""The NumPy reference (reference.py) at hand-chosen points, against closed forms written out
here; killed mutants that the gradient checks in test_reference.py let through."""

import math

import numpy as np
import pytest
from exact_message import exactly

from margin_softmax import reference as R

E = math.e


def test_softmax_subtracts_each_rows_own_maximum():
    Z = np.array([[0.0, 1.0], [1000.0, 1001.0]])  # one global maximum would make row 0 0/0
    expected = np.array([[1.0, E], [1.0, E]]) / (1 + E)
    np.testing.assert_allclose(R.softmax(Z), expected, rtol=1e-14)
    np.testing.assert_allclose(R.log_softmax(Z), np.log(expected), rtol=1e-14)


@pytest.mark.parametrize("m3", [0.0, 0.25])
def test_seed_fallback_beyond_pi_is_cos_minus_m2_sin_m2_minus_m3(m3):
    # c = 0 with m2 = pi/2 is t = pi exactly: the seed counts t >= pi as beyond
    c = np.array([-1.0, -0.5, 0.0, 0.5])
    m2 = math.pi / 2
    psi, dpsi = R.psi_combined(c, m2=m2, m3=m3, fallback="seed")
    beyond = c[:3] - m2 - m3  # sin(pi/2) = 1
    inside = math.cos(math.acos(0.5) + m2) - m3
    np.testing.assert_allclose(psi, [*beyond, inside], rtol=1e-14)
    inside_slope = math.sin(math.acos(0.5) + m2) / math.sin(math.acos(0.5))
    np.testing.assert_allclose(dpsi, [1.0, 1.0, 1.0, inside_slope], rtol=1e-9)


def test_on_the_boundary_t_pi_only_the_seed_falls_back():
    for fallback in ("continuous", "none", "piecewise"):  # m1 = 2 at c = 0 is t = pi exactly
        psi, dpsi = R.psi_combined(np.array([0.0]), m1=2, fallback=fallback)
        assert psi.tolist() == [-1.0] and abs(dpsi[0]) < 1e-15, fallback


def test_continuous_fallback_beyond_pi_with_every_margin():
    m1, m2, m3 = 2.0, 0.5, 0.25  # theta_t = (pi - m2) / m1
    theta = np.array([2.0, 0.5])  # t = 4.5 > pi, t = 1.5 < pi
    psi, dpsi = R.psi_combined(np.cos(theta), m1, m2, m3, fallback="continuous")
    theta_t = (math.pi - m2) / m1
    expected = [math.cos(2.0) - math.cos(theta_t) - 1 - m3, math.cos(1.5) - m3]
    np.testing.assert_allclose(psi, expected, rtol=1e-12)
    np.testing.assert_allclose(dpsi, [1.0, m1 * math.sin(1.5) / math.sin(0.5)], rtol=1e-9)


def test_piecewise_fallback_with_m2_and_m3():
    m1, m2, m3 = 2.0, 0.5, 0.25
    theta = np.array([0.5, 2.0, 3.0])  # t = 1.5, 4.5, 6.5: k = 0, 1, 2
    psi, dpsi = R.psi_combined(np.cos(theta), m1, m2, m3, fallback="piecewise")
    t = m1 * theta + m2
    sign = np.array([1.0, -1.0, 1.0])
    np.testing.assert_allclose(psi, sign * np.cos(t) - 2 * np.array([0, 1, 2]) - m3, rtol=1e-12)
    np.testing.assert_allclose(dpsi, sign * m1 * np.sin(t) / np.sin(theta), rtol=1e-9)


def test_easy_fallback_keeps_the_plain_cosine_where_it_is_not_positive():
    c = np.array([-0.5, 0.0, 0.5])
    psi, dpsi = R.psi_combined(c, m2=0.5, m3=0.25, fallback="easy")
    theta = math.acos(0.5)
    np.testing.assert_allclose(psi, [-0.5, 0.0, math.cos(theta + 0.5) - 0.25], rtol=1e-14)
    np.testing.assert_allclose(dpsi, [1.0, 1.0, math.sin(theta + 0.5) / math.sin(theta)],
                               rtol=1e-9)


def test_psi_prime_is_evaluated_inside_the_poles():
    # m1 = 1, m2 = 0.5 at cos = 1: sin(t)/sin(theta) with cos clamped to 1 - COS_EPS
    theta = math.acos(1 - R.COS_EPS)
    _, dpsi = R.psi_combined(np.array([1.0]), m2=0.5)
    np.testing.assert_allclose(dpsi, [math.sin(theta + 0.5) / math.sin(theta)], rtol=1e-6)


def test_unknown_fallback_and_seed_with_m1_are_named():
    with pytest.raises(ValueError, match=exactly("unknown fallback 'Seed'")):
        R.psi_combined(np.zeros(1), m2=0.5, fallback="Seed")
    with pytest.raises(ValueError, match=exactly("fallback='seed' needs m1 == 1, got 2")):
        R.psi_combined(np.zeros(1), m1=2, fallback="seed")


def test_cosines_outside_plus_minus_one_are_clipped():
    psi, dpsi = R.psi_combined(np.array([-1.5, 1.5]), m2=0.5)
    at_poles = R.psi_combined(np.array([-1.0, 1.0]), m2=0.5)
    np.testing.assert_array_equal(psi, at_poles[0])
    np.testing.assert_array_equal(dpsi, at_poles[1])
    assert R.psi_combined(np.array([1.5]), m3=0.25)[0].tolist() == [0.75]


def test_sphereface_m2_without_an_angular_offset():
    c = np.array([-0.5, 0.0, 0.5])  # cos(2 theta) = 2c^2 - 1, its derivative 4c
    psi, dpsi = R.psi_combined(c, m1=2)
    np.testing.assert_allclose(psi, 2 * c**2 - 1, atol=1e-15)
    np.testing.assert_allclose(dpsi, 4 * c, atol=1e-12)


def test_cross_entropy_ignores_zero_probabilities_off_the_target():
    P = np.array([[1.0, 0.0], [0.25, 0.75]])
    loss, dP = R.cross_entropy_loss(P, np.array([0, 1]))
    assert loss == pytest.approx(-math.log(0.75) / 2, rel=1e-15)
    np.testing.assert_array_equal(dP, [[-0.5, 0.0], [0.0, -1 / 1.5]])
    with pytest.raises(ValueError, match=exactly("P must be > 0 wherever y > 0 (log 0 is -inf)")):
        R.cross_entropy_loss(P, np.array([1, 1]))


def test_normalize_backward_of_a_row_shorter_than_eps_is_the_linear_map():
    A = np.array([[1e-13, 0.0], [3.0, 4.0]])
    A_hat, n = R.normalize(A)
    np.testing.assert_array_equal(A_hat, [[0.1, 0.0], [0.6, 0.8]])
    np.testing.assert_array_equal(n, [[R.NORM_EPS], [5.0]])
    g = np.array([[1.0, 2.0], [1.0, 0.0]])
    # row 0: g / eps; row 1: (g - a_hat (a_hat . g)) / |a| = ([1, 0] - 0.6 [0.6, 0.8]) / 5
    np.testing.assert_allclose(R.normalize_backward(A_hat, n, g),
                               [[1e12, 2e12], [0.128, -0.096]], rtol=1e-15)


def test_top_k_ties_go_to_the_lower_class():
    logits = np.tile([1.0, 2.0], 9)[None, :17]  # classes 1, 3, 5, ... tie at 2
    assert R.accuracy(logits, np.array([5]), topk=(2, 3)) == [0.0, 100.0]


@pytest.mark.parametrize(
    "y, error, message",
    [
        (np.array([0.0, 1.0]), TypeError, "y must hold integer class indices, got dtype float64"),
        (np.array([0, 1, 2]), ValueError, "y must have shape (2,), got (3,)"),
        (np.array([0, 3]), ValueError, "labels y must be in [0, 3), got 3"),
        (np.array([-1, 3]), ValueError, "labels y must be in [0, 3), got -1"),
        (np.eye(2), ValueError, "y must have shape (2,) or (2, 3), got (2, 2)"),
        (np.array([[0.5, 0.6, 0.0], [1, 0, 0]]), ValueError,
         "label matrix y must have non-negative rows that sum to 1"),
        (np.array([[1.5, -0.5, 0.0], [1, 0, 0]]), ValueError,
         "label matrix y must have non-negative rows that sum to 1"),
    ],
)
def test_bad_labels_are_named_exactly(y, error, message):
    with pytest.raises(error, match=exactly(message)):
        R.softmax_loss(np.zeros((2, 3)), y)


def test_margin_losses_name_soft_rows_exactly():
    with pytest.raises(ValueError, match=exactly(
            "margin losses need one target class per sample: y has soft rows")):
        R.am_softmax_loss(np.eye(2), np.eye(2), np.full((2, 2), 0.5))


def test_soft_label_gradient_is_exact_for_rows_as_given():
    # a row summing to 1 + 5e-6 passes the check; dL/dZ = (P rowsum(Y) - Y) / N for it too
    Y = np.array([[0.5, 0.500005]])
    loss, dZ = R.softmax_loss(np.zeros((1, 2)), Y)
    assert loss == pytest.approx(1.000005 * math.log(2), rel=1e-14)
    np.testing.assert_allclose(dZ, [[0.5 * 1.000005 - 0.5, 0.5 * 1.000005 - 0.500005]],
                               rtol=1e-9)


def test_cosface_and_arcface_with_m2_one_radian():
    c = np.array([-0.5, 0.0, 0.5])
    psi, dpsi = R.psi_combined(c, m3=0.25)
    assert psi.tolist() == [-0.75, -0.25, 0.25] and dpsi.tolist() == [1.0, 1.0, 1.0]
    psi, dpsi = R.psi_combined(c, m2=1.0)  # cos(theta + 1) = c cos 1 - sqrt(1 - c^2) sin 1
    np.testing.assert_allclose(psi, c * math.cos(1) - np.sqrt(1 - c**2) * math.sin(1),
                               rtol=1e-14)
    np.testing.assert_allclose(dpsi, math.cos(1) + math.sin(1) * c / np.sqrt(1 - c**2),
                               rtol=1e-12)


def test_psi_prime_is_finite_at_minus_one():
    theta = math.acos(-1 + R.COS_EPS)
    _, dpsi = R.psi_combined(np.array([-1.0]), m2=0.5)
    np.testing.assert_allclose(dpsi, [math.sin(theta + 0.5) / math.sin(theta)], rtol=1e-6)


def one_sample(c: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x = (2, 0) of class 0, whose centre is at cosine c; class 1's at cosine 0."""
    return np.array([[2.0, 0.0]]), np.array([[c, math.sqrt(1 - c * c)], [0.0, 1.0]]), np.array([0])


def loss_by_hand(r: float, psi: float) -> float:
    return math.log1p(math.exp(-r * psi))  # logits (r psi, 0) with the target first


SEED_C = -0.99  # theta + 0.2 > pi: ArcFace's seed fallback applies


@pytest.mark.parametrize(
    "loss, c, r, psi",
    [
        (lambda X, W, y: R.normface_loss(X, W, y), 0.6, 30, 0.6),
        (lambda X, W, y: R.am_softmax_loss(X, W, y), 0.6, 30, 0.6 - 0.35),
        (lambda X, W, y: R.aam_softmax_loss(X, W, y), 0.6, 30, math.cos(math.acos(0.6) + 0.2)),
        (lambda X, W, y: R.aam_softmax_loss(X, W, y), SEED_C, 30,
         SEED_C - 0.2 * math.sin(0.2)),
        (lambda X, W, y: R.sphereface_loss(X, W, y), 0.6, 30,  # 4 theta in [pi, 2 pi): k = 1
         -math.cos(4 * math.acos(0.6)) - 2),
        (lambda X, W, y: R.sphereface_loss(X, W, y, m=2, s=3, blend=1, scale_by_norm=True),
         0.6, 3 * 2, (0.6 + math.cos(2 * math.acos(0.6))) / 2),
        (lambda X, W, y: R.margin_softmax_loss(X, W, y, 30, m2=0.2), SEED_C, 30,
         math.cos(math.acos(SEED_C) + 0.2)),  # fallback "none" by default, blend 0
        (lambda X, W, y: R.margin_softmax_loss(X, W, y, 30, m2=0.2, fallback="seed"), SEED_C,
         30, SEED_C - 0.2 * math.sin(0.2)),
        (lambda X, W, y: R.combined_margin_loss(X, W, y, 30, 1, 0.2, 0.1), SEED_C, 30,
         math.cos(math.acos(SEED_C) + 0.2) - 0.1),
        (lambda X, W, y: R.combined_margin_loss(X, W, y, 30, 1, 0.2, 0.1, "continuous"),
         SEED_C, 30, SEED_C - math.cos(math.pi - 0.2) - 1 - 0.1),
    ],
)
def test_each_loss_with_its_defaults_by_hand(loss, c, r, psi):
    X, W, y = one_sample(c)
    assert loss(X, W, y)[0] == pytest.approx(loss_by_hand(r, psi), rel=1e-12)
