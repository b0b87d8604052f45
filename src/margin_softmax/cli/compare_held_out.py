"""What ``compare`` measures on the held-out identities besides EER, minDCF and TAR@FAR:
calibration, identification, and the bootstrap replicates behind the intervals.

- Calibration: the held-out identities are split at random into a development half
  (round(DEV_FRACTION * H) of the H identities) and an evaluation half. A linear calibration
  of the cosine scores (``calibration.fit`` at FIT_PRIOR = 0.5: least C_llr) is fitted on
  the trials whose two sides are both development identities, and judged on the trials whose
  two sides are both evaluation identities; trials across the halves are used for neither.
  Reported on the evaluation trials: C_llr, min C_llr, actDCF, and minDCF on those same
  trials, so actDCF - minDCF is what the calibration loses. None when a half lacks target
  or non-target trials (fewer than 4 held-out identities, as with --dataset digits).
- Identification: round(ENROLLED_FRACTION * H) of the held-out identities (at least 1, at
  most H - 1) are enrolled with half of each one's samples (rounded down, at least 1) as the
  gallery; their other samples are mated probes, every sample of the other identities a
  non-mated probe. rank-1 and TPIR at FPIR = 1 % (``metrics.identification``).
- Bootstrap: RESAMPLES (by default) replicates of EER and minDCF resampling identities, a
  trial's identity being its first side's; seeded with the compare seed, so every loss of a seed
  gets the same resamples (paired), and the seeds' resamples are independent.
"""

from __future__ import annotations

import numpy as np

from .. import bootstrap, metrics

DEV_FRACTION = 0.5  # of the held-out identities, to fit the calibration
FIT_PRIOR = 0.5  # the calibration's effective prior: 0.5 minimises C_llr itself
ENROLLED_FRACTION = 0.5  # of the held-out identities, in the gallery
P_TARGETS = (0.01, 0.05)
FPIR = 0.01
RESAMPLES = 1000
CALIBRATION_KEYS = ("cllr", "min_cllr", *(f"act_dcf_{p:g}" for p in P_TARGETS),
                    *(f"eval_min_dcf_{p:g}" for p in P_TARGETS))


def _some(identities: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """round(fraction * H) of the H identities (at least 1, at most H - 1), at random."""
    count = min(max(round(fraction * identities.size), 1), identities.size - 1)
    return rng.permutation(identities)[:count]


def calibration_trials(
    labels: np.ndarray, i: np.ndarray, j: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(dev (T,), evaluation (T,)) bool masks of the trials (i, j) (T,) into labels (N,):
    both sides among the development identities, both among the others."""
    dev_ids = _some(np.unique(labels), DEV_FRACTION, np.random.default_rng([seed, 4]))
    first, second = np.isin(labels[i], dev_ids), np.isin(labels[j], dev_ids)
    return first & second, ~first & ~second


def gallery_rows(labels: np.ndarray, seed: int) -> np.ndarray:
    """(N,) bool: the gallery rows, half (rounded down, at least 1) of the samples of each
    enrolled identity, chosen at random."""
    rng = np.random.default_rng([seed, 5])
    gallery = np.zeros(labels.size, dtype=bool)
    for k in _some(np.unique(labels), ENROLLED_FRACTION, rng):
        rows = np.flatnonzero(labels == k)
        gallery[rng.choice(rows, max(1, rows.size // 2), replace=False)] = True
    return gallery


def _both_classes(target: np.ndarray) -> bool:
    return 0 < int(target.sum()) < target.size


def calibrate(
    scores: np.ndarray, target: np.ndarray, dev: np.ndarray, evaluation: np.ndarray
) -> tuple[dict, np.ndarray | None]:
    """The calibration metrics (CALIBRATION_KEYS) of scores (T,) with labels target (T,),
    fitted on the ``dev`` trials and judged on the ``evaluation`` ones, and the evaluation
    trials' LLRs; every value None (and no LLRs) when a half lacks a class."""
    from .. import calibration  # scikit-learn (the cli extra): not at parser time

    if not (_both_classes(target[dev]) and _both_classes(target[evaluation])):
        return dict.fromkeys(CALIBRATION_KEYS), None
    fitted = calibration.fit(scores[dev], target[dev], p_target=FIT_PRIOR)
    llr = fitted.apply(scores[evaluation])  # (T_eval,)
    out = calibration.llr_summary(llr, target[evaluation], P_TARGETS)
    del out["act_dcf"]  # the act_dcf_<p> keys say which prior
    for p in P_TARGETS:
        out[f"eval_min_dcf_{p:g}"] = metrics.min_dcf(scores[evaluation], target[evaluation], p)
    return out, llr


def identify(embeddings: np.ndarray, labels: np.ndarray, gallery: np.ndarray) -> dict:
    """{"rank1", "tpir@0.01"} of the held-out embeddings (N, D), labels (N,): the gallery
    rows (N,) bool against every other row as a probe."""
    found = metrics.identification(embeddings[gallery], labels[gallery], embeddings[~gallery],
                                   labels[~gallery], ranks=(1,), fpirs=(FPIR,))
    return {"rank1": found["rank1"], f"tpir@{FPIR:g}": found[f"tpir@{FPIR:g}"]}


def replicates(
    scores: np.ndarray, target: np.ndarray, groups: np.ndarray, seed: int, resamples: int,
    workers: int,
) -> dict[str, np.ndarray]:
    """"eer" and "min_dcf_<p>" for each of P_TARGETS -> (resamples,) replicates, resampling
    ``groups`` (T,)."""
    return bootstrap.replicates(scores, target, groups=groups, p_targets=P_TARGETS, fars=(),
                                resamples=resamples, seed=seed, workers=workers)
