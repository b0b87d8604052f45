"""Score normalisation against a cohort: S-norm and adaptive S-norm (AS-norm).

Each side of a trial (enroll e, test t, cosine score s) is scored against every cohort
embedding c_k; mu_e and sigma_e are the mean and (population) standard deviation of the
top_k highest cos(e, c_k), or of all of them for S-norm (top_k None), and likewise mu_t,
sigma_t:

    s' = ((s - mu_e) / sigma_e + (s - mu_t) / sigma_t) / 2

An embedding close to many others scores high against everybody, its non-targets too; its
own cohort statistics take that offset and spread out of its trials, so one threshold
serves every speaker better. Keeping only the closest top_k cohort members (Matejka et al.,
2017) makes the statistics those of the impostors that matter. Speaker-verification
recipes use top_k = 300 against the mean embeddings of the training speakers
(``class_means``).
"""

from __future__ import annotations

import numpy as np

BLOCK_BYTES = 64 << 20  # one (rows, M) float64 block of cohort scores at a time


def unit_rows(x: np.ndarray) -> np.ndarray:
    """x_i / |x_i| (N, D) in float64, the same at any scale: each row is first divided by
    2^e, 2^(e-1) <= max_j |x_ij| < 2^e (exact), so |x_i| neither underflows nor overflows
    (x 1e-14 and x 1e150 give the unscaled cosines). Zero rows stay zero (cosine 0)."""
    x = np.asarray(x, dtype=np.float64)
    _, exponent = np.frexp(np.abs(x).max(axis=1, initial=0.0, keepdims=True))  # (N, 1)
    x = np.ldexp(x, -exponent)  # (N, D), rows of largest |x_ij| in [0.5, 1)
    norm = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1) in [0.5, sqrt(D)], or 0
    return x / np.where(norm > 0, norm, 1.0)


def class_means(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The mean embedding of each label (S, D), labels (M,) of any type, in sorted label
    order: a cohort of speakers rather than of utterances."""
    embeddings, labels = np.asarray(embeddings, dtype=np.float64), np.asarray(labels)
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(f"labels must have shape ({embeddings.shape[0]},) like the "
                         f"embeddings' rows; got {labels.shape}")
    _, index = np.unique(labels, return_inverse=True)
    index = index.reshape(-1)  # (M,)
    sums = np.zeros((index.max(initial=-1) + 1, embeddings.shape[1]))
    np.add.at(sums, index, embeddings)
    return sums / np.bincount(index)[:, None]


def check_top_k(top_k: int | None, cohort_size: int) -> None:
    """top_k: None (all: S-norm) or an int in [2, cohort_size]."""
    if top_k is None:
        if cohort_size < 2:
            raise ValueError(f"the cohort needs at least 2 embeddings; got {cohort_size}")
        return
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 2:
        raise ValueError(f"top_k must be an int >= 2 (one score has no spread); got {top_k!r}")
    if top_k > cohort_size:
        raise ValueError(f"top_k = {top_k} exceeds the cohort's {cohort_size} embeddings "
                         f"(None, or 'all' on the command line, uses all of them: S-norm)")


def cohort_stats(
    embeddings: np.ndarray, cohort: np.ndarray, top_k: int | None = 300, rows=None
) -> tuple[np.ndarray, np.ndarray]:
    """(mu (U,), sigma (U,)): mean and standard deviation of each embedding's top_k highest
    cosines against the cohort (M, D), all M of them when top_k is None. rows (U,): the
    embeddings' row numbers that an error names (default 0..U-1)."""
    unit, members = unit_rows(embeddings), unit_rows(cohort)  # (U, D), (M, D)
    m = members.shape[0]
    check_top_k(top_k, m)
    k = m if top_k is None else int(top_k)
    mu, sigma = np.empty(unit.shape[0]), np.empty(unit.shape[0])
    flat = np.zeros(unit.shape[0], dtype=bool)
    step = max(1, BLOCK_BYTES // (8 * m))
    for a in range(0, unit.shape[0], step):
        scores = unit[a : a + step] @ members.T  # (rows, M)
        if k < m:
            scores = np.partition(scores, m - k, axis=1)[:, m - k :]  # (rows, k) the highest
        mu[a : a + step], sigma[a : a + step] = scores.mean(1), scores.std(1)
        # equal scores leave a rounding residue (~1e-16) in std, not 0: test them directly
        flat[a : a + step] = scores.max(1) == scores.min(1)
    flat = np.flatnonzero(flat)
    if flat.size:
        row = int(flat[0]) if rows is None else int(rows[flat[0]])
        raise ValueError(f"embedding row {row}: its top {k} cohort scores are all "
                         f"equal (standard deviation 0), so they cannot normalise its scores")
    return mu, sigma


def normalize_scores(
    scores: np.ndarray,
    enroll: np.ndarray,
    test: np.ndarray,
    embeddings: np.ndarray,
    cohort: np.ndarray,
    top_k: int | None = 300,
) -> np.ndarray:
    """s' (T,) from scores s (T,) of the trials whose sides are rows enroll (T,) and test (T,)
    of embeddings (U, D), against the cohort (M, D); top_k None is S-norm. Only the rows that
    some trial uses are scored against the cohort."""
    scores = np.asarray(scores, dtype=np.float64)
    enroll, test = np.asarray(enroll), np.asarray(test)
    if not scores.shape == enroll.shape == test.shape or scores.ndim != 1:
        raise ValueError(f"scores, enroll and test must be 1-D of one length; got shapes "
                         f"{scores.shape}, {enroll.shape}, {test.shape}")
    embeddings, cohort = np.asarray(embeddings), np.asarray(cohort)
    if cohort.ndim != 2 or embeddings.ndim != 2 or cohort.shape[1] != embeddings.shape[1]:
        raise ValueError(f"cohort {cohort.shape} and embeddings {embeddings.shape} must be 2-D "
                         f"with the same number of columns")
    used, index = np.unique(np.concatenate([enroll, test]), return_inverse=True)
    mu, sigma = cohort_stats(embeddings[used], cohort, top_k, rows=used)  # (V,) each
    e, t = index[: scores.size], index[scores.size :]  # (T,) rows of mu, sigma
    return 0.5 * ((scores - mu[e]) / sigma[e] + (scores - mu[t]) / sigma[t])
