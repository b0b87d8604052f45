"""The NumPy reference (reference.py) at hand-chosen points, against closed forms written out
here; killed mutants that the gradient checks in test_reference.py let through."""

import math
import re

import numpy as np
import pytest

from margin_softmax import reference as R

E = math.e


def exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


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
