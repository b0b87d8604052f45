"""margin_softmax.calibration against hand computations and the identities that define it:
C_llr of LLRs 0 is 1 bit, min C_llr <= C_llr, calibrated Gaussian LLRs have actDCF = minDCF,
and a linear calibration recovers the exact LLR of Gaussian scores."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from margin_softmax import calibration, metrics


def gaussian_trials(n, mean_tar, mean_non, sd, seed=0):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(mean_tar, sd, n), rng.normal(mean_non, sd, n)])
    return scores, np.r_[np.ones(n), np.zeros(n)]


def calibrated_llrs(n, mu, seed=0):
    """Target LLRs ~ N(mu, 2 mu), non-target ~ N(-mu, 2 mu): these are exact LLRs."""
    return gaussian_trials(n, mu, -mu, math.sqrt(2 * mu), seed)


@pytest.mark.parametrize("n_tar, n_non", [(1, 1), (3, 7), (1000, 1)])
def test_llrs_of_zero_cost_exactly_one_bit(n_tar, n_non):
    assert calibration.cllr(np.zeros(n_tar + n_non), np.r_[np.ones(n_tar), np.zeros(n_non)]) == 1.0


def test_cllr_by_hand():
    # targets 0 and ln 3: log2(2) = 1 and log2(1 + 1/3); non-target -ln 3: log2(1 + 1/3)
    expected = ((1 + math.log2(4 / 3)) / 2 + math.log2(4 / 3)) / 2
    value = calibration.cllr([0.0, math.log(3), -math.log(3)], [1, 1, 0])
    assert value == pytest.approx(expected, rel=1e-15)


def test_min_cllr_by_hand():
    # labels 0 1 0 1 in score order: PAV pools the middle two (posterior 1/2, LLR 0), the
    # ends are pure (LLR -inf, +inf): the middle target and non-target cost 1 bit each.
    assert calibration.pav_llr([1, 2, 3, 4], [0, 1, 0, 1]).tolist() == [-np.inf, 0, 0, np.inf]
    assert calibration.min_cllr([1, 2, 3, 4], [0, 1, 0, 1]) == pytest.approx(0.5, abs=1e-15)
    assert calibration.min_cllr([1, 2, 3, 4], [0, 0, 1, 1]) == 0.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-6, 6), st.booleans()), min_size=2, max_size=40))
def test_min_cllr_never_exceeds_cllr(trials):
    llr = np.array([t[0] for t in trials], dtype=float) / 2  # ties are common
    labels = np.array([t[1] for t in trials])
    if labels.all() or not labels.any():
        return
    assert calibration.min_cllr(llr, labels) <= calibration.cllr(llr, labels) + 1e-12


def test_min_cllr_is_the_same_for_any_increasing_map():
    scores, labels = gaussian_trials(500, 1.0, 0.0, 1.0)
    assert calibration.min_cllr(np.exp(scores), labels) == pytest.approx(
        calibration.min_cllr(scores, labels), abs=1e-12)


def test_act_dcf_by_hand():
    # p = 0.01: Bayes threshold log(99) = 4.595; target 5 accepted, 3 missed; non-target 4.6
    # accepted, -1 rejected: (0.01 * 1/2 + 0.99 * 1/2) / 0.01 = 50
    llr, labels = [5.0, 3.0, 4.6, -1.0], [1, 1, 0, 0]
    assert calibration.act_dcf(llr, labels, p_target=0.01) == pytest.approx(50.0)
    # at p = 0.5 the threshold is 0: only the non-target 4.6 is wrong: (0.5 * 1/2) / 0.5
    assert calibration.act_dcf(llr, labels, p_target=0.5) == pytest.approx(0.5)
    # an LLR at the threshold is accepted (score >= threshold, as in metrics)
    assert calibration.act_dcf([5.0, 0.0], [1, 0], p_target=0.5) == pytest.approx(1.0)


def test_costs_act_as_the_effective_prior():
    llr, labels = calibrated_llrs(300, 2.0)
    p, c_miss, c_fa = 0.01, 10.0, 1.0
    effective = c_miss * p / (c_miss * p + c_fa * (1 - p))
    assert calibration.act_dcf(llr, labels, p, c_miss, c_fa) == pytest.approx(
        calibration.act_dcf(llr, labels, effective), rel=1e-12)


@pytest.mark.parametrize("p", [0.001, 0.01, 0.05, 0.5, 0.9])
def test_calibrated_gaussian_llrs_have_act_dcf_near_min_dcf(p):
    llr, labels = calibrated_llrs(100_000, 2.0)
    actual, minimum = calibration.act_dcf(llr, labels, p), metrics.min_dcf(llr, labels, p)
    assert minimum - 1e-12 <= actual <= minimum + 0.03
    shifted = calibration.act_dcf(llr + 2.0, labels, p)  # miscalibrated: the gap shows
    assert shifted > minimum + 0.05


def test_calibrated_gaussian_llrs_have_cllr_near_min_cllr():
    llr, labels = calibrated_llrs(100_000, 2.0)
    assert calibration.cllr(llr, labels) - calibration.min_cllr(llr, labels) < 0.005
    assert calibration.cllr(2 * llr, labels) - calibration.min_cllr(llr, labels) > 0.05


def test_bayes_error_rates_are_act_and_min_dcf_at_each_prior():
    llr, labels = calibrated_llrs(2000, 1.5)
    ps = [0.003, 0.01, 0.2, 0.5, 0.97]
    actual, minimum = calibration.bayes_error_rates(llr, labels, [math.log(p / (1 - p))
                                                                  for p in ps])
    for k, p in enumerate(ps):
        assert actual[k] == pytest.approx(calibration.act_dcf(llr, labels, p), rel=1e-9)
        assert minimum[k] == pytest.approx(metrics.min_dcf(llr, labels, p), rel=1e-9)


@pytest.mark.parametrize("p_target", [0.5, 0.01])
def test_fit_recovers_the_exact_llr_of_gaussian_scores(p_target):
    # equal variances: llr(s) = (m1 - m0) / sd^2 * s - (m1^2 - m0^2) / (2 sd^2), whatever
    # the prior the fit weights at
    m1, m0, sd = 0.6, 0.1, 0.15
    scores, labels = gaussian_trials(50_000, m1, m0, sd)
    fitted = calibration.fit(scores, labels, p_target=p_target)
    assert fitted.weights[0] == pytest.approx((m1 - m0) / sd**2, rel=0.03)
    assert fitted.offset == pytest.approx(-(m1**2 - m0**2) / (2 * sd**2), rel=0.03)


def test_fusion_weights_are_those_of_the_summed_llrs():
    # two independent systems with unit variance: the exact LLR is the sum of each one's
    a_scores, labels = gaussian_trials(50_000, 1.0, 0.0, 1.0, seed=1)  # llr = s - 0.5
    b_scores, _ = gaussian_trials(50_000, 2.0, 0.0, 1.0, seed=2)  # llr = 2 s - 2
    fitted = calibration.fit(np.c_[a_scores, b_scores], labels)
    assert fitted.weights == pytest.approx([1.0, 2.0], rel=0.05)
    assert fitted.offset == pytest.approx(-2.5, rel=0.05)
    assert fitted.apply(np.c_[a_scores, b_scores]).shape == (100_000,)


def test_fit_on_dev_brings_cllr_to_min_cllr_on_held_out_trials():
    dev, dev_labels = gaussian_trials(5000, 0.55, 0.05, 0.12, seed=3)  # cosine-like scores
    held, held_labels = gaussian_trials(5000, 0.55, 0.05, 0.12, seed=4)
    llr = calibration.fit(dev, dev_labels).apply(held)
    best = calibration.min_cllr(held, held_labels)
    assert calibration.cllr(llr, held_labels) - best < 0.01
    assert calibration.cllr(held, held_labels) - best > 0.3  # the raw scores are not LLRs


def test_separable_scores_give_finite_weights():
    fitted = calibration.fit([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert np.isfinite(fitted.weights).all() and fitted.weights[0] > 0
    assert calibration.cllr(fitted.apply([0.1, 0.2, 0.8, 0.9]), [0, 0, 1, 1]) < 0.01


def test_summaries():
    dev, dev_labels = gaussian_trials(2000, 0.5, 0.0, 0.2, seed=5)
    held, held_labels = gaussian_trials(2000, 0.5, 0.0, 0.2, seed=6)
    out = calibration.calibrated_summary(dev, dev_labels, held, held_labels, (0.01, 0.05))
    llr = calibration.fit(dev, dev_labels).apply(held)
    assert out["cllr"] == calibration.cllr(llr, held_labels)
    assert out["act_dcf"] == out["act_dcf_0.01"] == calibration.act_dcf(llr, held_labels, 0.01)
    assert out["act_dcf_0.05"] == calibration.act_dcf(llr, held_labels, 0.05)
    assert out["min_cllr"] == calibration.min_cllr(held, held_labels)
    assert len(out["weights"]) == 1


@pytest.mark.parametrize("call, message", [
    (lambda: calibration.fit([[1.0, 2.0], [1.0, 3.0]], [0, 1]), "column 0 is constant"),
    (lambda: calibration.fit([0.0, np.nan], [0, 1]), "finite; found nan at row 1"),
    (lambda: calibration.fit([0.0, 1.0], [0, 1], p_target=1.0), "p_target must lie in"),
    (lambda: calibration.fit([0.0, 1.0], [1, 1]), "both targets"),
    (lambda: calibration.fit([0.0, 1.0], [0, 1]).apply([[1.0, 2.0]]), "1 column"),
    (lambda: calibration.act_dcf([0.0, 1.0], [0, 1], p_target=0.0), "p_target must lie"),
    (lambda: calibration.act_dcf([0.0, 1.0], [0, 1], c_fa=-1.0), "c_fa must be a positive"),
    (lambda: calibration.cllr([0.0, np.inf], [0, 1]), "scores must be finite"),
    (lambda: calibration.bayes_error_rates([0.0, 1.0], [0, 1], [np.nan]), "prior_log_odds"),
])
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
