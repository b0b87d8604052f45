"""Datasets for experiments: synthetic identities, open-set splits, verification trials, digits.

Everything is generated with NumPy and is deterministic under ``seed``. Features are float32,
labels int64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

_CHUNK_ROWS = 65536  # rows generated per step; fixed, so results do not depend on memory


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _check_nonneg(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{name} must be a number >= 0; got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def class_centres(num_identities: int, dim: int, seed: int = 0) -> np.ndarray:
    """Random identity centres on the unit sphere: c_k = g_k / ||g_k||, g_k ~ N(0, I_dim).

    Returns (num_identities, dim) float32. Memory is the output plus one chunk, so a million
    centres of dim 512 need about 2 GB and nothing more. Rows do not depend on chunking.
    """
    num_identities = _check_int("num_identities", num_identities, 1)
    dim = _check_int("dim", dim, 1)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_identities, dim), dtype=np.float32)  # (C, dim)
    for start in range(0, num_identities, _CHUNK_ROWS):
        block = centres[start : start + _CHUNK_ROWS]  # (b, dim) view
        norm = np.sqrt(np.einsum("ij,ij->i", block, block))[:, None]  # (b, 1)
        block /= np.maximum(norm, np.float32(1e-12))
    return centres


def synthetic_identities(
    num_identities: int,
    samples_per_identity: int,
    dim: int,
    *,
    nuisance: float = 1.0,
    noise: float = 0.3,
    nuisance_rank: int = 4,
    mixing: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Samples of random identities with shared nuisance and a fixed non-linear mixing.

    Latent sample of identity k:  z = c_k + e + a U,  with c_k = class_centres(...)[k] (unit norm),
    e ~ N(0, noise^2 / dim I) (RMS norm ``noise``), U (nuisance_rank, dim) orthonormal nuisance
    directions shared by all identities (think pose, channel) and a ~ N(0, nuisance^2 / r I)
    (RMS norm ``nuisance``). Features:  x = tanh(s z Q) / s  with Q a random rotation and
    s = mixing * sqrt(dim); mixing = 0 gives x = z (no rotation, no tanh).
    Returns features (N, dim) float32 and labels (N,) int64 with N = num_identities *
    samples_per_identity, grouped by identity (labels 0,0,..,1,1,..); shuffle before training.
    """
    num_identities = _check_int("num_identities", num_identities, 1)
    samples_per_identity = _check_int("samples_per_identity", samples_per_identity, 1)
    dim = _check_int("dim", dim, 1)
    nuisance = _check_nonneg("nuisance", nuisance)
    noise = _check_nonneg("noise", noise)
    mixing = _check_nonneg("mixing", mixing)
    rank = _check_int("nuisance_rank", nuisance_rank, 0)
    if rank > dim:
        raise ValueError(f"nuisance_rank must be <= dim={dim}; got {nuisance_rank!r}")

    centres = class_centres(num_identities, dim, seed)  # (C, dim)
    shared_rng = np.random.default_rng([seed, 1])
    directions = np.linalg.qr(shared_rng.standard_normal((dim, max(rank, 1))))[0]
    directions = directions[:, :rank].T.astype(np.float32)  # (r, dim), orthonormal rows
    rotation = np.linalg.qr(shared_rng.standard_normal((dim, dim)))[0].astype(np.float32)
    scale = np.float32(mixing * math.sqrt(dim))

    n = num_identities * samples_per_identity
    labels = np.repeat(np.arange(num_identities, dtype=np.int64), samples_per_identity)  # (N,)
    features = np.empty((n, dim), dtype=np.float32)  # (N, dim)
    rng = np.random.default_rng([seed, 2])
    for start in range(0, n, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, n)
        z = centres[labels[start:stop]]  # (b, dim)
        e = rng.standard_normal((stop - start, dim), dtype=np.float32)  # (b, dim)
        z += e * np.float32(noise / math.sqrt(dim))
        if rank > 0:
            a = rng.standard_normal((stop - start, rank), dtype=np.float32)  # (b, r)
            z += (a * np.float32(nuisance / math.sqrt(rank))) @ directions
        if mixing > 0:
            z = np.tanh(scale * (z @ rotation)) / scale
        features[start:stop] = z
    return features, labels


@dataclass(frozen=True)
class OpenSetSplit:
    """Train part with labels 0..K-1 and a held-out part of identities unseen in training."""

    train_features: np.ndarray  # (N_train, ...)
    train_labels: np.ndarray  # (N_train,) int64 in [0, K)
    train_identities: np.ndarray  # (K,) original label of train class k
    held_out_features: np.ndarray  # (N_held, ...)
    held_out_labels: np.ndarray  # (N_held,) int64, original labels


def open_set_split(
    features: np.ndarray, labels: np.ndarray, held_out_fraction: float, seed: int = 0
) -> OpenSetSplit:
    """Split by identity: round(held_out_fraction * #identities) identities are held out.

    features (N, ...), labels (N,) integer identities. Train labels are relabelled to 0..K-1
    in increasing order of the original label (train_identities maps them back); held-out rows
    keep their original labels. Row order is preserved within each part. Both parts are
    non-empty, so at least two identities are needed.
    """
    x = np.asarray(features)
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array; got shape {y.shape}, {y.dtype}")
    if x.shape[:1] != y.shape:
        raise ValueError(
            f"features and labels must have the same length; got len(features)={len(x)}, "
            f"len(labels)={y.size}"
        )
    if isinstance(held_out_fraction, bool) or not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must lie in (0, 1); got {held_out_fraction!r}")
    identities = np.unique(y)  # (I,)
    if identities.size < 2:
        raise ValueError(f"labels must contain at least 2 identities; got {identities.size}")
    num_held = min(max(round(held_out_fraction * identities.size), 1), identities.size - 1)
    rng = np.random.default_rng(seed)
    held_ids = np.sort(rng.permutation(identities)[:num_held])  # (H,)
    held = np.isin(y, held_ids)  # (N,)
    train_ids, train_labels = np.unique(y[~held], return_inverse=True)  # (K,), (N_train,)
    return OpenSetSplit(
        train_features=x[~held],
        train_labels=train_labels.astype(np.int64).ravel(),
        train_identities=train_ids.astype(np.int64),
        held_out_features=x[held],
        held_out_labels=y[held].astype(np.int64),
    )


def verification_trials(
    labels: np.ndarray, num_trials: int, *, target_fraction: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random verification pairs (i, j), i != j, with target = 1 iff labels[i] == labels[j].

    labels (N,) integer identities. Returns i (T,) int64, j (T,) int64, target (T,) int64 with
    round(target_fraction * T) targets, in random order. A target pair picks i uniformly among
    samples whose identity has >= 2 samples and j uniformly among the other samples of that
    identity; a non-target pair picks i uniformly and j uniformly among samples of other
    identities. Pairs are drawn with replacement, so repeats are possible. Score with e.g.
    cosine(features[i], features[j]).
    """
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array; got shape {y.shape}, {y.dtype}")
    num_trials = _check_int("num_trials", num_trials, 1)
    if isinstance(target_fraction, bool) or not 0.0 <= target_fraction <= 1.0:
        raise ValueError(f"target_fraction must lie in [0, 1]; got {target_fraction!r}")
    num_tar = round(target_fraction * num_trials)
    num_non = num_trials - num_tar

    _, cls, counts = np.unique(y, return_inverse=True, return_counts=True)  # (N,), (I,)
    cls = cls.ravel()
    order = np.argsort(cls, kind="stable")  # (N,) sample indices grouped by identity
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))  # (I,) first position of identity
    pos = np.empty_like(order)
    pos[order] = np.arange(y.size)  # (N,) position of each sample in ``order``
    rng = np.random.default_rng(seed)

    eligible = np.flatnonzero(counts[cls] >= 2)  # (E,) samples with a same-identity partner
    if num_tar > 0 and eligible.size == 0:
        raise ValueError("labels has no identity with 2 or more samples; cannot make targets")
    if num_non > 0 and counts.size < 2:
        raise ValueError(f"labels must contain at least 2 identities; got {counts.size}")

    i_tar = eligible[rng.integers(0, max(eligible.size, 1), num_tar)]  # (T_tar,)
    c = cls[i_tar]
    offset = pos[i_tar] - starts[c] + 1 + rng.integers(0, counts[c] - 1)  # skips i itself
    j_tar = order[starts[c] + offset % counts[c]]  # (T_tar,)

    i_non = rng.integers(0, y.size, num_non)  # (T_non,)
    c = cls[i_non]
    r = rng.integers(0, y.size - counts[c])  # position among samples of other identities
    r = np.where(r >= starts[c], r + counts[c], r)  # jump over identity c's block
    j_non = order[r]  # (T_non,)

    i = np.concatenate((i_tar, i_non)).astype(np.int64)  # (T,)
    j = np.concatenate((j_tar, j_non)).astype(np.int64)  # (T,)
    target = np.concatenate((np.ones(num_tar, np.int64), np.zeros(num_non, np.int64)))  # (T,)
    perm = rng.permutation(num_trials)
    return i[perm], j[perm], target[perm]


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (no download): features (1797, 64) float32 = pixel / 16
    in [0, 1], labels (1797,) int64 in 0..9."""
    from sklearn.datasets import load_digits

    data = load_digits()
    features = (data.data / 16.0).astype(np.float32)  # (1797, 64)
    labels = data.target.astype(np.int64)  # (1797,)
    return features, labels
