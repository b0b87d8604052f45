"""Evaluation metrics: closed-set top-k accuracy and open-set verification metrics.

Verification convention: a trial is accepted when ``score >= threshold``; label 1 (or True) is
a target trial (same identity), label 0 a non-target trial.

    FAR(t) = #{non-targets with score >= t} / #non-targets   (false-accept rate, P_fa)
    FRR(t) = #{targets with score < t} / #targets            (false-reject rate, P_miss)

All verification metrics sort the scores once (O(n log n) time, O(n) memory), so 10 million
trials are fine. Trials with equal scores always move together across a threshold.

DET curves: ``roc_points`` returns (FAR, FRR), which is exactly what a DET plot shows; mapping
the axes through the probit (``scipy.stats.norm.ppf``) is the caller's job, so there is no
separate ``det_points``.

Inputs may be NumPy arrays, lists or torch tensors (converted with ``.detach().cpu()``); torch
is never imported here. Scores are ints or floats (bool, complex or strings: TypeError). A
parameter of the wrong type is a TypeError, one out of its range a ValueError, each naming
the parameter and the value.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def _to_numpy(x: Any) -> np.ndarray:
    """Convert an array-like or a torch tensor (any device, any grad state) to a NumPy array."""
    if hasattr(x, "detach"):
        x = x.detach()
    if hasattr(x, "cpu"):
        x = x.cpu()
    if str(getattr(x, "dtype", "")) == "torch.bfloat16":  # NumPy has no bfloat16
        x = x.float()
    return np.asarray(x)


def _real_array(name: str, x: Any) -> np.ndarray:
    """x as a NumPy array of ints or floats; TypeError for bool, complex, strings, objects."""
    a = _to_numpy(x)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must be real numbers (int or float); got dtype {a.dtype}")
    return a


def _real_param(name: str, value: Any) -> float:
    """A parameter as a float: any real number (NumPy's too), not a bool, a string or None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    return float(value)


def _prior(p_target: Any) -> float:
    """p_target as a float in (0, 1); TypeError or ValueError naming it."""
    p = _real_param("p_target", p_target)
    if not 0.0 < p < 1.0:
        raise ValueError(f"p_target must lie in (0, 1); got {p!r}")
    return p


def _costs(c_miss: Any, c_fa: Any) -> tuple[float, float]:
    """c_miss, c_fa as positive finite floats; TypeError or ValueError naming the bad one."""
    costs = _real_param("c_miss", c_miss), _real_param("c_fa", c_fa)
    for name, cost in zip(("c_miss", "c_fa"), costs, strict=True):
        if not (math.isfinite(cost) and cost > 0):
            raise ValueError(f"{name} must be a positive finite number; got {cost!r}")
    return costs


def _far(far: Any) -> float:
    """far as a float in [0, 1]; TypeError or ValueError naming it."""
    f = _real_param("far", far)
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"far must lie in [0, 1]; got {f!r}")
    return f


def _check_finite(name: str, x: np.ndarray) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        i = int(np.flatnonzero(bad.ravel())[0])
        raise ValueError(f"{name} must be finite; found {x.ravel()[i]} at index {i}")


def _check_trials(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate verification trials; return scores (n,) float and labels (n,) bool."""
    s = _real_array("scores", scores)
    y = _to_numpy(labels)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D; got shape {s.shape}")
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D; got shape {y.shape}")
    if s.size == 0:
        raise ValueError("scores is empty; need at least one target and one non-target trial")
    if s.shape != y.shape:
        raise ValueError(
            f"scores and labels must have the same length; got len(scores)={s.size}, "
            f"len(labels)={y.size}"
        )
    if s.dtype not in (np.float32, np.float64):
        s = s.astype(np.float64)
    _check_finite("scores", s)
    if y.dtype != np.bool_:
        if not (np.issubdtype(y.dtype, np.number)):
            raise ValueError(f"labels must be 0/1 or bool; got dtype {y.dtype}")
        ok = (y == 0) | (y == 1)
        if not ok.all():
            bad = y[~ok][0]
            raise ValueError(f"labels must contain only 0 and 1 (or bool); found {bad}")
        y = y == 1
    n_tar = int(np.count_nonzero(y))
    if n_tar == 0 or n_tar == y.size:
        raise ValueError(
            "labels must contain both targets (1) and non-targets (0); got "
            f"{n_tar} targets and {y.size - n_tar} non-targets"
        )
    return s, y


def accuracy(scores: Any, labels: Any, topk: Sequence[int] = (1,)) -> list[float]:
    """Closed-set top-k accuracy for each k in ``topk``.

    scores (N, C) class scores (logits, cosines, ...), labels (N,) ints in [0, C).
    A sample counts as correct for k when rank < k, where rank = #{c != y : s_c >= s_y}.
    Ties therefore count against the true class: constant scores give accuracy 0 for k < C.
    """
    s = _real_array("scores", scores)
    y = _to_numpy(labels)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (N, C); got shape {s.shape}")
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,); got shape {y.shape}")
    n, c = s.shape
    if n == 0:
        raise ValueError("scores is empty; need at least one sample")
    if y.size != n:
        raise ValueError(
            f"scores and labels must have the same length; got len(scores)={n}, "
            f"len(labels)={y.size}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers; got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= c:
        bad = y[(y < 0) | (y >= c)][0]
        raise ValueError(f"labels must lie in [0, {c}); found {bad}")
    _check_finite("scores", s)
    if isinstance(topk, str) or not isinstance(topk, Iterable):
        raise TypeError(f"topk must be a sequence of ints; got {topk!r}")
    ks = list(topk)
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= c:
            raise ValueError(f"topk entries must be integers in [1, {c}]; got {k!r}")
    true_score = s[np.arange(n), y][:, None]  # (N, 1)
    rank = (s >= true_score).sum(axis=1) - 1  # (N,) classes other than y scoring >= s_y
    return [float(np.mean(rank < k)) for k in ks]


def roc_points(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FAR and FRR at every distinct threshold.

    scores (n,), labels (n,) 1 target / 0 non-target. Returns far, frr, thresholds, each (m + 1,)
    for m distinct scores: thresholds[0] = +inf (accept nothing: FAR 0, FRR 1), then the distinct
    scores in decreasing order (the last accepts everything: FAR 1, FRR 0). FAR is
    non-decreasing and FRR non-increasing along the arrays. TPR = 1 - FRR.
    """
    s, y = _check_trials(scores, labels)
    order = np.argsort(s)[::-1]  # (n,) decreasing score
    s_sorted = s[order]  # (n,)
    tp = np.cumsum(y[order], dtype=np.int64)  # (n,) targets accepted at each position
    del order
    ends = np.flatnonzero(s_sorted[1:] != s_sorted[:-1])  # last index of each run of ties
    ends = np.append(ends, s.size - 1)  # (m,)
    tp = tp[ends]  # (m,)
    fp = ends + 1 - tp  # (m,)
    n_tar = tp[-1]
    n_non = fp[-1]
    far = np.concatenate(([0.0], fp / n_non))  # (m + 1,)
    frr = np.concatenate(([1.0], (n_tar - tp) / n_tar))  # (m + 1,)
    thresholds = np.concatenate(([np.inf], s_sorted[ends].astype(np.float64)))  # (m + 1,)
    return far, frr, thresholds


def eer(scores: Any, labels: Any) -> float:
    """Equal error rate as a fraction (0.031 means 3.1 %).

    Walks the ROC points of ``roc_points`` (including the accept-nothing point (0, 1)) to the
    first point i with FAR_i >= FRR_i and intersects the straight segment from point i-1 to
    point i in the (FAR, FRR) plane with the line FAR = FRR:
    t = d_{i-1} / (d_{i-1} - d_i), d = FAR - FRR, EER = FAR_{i-1} + t (FAR_i - FAR_{i-1}).
    Perfect separation gives 0, perfectly inverted scores give 1.
    """
    far, frr, _ = roc_points(scores, labels)
    d = far - frr  # (m + 1,) non-decreasing from -1 (accept nothing) to +1
    i = int(np.argmax(d >= 0))
    d0, d1 = d[i - 1], d[i]
    t = d0 / (d0 - d1)
    return float(far[i - 1] + t * (far[i] - far[i - 1]))


def min_dcf(
    scores: Any,
    labels: Any,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> float:
    """Normalised minimum detection cost (NIST SRE / VoxCeleb convention).

    min over thresholds t of  c_miss p_target P_miss(t) + c_fa (1 - p_target) P_fa(t),
    divided by  min(c_miss p_target, c_fa (1 - p_target))  (the cost of the best trivial system).
    The minimum includes accepting nothing and accepting everything. scores (n,), labels (n,).
    """
    p_target, (c_miss, c_fa) = _prior(p_target), _costs(c_miss, c_fa)
    far, frr, _ = roc_points(scores, labels)
    cost = c_miss * p_target * frr + c_fa * (1.0 - p_target) * far  # (m + 1,)
    return float(cost.min() / min(c_miss * p_target, c_fa * (1.0 - p_target)))


def tar_at_far(scores: Any, labels: Any, far: float = 1e-3) -> float:
    """Largest true-accept rate TAR = 1 - FRR over thresholds with FAR <= ``far``.

    scores (n,), labels (n,). Accepting nothing (TAR 0) always qualifies, so the result is in
    [0, 1]. With few non-targets FAR moves in steps of 1 / #non-targets.
    """
    far = _far(far)
    far_pts, frr, _ = roc_points(scores, labels)
    i = int(np.searchsorted(far_pts, far, side="right")) - 1  # last point with FAR <= far
    return float(1.0 - frr[i])


def kfold_accuracy(scores: Any, labels: Any, folds: int = 10) -> tuple[float, float]:
    """Verification accuracy by k-fold cross-validation, the LFW protocol: the trials, in the
    given order, are cut into ``folds`` consecutive folds (sizes differing by at most one);
    each fold is scored at a threshold that maximises accuracy, (TP + TN) / n, on the other
    folds: halfway between the lowest score it accepts there and the highest it rejects (the
    highest such gap where several tie), not at the edge of the accepted scores. Returns the
    mean and the (population) standard deviation of the fold accuracies. scores (n,),
    labels (n,).
    """
    s, y = _check_trials(scores, labels)
    if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or folds < 2:
        raise ValueError(f"folds must be an int >= 2; got {folds!r}")
    if folds > s.size:
        raise ValueError(f"folds = {folds} exceeds the {s.size} trials")
    accuracy = []
    for k, held_out in enumerate(np.array_split(np.arange(s.size), folds)):
        rest = np.ones(s.size, dtype=bool)
        rest[held_out] = False
        n_tar = int(y[rest].sum())
        if n_tar in (0, int(rest.sum())):
            raise ValueError(f"fold {k + 1} of {folds}: the other folds hold only "
                             f"{'non-' if n_tar == 0 else ''}targets; shuffle the trials")
        far, frr, points = roc_points(s[rest], y[rest])
        correct = n_tar * (1 - frr) + (rest.sum() - n_tar) * (1 - far)  # (m + 1,)
        i = int(np.argmax(correct))  # the first maximum: accept scores >= points[i]
        below = points[i + 1] if i + 1 < points.size else -np.inf  # highest rejected
        t = (points[i] + below) / 2  # +inf for accept-nothing, -inf for accept-all
        accuracy.append(np.mean((s[held_out] >= t) == y[held_out]))
    return float(np.mean(accuracy)), float(np.std(accuracy))


def __getattr__(name: str) -> Any:
    """metrics.identification is identification.identification (that module imports this one,
    so it is looked up on first use rather than imported here)."""
    if name == "identification":
        from .identification import identification

        return identification
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
