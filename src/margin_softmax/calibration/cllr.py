"""The log-likelihood-ratio cost C_llr (bits) and its minimum over monotone maps of the scores.

    C_llr = 1/2 [ mean over targets of log2(1 + e^-llr) + mean over non-targets of log2(1 + e^llr) ]

LLRs in nats (natural log). All-zero LLRs (a system that says nothing) cost exactly 1 bit; a
perfect system costs 0. min C_llr is C_llr of ``pav_llr``: the non-decreasing map of the
scores to LLRs that minimises C_llr (Brümmer and du Preez, 2006). It measures what the scores
could give, C_llr - min C_llr what their calibration loses.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression

from ..metrics import _check_trials

LOG2_E = 1.0 / math.log(2.0)


def _cllr(llr: np.ndarray, targets: np.ndarray) -> float:
    """C_llr of checked LLRs (n,) (±inf allowed) and targets (n,) bool.
    log2(1 + e^x) = log2(2^0 + 2^(x log2 e)), so LLRs of 0 cost exactly 1 bit."""
    tar = np.logaddexp2(0.0, -llr[targets] * LOG2_E).mean()
    non = np.logaddexp2(0.0, llr[~targets] * LOG2_E).mean()
    return float((tar + non) / 2)


def cllr(llr: Any, labels: Any) -> float:
    """C_llr in bits of LLRs (n,) (nats) for labels (n,) 1 target / 0 non-target."""
    s, y = _check_trials(llr, labels)
    return _cllr(s.astype(np.float64), y)


def pav_llr(scores: Any, labels: Any) -> np.ndarray:
    """The LLRs (n,) of the non-decreasing map of the scores with the least C_llr.

    Isotonic regression of the labels on the scores (equal scores pooled) gives each trial a
    posterior P(target | score) at the data's own prior N_tar / N; the LLR is its log-odds
    minus the prior's, log(P / (1 - P)) - log(N_tar / N_non). Pools of only targets get +inf,
    of only non-targets -inf.
    """
    return _pav_llr(*_check_trials(scores, labels))


def _pav_llr(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    posterior = IsotonicRegression(increasing=True).fit_transform(s.astype(np.float64), y)
    n_tar = int(np.count_nonzero(y))
    with np.errstate(divide="ignore"):
        return np.log(posterior) - np.log1p(-posterior) - math.log(n_tar / (y.size - n_tar))


def min_cllr(scores: Any, labels: Any) -> float:
    """min C_llr in bits: C_llr of ``pav_llr(scores, labels)``; scores (n,) need not be LLRs.
    Never above ``cllr`` of the same values (up to rounding)."""
    s, y = _check_trials(scores, labels)
    return _cllr(_pav_llr(s, y), y)
