"""1:N identification: a gallery of enrolled identities searched by probes (cosine scores).

Templates: each gallery identity is the mean of its embeddings after each is scaled to unit
length (a gallery of one row per identity is used as it is); a template's score against a
probe is the cosine. Probes whose identity has a template are *mated*, the others
*non-mated*.

- Closed set (mated probes): a probe's rank is the number of other templates scoring at least
  as high as its own identity's (ties count against it, as ``metrics.accuracy``); the rank-k
  identification rate is the fraction of mated probes with rank < k, and the CMC curve is
  that rate for k = 1, 2, ..., G.
- Open set (NIST FRVT, IJB-C): FPIR(t), the false-positive identification rate, is the
  fraction of non-mated probes whose top score is >= t; TPIR(t) is the fraction of mated
  probes whose own identity is at rank 1 with a score >= t. TPIR at FPIR = f is the largest
  TPIR over thresholds t with FPIR(t) <= f: t just above the (k + 1)-th highest non-mated
  top score, k the largest integer with k / N_non <= f, as ``metrics.tar_at_far`` does for
  verification. (FNIR = 1 - TPIR.)

Memory O(blocks): probes are scored in blocks of about BLOCK_BYTES of scores; of each block
only each probe's top score, the score of its own identity's template and its rank are kept,
so 100k probes x 100k templates need the embeddings plus O(probes) plus one block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .metrics import _check_finite, _real_array, _real_param, _to_numpy
from .score_norm import class_means, unit_rows

BLOCK_BYTES = 64 << 20  # one (probes, templates) block of scores
NUMERIC = "biuf"  # dtype kinds of numeric labels


def _embeddings(name: str, x: Any) -> np.ndarray:
    """Rows (N, D) scaled to unit length, float32 kept as float32, else float64; an all-zero
    or non-finite row is an error naming it."""
    a = _real_array(name, x)
    if a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"{name} must be a non-empty 2-D array (N, D); got shape {a.shape}")
    _check_finite(name, a)
    zero = np.flatnonzero(~a.any(axis=1))
    if zero.size:
        raise ValueError(f"{name} row {int(zero[0])} is all zeros: it has no direction")
    return unit_rows(a).astype(np.float32 if a.dtype == np.float32 else np.float64)


def _labels(name: str, labels: Any, n: int) -> np.ndarray:
    y = _to_numpy(labels)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one per row; got {y.shape}")
    return y


def _search(
    gallery: np.ndarray, gallery_labels: np.ndarray, probes: np.ndarray, column: np.ndarray,
    mated: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Rank (P,) (-1 for non-mated probes) and top score (P,) of unit probes (P, D) against
    the templates of a unit gallery (N, D); column (P,) is each probe's template index."""
    templates = unit_rows(class_means(gallery, gallery_labels)).astype(gallery.dtype)  # (G, D)
    templates = np.ascontiguousarray(templates.T)  # (D, G)
    rank = np.empty(probes.shape[0], dtype=np.int64)
    top = np.empty(probes.shape[0])
    block = max(1, BLOCK_BYTES // (templates.itemsize * templates.shape[1]))
    for a in range(0, probes.shape[0], block):
        b = min(a + block, probes.shape[0])
        scores = probes[a:b] @ templates  # (B, G)
        top[a:b] = scores.max(axis=1)
        own = scores[np.arange(b - a), column[a:b]]  # (B,) the own identity's score
        own = np.where(mated[a:b], own, np.inf)[:, None]  # non-mated: nothing scores >= inf
        rank[a:b] = (scores >= own).sum(axis=1) - 1
    return rank, top


def _rank_list(ranks: Sequence[int], n_templates: int) -> list[int]:
    for k in ranks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) \
                or not 1 <= k <= n_templates:
            raise ValueError(f"ranks must be ints in [1, {n_templates}] (the templates); "
                             f"got {k!r}")
    return [int(k) for k in ranks]


def _fpir_list(fpirs: Sequence[float]) -> list[float]:
    out = [_real_param("fpirs", f) for f in fpirs]
    for f in out:
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"fpirs must lie in [0, 1]; got {f!r}")
    return out


def _allowed(f: float, n: int) -> int:
    """The largest k with k / n <= f in floating point (the FPIR test of tar_at_far)."""
    k = int(np.floor(f * n))
    while k + 1 <= n and (k + 1) / n <= f:
        k += 1
    while k > 0 and k / n > f:
        k -= 1
    return k


def identification(
    gallery: Any,
    gallery_labels: Any,
    probes: Any,
    probe_labels: Any,
    ranks: Sequence[int] = (1, 5),
    fpirs: Sequence[float] = (0.01, 0.1),
) -> dict:
    """Closed- and open-set identification rates of probes (P, D) against a gallery (N, D).

    gallery_labels (N,) and probe_labels (P,): identities, both numbers or both strings.
    Returns {"rank<k>": the rank-k rate for each k in ranks, "tpir@<f>": TPIR at FPIR = f
    for each f in fpirs, "cmc": the CMC curve (G,) (entry k - 1 is the rank-k rate),
    "mated", "non_mated", "templates": the counts}; rates are fractions. fpirs need
    non-mated probes: pass fpirs=() for a closed-set search.
    """
    g = _embeddings("gallery", gallery)
    p = _embeddings("probes", probes)
    if g.shape[1] != p.shape[1]:
        raise ValueError(f"gallery and probes must have the same width; got {g.shape[1]} "
                         f"and {p.shape[1]}")
    g_labels = _labels("gallery_labels", gallery_labels, g.shape[0])
    p_labels = _labels("probe_labels", probe_labels, p.shape[0])
    if (g_labels.dtype.kind in NUMERIC) != (p_labels.dtype.kind in NUMERIC):
        raise TypeError(f"gallery_labels ({g_labels.dtype}) and probe_labels "
                        f"({p_labels.dtype}) must both be numbers or both be strings")
    identities = np.unique(g_labels)  # (G,) sorted, the order of class_means' rows
    ranks, fpirs = _rank_list(ranks, identities.size), _fpir_list(fpirs)
    column = np.searchsorted(identities, p_labels).clip(0, identities.size - 1)  # (P,)
    mated = identities[column] == p_labels  # (P,)
    n_mated, n_non = int(mated.sum()), int((~mated).sum())
    if n_mated == 0:
        raise ValueError("no probe's identity is in the gallery: rank and TPIR need mated "
                         "probes")
    if fpirs and n_non == 0:
        raise ValueError(f"fpirs = {fpirs} need non-mated probes (identities not in the "
                         f"gallery); all {n_mated} probes are mated: pass fpirs=()")
    rank, top = _search(g, g_labels, p, column, mated)
    cmc = np.cumsum(np.bincount(rank[mated], minlength=identities.size)) / n_mated  # (G,)
    out: dict = {f"rank{k}": float(cmc[k - 1]) for k in ranks}
    non_top = np.sort(top[~mated])[::-1]  # (N_non,) decreasing
    first = mated & (rank == 0)  # own identity at rank 1
    for f in fpirs:
        allowed = _allowed(f, n_non)  # non-mated probes that may pass
        bar = non_top[allowed] if allowed < n_non else -np.inf  # accept scores above it
        out[f"tpir@{f:g}"] = float(np.count_nonzero(first & (top > bar)) / n_mated)
    out.update(cmc=cmc, mated=n_mated, non_mated=n_non, templates=int(identities.size))
    return out
