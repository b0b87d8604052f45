"""compare's results over several seeds: each metric's mean and sample standard deviation,
and which differences between two losses are larger than the seed-to-seed spread.

A seed fixes the data (identities, split, trials) and the initial weights, and every loss run
under one seed gets the same ones, so two losses' results pair up by seed. The differences
d_k = a_k - b_k of the n seeds cancel what a seed does to every loss alike (an easy or a hard
draw of identities and trials). A difference is marked when a two-sided paired t-test at 5 %
rejects mean(d) = 0:

    |mean(d)| > t(0.975, n - 1) * sd(d) / sqrt(n),    sd: the sample std (ddof = 1).

With 3 seeds that is |mean(d)| > 4.303 * sd(d) / sqrt(3) = 2.48 * sd(d). The same n differences,
all non-zero (sd = 0), are marked; one seed has no spread and marks nothing. A metric that a
seed could not measure (None, e.g. a calibration without enough identities) has no mean.

Bootstrap intervals pooled over the seeds: each seed gives R bootstrap replicates of a metric
(``bootstrap.replicates``, resampling that seed's held-out identities, drawn independently of
the other seeds'). Replicate r of the mean over the seeds is the mean of the seeds' replicates
r, and its CI_LEVEL percentile interval is the interval of the mean the table shows. For a
difference a - b, a and b are resampled alike within a seed (the same bootstrap seed on the
same trials: a paired bootstrap), and the difference is marked when its interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import t as student_t

from .bootstrap import percentile_interval

LEVEL = 0.05  # two-sided
RULE = "two-sided paired t-test over the seeds at 5%"  # as results.json and the report say
CI_LEVEL = 0.95
CI_RULE = ("the 95% bootstrap interval of the difference, resampling the held-out "
           "identities and pooled over the seeds, excludes 0")

Replicates = dict[str, list[dict[str, np.ndarray]]]  # loss -> per seed: metric -> (R,)


def mean_and_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """The mean and the sample standard deviation (ddof=1) of ``values``; std None for one
    value, both None when some value is None (a seed that could not measure it)."""
    if any(v is None for v in values):
        return None, None
    x = np.asarray(values, dtype=np.float64)  # (n,)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence; got shape {x.shape}")
    return float(x.mean()), (float(x.std(ddof=1)) if x.size > 1 else None)


def pooled_interval(replicates: Sequence[np.ndarray]) -> list[float]:
    """[low, high]: the CI_LEVEL percentile interval of the mean over the seeds, from one
    (R,) array of bootstrap replicates per seed (replicate r of the mean: the mean of the
    seeds' replicates r)."""
    return list(percentile_interval(np.mean(replicates, axis=0), CI_LEVEL))


def summarise(
    per_seed: list[dict[str, float]], replicates: list[dict[str, np.ndarray]] | None = None
) -> dict:
    """One loss over the seeds. per_seed: one dict per seed, {"seed": s, metric: value, ...},
    the same metrics in each. Returns {metric: mean, ..., "std": {metric: sample std or None},
    "per_seed": per_seed}, and with ``replicates`` (per seed, metric -> (R,) bootstrap
    replicates) "ci": {metric: [low, high]} (``pooled_interval``)."""
    keys = [key for key in per_seed[0] if key != "seed"]
    spread = {key: mean_and_std([run[key] for run in per_seed]) for key in keys}
    out = {**{key: m for key, (m, _) in spread.items()},
           "std": {key: s for key, (_, s) in spread.items()}, "per_seed": per_seed}
    if replicates is not None:
        out["ci"] = {key: pooled_interval([r[key] for r in replicates]) for key in replicates[0]}
    return out


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> dict:
    """a - b over the seeds, a (n,) and b (n,) paired by seed: {"mean": mean(d), "std": sd(d)
    (None for n = 1), "marked": whether a two-sided paired t-test at ``level`` rejects
    mean(d) = 0}; mean and std None where a seed has None."""
    if any(v is None for v in (*a, *b)):
        return {"mean": None, "std": None, "marked": False}
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)  # (n,)
    mean, sd = mean_and_std(d)
    if sd is None:
        return {"mean": mean, "std": None, "marked": False}
    critical = float(student_t.ppf(1 - level / 2, d.size - 1))
    return {"mean": mean, "std": sd, "marked": abs(mean) * math.sqrt(d.size) > critical * sd}


def differences(
    per_seed: dict[str, list[dict[str, float]]], baseline: str, keys: Sequence[str],
    replicates: Replicates | None = None,
) -> dict[str, dict[str, dict]]:
    """Every loss but ``baseline`` against it: {loss: {metric: paired_difference}} for each
    metric in ``keys``. per_seed: loss -> one dict per seed, in the same seed order. With
    ``replicates`` (loss -> per seed, metric -> (R,), the same resamples for every loss of a
    seed), each metric of ``keys`` that has replicates also gets "ci": the pooled interval of
    loss - baseline, and "ci_marked": whether it excludes 0."""
    base = per_seed[baseline]
    seeds = [r["seed"] for r in base]
    for name, runs in per_seed.items():
        if [r["seed"] for r in runs] != seeds:
            raise ValueError(f"{name}'s seeds {[r['seed'] for r in runs]} are not {baseline}'s "
                             f"{seeds}: the runs must pair up by seed")
    out = {
        name: {key: paired_difference([r[key] for r in runs], [r[key] for r in base])
               for key in keys}
        for name, runs in per_seed.items() if name != baseline
    }
    for name, by_key in out.items():
        for key in [k for k in keys if replicates and k in replicates[name][0]]:
            low, high = pooled_interval([a[key] - b[key] for a, b in
                                         zip(replicates[name], replicates[baseline],
                                             strict=True)])
            by_key[key].update(ci=[low, high], ci_marked=bool(low > 0 or high < 0))
    return out
