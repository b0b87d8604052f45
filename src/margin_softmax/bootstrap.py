"""Bootstrap confidence intervals for EER, minDCF and TAR at FAR.

Two ways to resample, and why they differ: trials that share an identity (a speaker's many
trials, a face's) are correlated; a speaker who is hard to verify makes many of them hard at
once. Resampling trials treats them as independent, so its intervals are too narrow when a
few identities carry much of the error. Resampling identities (``groups``: the identity of
each trial, e.g. its enrollment speaker) draws G identities with replacement from the G and
takes every trial of each drawn identity, as often as it was drawn; the class counts then
vary with the draw. Without ``groups``, trials are resampled within each class (N_tar
targets from the targets, N_non non-targets from the non-targets).

Each resample is a vector of counts c (G,); a trial of group g carries weight c[g]. The
scores are sorted once; each replicate is then a weighted cumulative sum over the sorted
trials, O(n) time, with the same threshold convention and tie handling as ``metrics``
(``Resampler.metrics`` with all counts 1 equals ``metrics.eer``, ``min_dcf``,
``tar_at_far``). Replicate r draws from its own generator (``SeedSequence(seed).spawn``), so
two systems scored on the same trials with the same seed get the same resamples (a paired
bootstrap: ``difference_intervals``), whatever the number of threads.

The interval is the percentile interval: the (1 - level) / 2 and (1 + level) / 2 quantiles
of the replicates.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .metrics import _check_trials, _far, _prior, _real_param
from .scoring import far_key


def metric_names(p_targets: Sequence[float], fars: Sequence[float]) -> list[str]:
    """The keys, as ``scoring.summary`` names them: eer, min_dcf_<p>..., tar_at_far_<f>..."""
    return ["eer", *(f"min_dcf_{p:g}" for p in p_targets), *(far_key(f) for f in fars)]


class Resampler:
    """The trials sorted once; ``metrics(counts)`` for any counts, ``draw(rng)`` a resample.

    scores (n,), labels (n,), groups (n,) of any type or None (resample trials within each
    class). p_targets and fars as in ``metric_names``.

    The ROC points are those of ``metrics.roc_points``: point j = 0 accepts nothing, point
    j >= 1 accepts the trials down to the end of the j-th run of tied scores. A replicate
    computes the weighted cumulative sums of the targets and of the non-targets (O(n)), then
    finds the EER crossing and each TAR@FAR point by bisection over j (FAR and FRR are
    monotone in j), and the minDCF over the points whose FAR and FRR are small enough to
    beat the trivial cost min(p, 1 - p): for p = 0.01 the first few per cent of the points.
    Every value is computed with the same floating-point expressions as ``metrics``.
    """

    def __init__(self, scores: Any, labels: Any, groups: Any = None,
                 p_targets: Sequence[float] = (0.01,), fars: Sequence[float] = (1e-3,)):
        s, y = _check_trials(scores, labels)
        self.p_targets = [_prior(p) for p in p_targets]
        self.fars = [_far(f) for f in fars]
        if groups is None:
            # trial k of its class is group k (targets) or N_tar + k (non-targets)
            index = np.empty(s.size, dtype=np.int64)
            index[y] = np.arange(int(y.sum()))
            index[~y] = y.sum() + np.arange(int((~y).sum()))
            self.class_sizes: tuple[int, int] | None = (int(y.sum()), int((~y).sum()))
        else:
            g = np.asarray(groups)
            if g.shape != s.shape:
                raise ValueError(f"groups must have one entry per trial, shape {s.shape}; "
                                 f"got {g.shape}")
            _, index = np.unique(g, return_inverse=True)
            index = index.reshape(-1)
            self.class_sizes = None
        self.n_groups = int(index.max()) + 1
        order = np.argsort(-s.astype(np.float64), kind="stable")  # (n,) decreasing score
        s_sorted, tar_sorted, index = s[order], y[order], index[order]
        ends = np.append(np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s.size - 1)  # (m,)
        tar_before = np.cumsum(tar_sorted)[ends]  # (m,) targets up to each run's end
        self.tar_upto = np.concatenate(([0], tar_before))  # (m + 1,) per ROC point
        self.non_upto = np.concatenate(([0], ends + 1 - tar_before))  # (m + 1,)
        self.tar_group = index[tar_sorted]  # (N_tar,) group of each target, sorted order
        self.non_group = index[~tar_sorted]  # (N_non,)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """Counts (G,) of one resample: G groups drawn with replacement, or each class's
        trials drawn with replacement within the class."""
        if self.class_sizes is None:
            return np.bincount(rng.integers(0, self.n_groups, self.n_groups),
                               minlength=self.n_groups)
        n_tar, n_non = self.class_sizes
        return np.concatenate([np.bincount(rng.integers(0, n_tar, n_tar), minlength=n_tar),
                               np.bincount(rng.integers(0, n_non, n_non), minlength=n_non)])

    def metrics(self, counts: np.ndarray) -> np.ndarray:
        """EER, minDCF at each p_target, TAR at each FAR (``metric_names`` order) of the
        trials each repeated counts[group] times; counts (G,) non-negative ints."""
        c = np.asarray(counts, dtype=np.int64)
        tar_cum = _cumulative(c[self.tar_group])  # (N_tar + 1,) weighted targets
        non_cum = _cumulative(c[self.non_group])  # (N_non + 1,)
        n_tar, n_non = int(tar_cum[-1]), int(non_cum[-1])
        if n_tar == 0 or n_non == 0:
            raise ValueError(f"a resample holds {n_tar} targets and {n_non} non-targets: too "
                             "few identities (groups) hold both kinds of trial to resample "
                             "them; resample trials instead (groups=None)")

        def far(j):  # FAR and FRR at ROC point j (int or array), as metrics.roc_points
            return non_cum[self.non_upto[j]] / n_non

        def frr(j):
            return (n_tar - tar_cum[self.tar_upto[j]]) / n_tar

        last = self.tar_upto.size - 1
        i = _first(lambda j: far(j) - frr(j) >= 0, last)  # EER crossing, as metrics.eer
        d0, d1 = far(i - 1) - frr(i - 1), far(i) - frr(i)
        out = [far(i - 1) + d0 / (d0 - d1) * (far(i) - far(i - 1))]
        for p in self.p_targets:
            bar = min(p, 1.0 - p) * (1 + 1e-9)  # points costing more are never the min
            lo = _first(lambda j, p=p, bar=bar: p * frr(j) <= bar, last)
            hi = _first(lambda j, p=p, bar=bar: (1.0 - p) * far(j) > bar, last + 1)
            j = np.arange(lo, hi)
            out.append(np.min(p * frr(j) + (1.0 - p) * far(j)) / min(p, 1.0 - p))
        for f in self.fars:
            j = _first(lambda j, f=f: far(j) > f, last + 1) - 1  # last point with FAR <= f
            out.append(1.0 - frr(j))
        return np.array(out, dtype=np.float64)


def _cumulative(weights: np.ndarray) -> np.ndarray:
    """[0, w0, w0 + w1, ...] (n + 1,)."""
    out = np.zeros(weights.size + 1, dtype=np.int64)
    np.cumsum(weights, out=out[1:])
    return out


def _first(condition, end: int) -> int:
    """The first j in [0, end] where ``condition(j)`` holds, for a condition false and then
    true along j (bisection); ``end`` when it holds nowhere before."""
    lo, hi = 0, end
    while lo < hi:
        mid = (lo + hi) // 2
        if condition(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def replicates(
    scores: Any,
    labels: Any,
    groups: Any = None,
    p_targets: Sequence[float] = (0.01,),
    fars: Sequence[float] = (1e-3,),
    resamples: int = 1000,
    seed: int = 0,
    workers: int | None = None,
) -> dict[str, np.ndarray]:
    """Each metric (``metric_names``) on ``resamples`` bootstrap resamples: name -> (R,).
    ``workers`` threads (default: the CPUs this process may use, at most 4) share the
    replicates; the result does not depend on it."""
    if isinstance(resamples, bool) or not isinstance(resamples, int | np.integer) \
            or resamples < 1:
        raise ValueError(f"resamples must be a positive int; got {resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an int >= 0; got {seed!r}")
    resampler = Resampler(scores, labels, groups, p_targets, fars)
    seeds = np.random.SeedSequence(int(seed)).spawn(int(resamples))

    def one(child: np.random.SeedSequence) -> np.ndarray:
        return resampler.metrics(resampler.draw(np.random.default_rng(child)))

    if workers is None:
        workers = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1)
    if workers <= 1:
        values = np.array([one(child) for child in seeds])  # (R, metrics)
    else:
        with ThreadPoolExecutor(max_workers=int(workers)) as pool:
            values = np.array(list(pool.map(one, seeds)))
    names = metric_names(resampler.p_targets, resampler.fars)
    return {name: values[:, k] for k, name in enumerate(names)}


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The (1 - level) / 2 and (1 + level) / 2 quantiles of replicates (R,)."""
    level = _real_param("level", level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level!r}")
    low, high = np.quantile(values, [(1.0 - level) / 2, (1.0 + level) / 2])
    return float(low), float(high)


def intervals(
    scores: Any,
    labels: Any,
    groups: Any = None,
    p_targets: Sequence[float] = (0.01,),
    fars: Sequence[float] = (1e-3,),
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """The ``level`` percentile interval of each metric: name -> (low, high); fractions, keys
    as ``scoring.summary``'s (eer, min_dcf_0.01, tar_at_far_1e-3, ...)."""
    values = replicates(scores, labels, groups, p_targets, fars, resamples, seed)
    return {name: percentile_interval(v, level) for name, v in values.items()}


def difference_intervals(
    scores_a: Any,
    scores_b: Any,
    labels: Any,
    groups: Any = None,
    p_targets: Sequence[float] = (0.01,),
    fars: Sequence[float] = (1e-3,),
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Paired bootstrap of metric(a) - metric(b) for two systems' scores (n,) on the same
    trials: both are resampled with the same draws. An interval that excludes 0 says the two
    differ beyond the resampling noise of these identities."""
    a = replicates(scores_a, labels, groups, p_targets, fars, resamples, seed)
    b = replicates(scores_b, labels, groups, p_targets, fars, resamples, seed)
    return {name: percentile_interval(a[name] - b[name], level) for name in a}
