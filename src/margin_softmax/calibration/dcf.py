"""Actual detection cost: the cost of deciding at the Bayes threshold, as LLRs allow.

With target prior p and costs c_miss, c_fa, the effective prior is
p' = c_miss p / (c_miss p + c_fa (1 - p)), the Bayes threshold theta = -log(p' / (1 - p')),
and a trial is accepted when llr >= theta (the ``metrics`` convention: score >= threshold):

    actDCF = (c_miss p P_miss(theta) + c_fa (1 - p) P_fa(theta)) / min(c_miss p, c_fa (1 - p))
           = (p' P_miss(theta) + (1 - p') P_fa(theta)) / min(p', 1 - p')

normalised as ``metrics.min_dcf`` is (1 is the cost of the best decision without the trial),
so actDCF >= minDCF, and actDCF - minDCF is what the calibration loses at that prior.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..metrics import _check_trials, _costs, _prior, _real_array, roc_points


def _effective_log_odds(p_target: Any, c_miss: Any, c_fa: Any) -> float:
    """log(p' / (1 - p')) = log(c_miss p / (c_fa (1 - p))), the parameters checked."""
    p, (miss, fa) = _prior(p_target), _costs(c_miss, c_fa)
    return math.log(miss * p) - math.log(fa * (1.0 - p))


def _actual(s: np.ndarray, y: np.ndarray, log_odds: np.ndarray) -> np.ndarray:
    """Normalised DCF (m,) at effective priors sigmoid(log_odds) (m,), deciding llr >= -log_odds."""
    tar, non = np.sort(s[y]), np.sort(s[~y])
    theta = -log_odds
    p_miss = np.searchsorted(tar, theta, side="left") / tar.size  # targets below theta
    p_fa = 1.0 - np.searchsorted(non, theta, side="left") / non.size  # non-targets >= theta
    p, q = _priors(log_odds)
    return (p * p_miss + q * p_fa) / np.minimum(p, q)


def _priors(log_odds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p = sigmoid(log_odds) and 1 - p, each computed directly (no cancellation near 1)."""
    return 1.0 / (1.0 + np.exp(-log_odds)), 1.0 / (1.0 + np.exp(log_odds))


def act_dcf(
    llr: Any, labels: Any, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0
) -> float:
    """Normalised actual DCF of LLRs (n,) (nats) at the Bayes threshold; labels (n,)."""
    eta = _effective_log_odds(p_target, c_miss, c_fa)
    s, y = _check_trials(llr, labels)
    return float(_actual(s, y, np.array([eta]))[0])


def bayes_error_rates(
    llr: Any, labels: Any, prior_log_odds: Any
) -> tuple[np.ndarray, np.ndarray]:
    """The normalised Bayes error-rate curves (BOSARIS): at each prior log-odds
    eta = log(p / (1 - p)) (m,), with c_miss = c_fa = 1, the actual DCF of the LLRs (n,)
    (deciding at -eta) and the minimum DCF over all thresholds. Returns (actual, minimum),
    each (m,)."""
    s, y = _check_trials(llr, labels)
    eta = _real_array("prior_log_odds", prior_log_odds).astype(np.float64).reshape(-1)
    if eta.size == 0 or not np.isfinite(eta).all():
        raise ValueError(f"prior_log_odds must be finite numbers, at least one; got {eta}")
    far, frr, _ = roc_points(s, y)
    p, q = _priors(eta)
    cost = np.array([np.min(a * frr + b * far) for a, b in zip(p, q, strict=True)])  # (m,)
    return _actual(s, y, eta), cost / np.minimum(p, q)
