"""Margin (margins.py) at hand-chosen points, against closed forms written out here, and its
checks' exact messages."""

import math

import pytest
import torch
from exact_message import exactly

from margin_softmax.margins import Margin, apply_margin, check_m3, clamp_eps


def psi_and_grad(margin: Margin, cos: list[float]) -> tuple[list[float], list[float]]:
    value, grad = margin.psi_and_grad(torch.tensor(cos, dtype=torch.float64))
    return value.tolist(), grad.tolist()


@pytest.mark.parametrize("m3", [0.0, 0.25])
def test_seed_fallback_beyond_pi_is_cos_minus_m2_sin_m2_minus_m3(m3):
    # c = 0 with m2 = pi/2 is t = pi exactly: the seed counts t >= pi as beyond
    m2 = math.pi / 2
    value, grad = psi_and_grad(Margin(m2=m2, m3=m3, fallback="seed"), [-1.0, -0.5, 0.0, 0.5])
    theta = math.acos(0.5)
    expected = [-1.0 - m2 - m3, -0.5 - m2 - m3, -m2 - m3, math.cos(theta + m2) - m3]
    assert value == pytest.approx(expected, rel=1e-14, abs=1e-15)
    assert grad == pytest.approx([1, 1, 1, math.sin(theta + m2) / math.sin(theta)], rel=1e-9)


def test_on_the_boundary_t_pi_seed_falls_back_and_the_others_do_not():
    m2 = 0.5
    c = math.cos(math.pi - m2)  # the seed's own test: c <= cos(pi - m2)
    assert psi_and_grad(Margin(m2=m2, fallback="seed"), [c]) == ([c - m2 * math.sin(m2)], [1.0])
    for fallback in ("continuous", "none", "piecewise"):  # m1 = 2 at c = 0 is t = pi exactly
        value, grad = psi_and_grad(Margin(m1=2.0, fallback=fallback), [0.0])
        assert value == [-1.0] and abs(grad[0]) < 1e-15, fallback  # m1 sin(pi) / 1, not slope 1


@pytest.mark.parametrize("m1", [1.0, 2.0])
def test_continuous_fallback_beyond_pi_with_every_margin(m1):
    m2, m3 = 0.5, 0.25
    theta = [3.0, 0.5]  # t beyond pi, t inside
    value, grad = psi_and_grad(Margin(m1, m2, m3, "continuous"), [math.cos(a) for a in theta])
    theta_t = (math.pi - m2) / m1
    t = m1 * 0.5 + m2
    assert value == pytest.approx([math.cos(3.0) - math.cos(theta_t) - 1 - m3,
                                   math.cos(t) - m3], rel=1e-12)
    assert grad == pytest.approx([1.0, m1 * math.sin(t) / math.sin(0.5)], rel=1e-9)


def test_piecewise_fallback_with_m2_and_m3():
    m1, m2, m3 = 2.0, 0.5, 0.25
    theta = [0.5, 2.0, 3.0]  # t = 1.5, 4.5, 6.5: k = 0, 1, 2
    value, grad = psi_and_grad(Margin(m1, m2, m3, "piecewise"), [math.cos(a) for a in theta])
    t = [m1 * a + m2 for a in theta]
    sign = [1, -1, 1]
    assert value == pytest.approx(
        [sign[k] * math.cos(t[k]) - 2 * k - m3 for k in range(3)], rel=1e-12)
    assert grad == pytest.approx(
        [sign[k] * m1 * math.sin(t[k]) / math.sin(theta[k]) for k in range(3)], rel=1e-9)


def test_none_fallback_turns_back_up_beyond_pi():
    value, grad = psi_and_grad(Margin(m1=2.0, m2=0.5, m3=0.25), [math.cos(2.0)])
    assert value == pytest.approx([math.cos(4.5) - 0.25], rel=1e-12)
    assert grad == pytest.approx([2 * math.sin(4.5) / math.sin(2.0)], rel=1e-9)


def test_easy_fallback_keeps_the_plain_cosine_where_it_is_not_positive():
    value, grad = psi_and_grad(Margin(m2=0.5, m3=0.25, fallback="easy"), [-0.5, 0.0, 0.5])
    theta = math.acos(0.5)
    assert value == pytest.approx([-0.5, 0.0, math.cos(theta + 0.5) - 0.25], rel=1e-14)
    assert grad == pytest.approx([1, 1, math.sin(theta + 0.5) / math.sin(theta)], rel=1e-9)


def test_cosface_blend_and_straight_through():
    value, grad = psi_and_grad(Margin(m3=0.25, blend=3.0), [0.5])
    assert value == pytest.approx([(3 * 0.5 + 0.25) / 4])  # (blend cos + cos - m3) / (1 + blend)
    assert grad == pytest.approx([1.0])
    theta = math.acos(0.5)
    arc = Margin(m2=0.5, blend=1.0)
    value, grad = psi_and_grad(arc, [0.5])
    assert value == pytest.approx([(0.5 + math.cos(theta + 0.5)) / 2], rel=1e-14)
    assert grad == pytest.approx([(1 + math.sin(theta + 0.5) / math.sin(theta)) / 2], rel=1e-9)
    _, grad = psi_and_grad(Margin(m2=0.5, straight_through=True), [0.5, -0.9])
    assert grad == [1.0, 1.0]


def test_psi_prime_is_finite_at_the_poles_in_each_dtype():
    assert clamp_eps(torch.float64) == 1e-10
    assert clamp_eps(torch.float32) == 1e-6
    cos = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    apply_margin(cos, Margin(m2=0.5)).backward()
    theta = math.acos(1 - 1e-10)
    assert cos.grad.item() == pytest.approx(math.sin(theta + 0.5) / math.sin(theta), rel=1e-4)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"m2": math.pi}, ValueError, f"m2 (additive angular margin) must be in [0, pi), got "
                                      f"{math.pi!r}"),
        ({"m2": -0.1}, ValueError, "m2 (additive angular margin) must be in [0, pi), got -0.1"),
        ({"m1": 0}, ValueError, "m1 must be > 0, got 0.0"),
        ({"m1": math.inf}, ValueError, "m1 must be finite, got inf"),
        ({"blend": -1e-9}, ValueError, "blend (SphereFace's lambda) must be >= 0, got -1e-09"),
        ({"m3": 2.0}, ValueError, "m3 (additive cosine margin) must be in [0, 2), got 2.0"),
        ({"m3": -0.5}, ValueError, "m3 (additive cosine margin) must be in [0, 2), got -0.5"),
        ({"m2": "0.5"}, TypeError, "m2 must be a float, got '0.5'"),
        ({"m3": "0.5"}, TypeError, "m3 must be a float, got '0.5'"),
        ({"straight_through": "False"}, TypeError,
         "straight_through must be a bool, got 'False'"),
        ({"fallback": "Seed"}, ValueError, "fallback must be one of ('none', 'seed', "
                                           "'continuous', 'easy', 'piecewise'), got 'Seed'"),
        ({"m1": 2, "fallback": "seed"}, ValueError,
         "fallback='seed' is defined for m1 == 1 only, got m1=2.0"),
    ],
)
def test_bad_parameters_are_named_with_their_value(kwargs, error, message):
    with pytest.raises(error, match=exactly(message)):
        Margin(**kwargs)


def test_parameters_become_python_floats_and_m3_keeps_its_name():
    margin = Margin(m1=2, m2=0, m3=0, blend=1)
    assert [type(v) for v in (margin.m1, margin.m2, margin.m3, margin.blend)] == [float] * 4
    assert check_m3(1) == 1.0
    with pytest.raises(ValueError, match=exactly(
            "margin (additive cosine margin) must be in [0, 2), got 2.5")):
        check_m3(2.5, "margin")
    m2_at_edge = math.nextafter(math.pi, 0)
    assert Margin(m2=m2_at_edge).m2 == m2_at_edge
    assert Margin(m3=math.nextafter(2.0, 0)).m3 < 2


def test_cosines_outside_plus_minus_one_are_clamped():
    assert psi_and_grad(Margin(m3=0.25), [-1.5, 1.5]) == ([-1.25, 0.75], [1.0, 1.0])
    arc = Margin(m2=0.5)
    assert psi_and_grad(arc, [-1.5, 1.5]) == psi_and_grad(arc, [-1.0, 1.0])
