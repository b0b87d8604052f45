"""Linear calibration and fusion by prior-weighted logistic regression (as BOSARIS and the NIST
evaluations do it).

    llr = scores @ weights + offset      scores (N,) or (N, K): K systems or quality measures

``fit`` minimises the prior-weighted cross-entropy at an effective target prior p:

    p / N_tar * sum over targets of log(1 + e^-(llr + logit p))
      + (1 - p) / N_non * sum over non-targets of log(1 + e^(llr + logit p))

which at p = 0.5 is C_llr times ln 2. The weighted logistic regression's log-odds are
posterior log-odds at prior p; the LLR is them minus logit(p). scikit-learn's
LogisticRegression solves it, with sample weights p / N_tar and (1 - p) / N_non.

Regularisation: a ridge penalty REGULARISATION / 2 * |w|^2 on the weights w of the columns
standardised to mean 0 and standard deviation 1 (not on the offset). It keeps the weights
finite when the development scores separate the classes, and it costs little: the fitted
objective exceeds the unregularised minimum by at most REGULARISATION / 2 * |w*|^2 nats,
under 5e-5 nats for standardised weights |w*| <= 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from ..metrics import _check_trials, _prior, _real_array

REGULARISATION = 1e-6  # ridge strength on the standardised weights (sklearn's C = 1 / this)


@dataclass(frozen=True)
class LinearCalibration:
    """llr = scores @ weights + offset; weights (K,) for K score columns, fitted at
    ``p_target``."""

    weights: np.ndarray
    offset: float
    p_target: float

    def apply(self, scores: Any) -> np.ndarray:
        """LLRs (N,) of scores (N,) (one system) or (N, K)."""
        x = _columns(scores, len(self.weights))
        return x @ self.weights + self.offset


def _columns(scores: Any, width: int | None = None) -> np.ndarray:
    """scores (N,) or (N, K) as a finite float64 (N, K) array."""
    x = _real_array("scores", scores).astype(np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"scores must be (N,) or (N, K) with N >= 1; got shape {x.shape}")
    if width is not None and x.shape[1] != width:
        raise ValueError(f"scores must have {width} column(s), one per weight; got shape "
                         f"{x.shape}")
    bad = ~np.isfinite(x)
    if bad.any():
        n, k = np.argwhere(bad)[0]
        raise ValueError(f"scores must be finite; found {x[n, k]} at row {n}, column {k}")
    return x


def fit(scores: Any, labels: Any, p_target: float = 0.5) -> LinearCalibration:
    """The linear calibration (one column) or fusion (K columns) of scores (N,) or (N, K)
    that minimises the cross-entropy weighted at the effective target prior ``p_target``
    (0.5: C_llr itself); labels (N,) 1 target / 0 non-target."""
    p = _prior(p_target)
    x = _columns(scores)
    _, y = _check_trials(x[:, 0], labels)
    mean, std = x.mean(axis=0), x.std(axis=0)  # (K,)
    if not (std > 0).all():
        k = int(np.flatnonzero(~(std > 0))[0])
        raise ValueError(f"scores column {k} is constant ({x[0, k]}); it cannot calibrate")
    n_tar = int(y.sum())
    weight = np.where(y, p / n_tar, (1.0 - p) / (y.size - n_tar))  # (N,), sums to 1
    model = LogisticRegression(C=1.0 / REGULARISATION, tol=1e-10, max_iter=1000)
    model.fit((x - mean) / std, y, sample_weight=weight)
    w = model.coef_[0] / std  # (K,) on the original scale
    offset = float(model.intercept_[0] - w @ mean - math.log(p / (1.0 - p)))
    return LinearCalibration(weights=w, offset=offset, p_target=p)
