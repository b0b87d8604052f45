"""NumPy reference: every loss of the family with its exact analytic gradients.

Read top to bottom. NumPy only (importing this module does not import torch). Every faster
path in the package is tested against these functions, and these against finite differences.

Shapes: X (N, D) embeddings, W (C, D) class centres (the nn.Linear layout), y either integer
labels (N,) or a label matrix (N, C) (one-hot; soft rows where the loss allows). Mean over N.

The seed (docs/seed.md) had four mistakes that are corrected here:
- cross_entropy_loss's gradient is -y / (N P), not (P - y) / N (that is the gradient of
  softmax_loss with respect to the logits Z, one chain rule later);
- AM-Softmax's target logit is s (cos theta - m), not s cos(theta + m) (that is ArcFace);
- softmax must subtract the row maximum or exp overflows for logits above ~709;
- its am_softmax_loss used an undefined W and a wrong backward.
"""

from __future__ import annotations

import math

import numpy as np

NORM_EPS = 1e-12  # |x| below this counts as this: x / eps, gradient I / eps (finite at x = 0)
COS_EPS = 1e-10  # psi' is evaluated at cos clamped to [-1 + eps, 1 - eps]


# ----------------------------------------------------------------------------- softmax


def softmax(Z: np.ndarray) -> np.ndarray:
    """softmax(Z) row-wise, exp(Z - max) / sum: finite for any finite Z.  Z (N, C)."""
    E = np.exp(Z - Z.max(axis=1, keepdims=True))  # (N, C), every entry in (0, 1]
    return E / E.sum(axis=1, keepdims=True)


def log_softmax(Z: np.ndarray) -> np.ndarray:
    """Z - logsumexp(Z) row-wise, without forming exp(Z) unshifted.  Z (N, C)."""
    shifted = Z - Z.max(axis=1, keepdims=True)  # (N, C)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def label_matrix(y: np.ndarray, num_samples: int, num_classes: int) -> np.ndarray:
    """Labels as an (N, C) float matrix: integer labels (N,) become one-hot rows; an (N, C)
    matrix is checked (non-negative rows summing to 1) and returned as float."""
    y = np.asarray(y)
    if y.ndim == 1:
        if not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"y must hold integer class indices, got dtype {y.dtype}")
        if y.shape[0] != num_samples:
            raise ValueError(f"y must have shape ({num_samples},), got {y.shape}")
        if num_samples and (y.min() < 0 or y.max() >= num_classes):
            bad = y.min() if y.min() < 0 else y.max()
            raise ValueError(f"labels y must be in [0, {num_classes}), got {bad}")
        Y = np.zeros((num_samples, num_classes))
        Y[np.arange(num_samples), y] = 1.0
        return Y
    if y.shape != (num_samples, num_classes):
        expected = f"({num_samples},) or ({num_samples}, {num_classes})"
        raise ValueError(f"y must have shape {expected}, got {y.shape}")
    Y = y.astype(np.float64)
    if (Y < 0).any() or not np.allclose(Y.sum(axis=1), 1.0):
        raise ValueError("label matrix y must have non-negative rows that sum to 1")
    return Y


def target_indices(y: np.ndarray, num_samples: int, num_classes: int) -> np.ndarray:
    """One target class per sample (N,): integer labels as they are, one-hot rows by argmax.
    Soft rows raise: a margin needs to know which single column it moves."""
    Y = label_matrix(y, num_samples, num_classes)
    idx = Y.argmax(axis=1)
    if not np.array_equal(Y[np.arange(num_samples), idx], np.ones(num_samples)):
        raise ValueError("margin losses need one target class per sample: y has soft rows")
    return idx


def softmax_loss(Z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """L = -1/N sum_i sum_j y_ij log softmax(Z)_ij, and dL/dZ = (P * rowsum(Y) - Y) / N.

    Z (N, C) logits; y (N,) int or (N, C) one-hot/soft. For labels summing to 1 the
    gradient is the familiar (P - Y) / N."""
    N, C = Z.shape
    Y = label_matrix(y, N, C)
    loss = -(Y * log_softmax(Z)).sum() / N
    P = softmax(Z)  # (N, C)
    dZ = (P * Y.sum(axis=1, keepdims=True) - Y) / N
    return float(loss), dZ


def cross_entropy_loss(P: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """L = -1/N sum_i sum_j y_ij log P_ij for given probabilities P, and dL/dP = -Y / (N P).

    softmax_loss(Z, y) == cross_entropy_loss(softmax(Z), y): the softmax loss *is* the
    cross-entropy of the softmax. The gradients differ because they are taken with respect
    to different things. Chain rule through P = softmax(Z), dP_ik/dZ_ij = P_ik (d_kj - P_ij):
        dL/dZ_ij = sum_k (-Y_ik / (N P_ik)) P_ik (d_kj - P_ij) = (P_ij sum_k Y_ik - Y_ij) / N
    which is softmax_loss's dZ. The seed returned (P - Y) / N here, the *other* one's gradient.

    P (N, C) in [0, 1] (entries where y > 0 must be > 0); y (N,) int or (N, C)."""
    N, C = P.shape
    Y = label_matrix(y, N, C)
    if (P[Y > 0] <= 0).any():
        raise ValueError("P must be > 0 wherever y > 0 (log 0 is -inf)")
    safe = np.where(Y > 0, P, 1.0)  # only entries with y > 0 contribute
    loss = -(Y * np.log(safe)).sum() / N
    dP = -Y / (N * safe)
    return float(loss), dP


# ----------------------------------------------------------------------------- margins


def psi_combined(
    c: np.ndarray, m1: float = 1.0, m2: float = 0.0, m3: float = 0.0, fallback: str = "none"
) -> tuple[np.ndarray, np.ndarray]:
    """Target transform psi(cos) = cos(m1 theta + m2) - m3 and dpsi/dcos, theta = arccos(cos).

    fallback, where t = m1 theta + m2 passes pi:
      "none": as it is;  "seed": cos - m2 sin(m2) - m3 (m1 = 1);
      "continuous": cos - cos(theta_t) - 1 - m3 with theta_t = (pi - m2) / m1;
      "easy": plain cos where cos <= 0;  "piecewise": (-1)^k cos(t) - 2k - m3, k = floor(t/pi).
    dpsi/dcos = m1 sin(t) / sin(theta), evaluated with cos clamped to +-(1 - COS_EPS)."""
    c = np.clip(c, -1.0, 1.0)
    if m1 == 1 and m2 == 0:  # CosFace / NormFace: no angle needed
        return c - m3, np.ones_like(c)
    theta = np.arccos(c)
    t = m1 * theta + m2
    cc = np.clip(c, -1 + COS_EPS, 1 - COS_EPS)
    psi = np.cos(t) - m3
    dpsi = m1 * np.sin(m1 * np.arccos(cc) + m2) / np.sqrt(1 - cc * cc)
    beyond = t >= math.pi if fallback == "seed" else t > math.pi
    if fallback == "seed":
        if m1 != 1:
            raise ValueError(f"fallback='seed' needs m1 == 1, got {m1}")
        psi = np.where(beyond, c - m2 * math.sin(m2) - m3, psi)
        dpsi = np.where(beyond, 1.0, dpsi)
    elif fallback == "continuous":
        theta_t = (math.pi - m2) / m1
        psi = np.where(beyond, c - math.cos(theta_t) - 1 - m3, psi)
        dpsi = np.where(beyond, 1.0, dpsi)
    elif fallback == "easy":
        psi = np.where(c <= 0, c, psi)
        dpsi = np.where(c <= 0, 1.0, dpsi)
    elif fallback == "piecewise":
        k = np.maximum(np.floor(t / math.pi), 0)
        psi = (-1.0) ** k * np.cos(t) - 2 * k - m3
        k_c = np.maximum(np.floor((m1 * np.arccos(cc) + m2) / math.pi), 0)  # psi' is taken here
        dpsi = (-1.0) ** k_c * dpsi
    elif fallback != "none":
        raise ValueError(f"unknown fallback {fallback!r}")
    return psi, dpsi


def normalize(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A / max(|A|, eps) row-wise, and the clamped norms (N, 1)."""
    n = np.maximum(np.linalg.norm(A, axis=1, keepdims=True), NORM_EPS)  # (N, 1)
    return A / n, n


def normalize_backward(A_hat: np.ndarray, n: np.ndarray, dA_hat: np.ndarray) -> np.ndarray:
    """dL/dA from dL/dA_hat for A_hat = A / |A|: (g - a_hat (a_hat . g)) / |A| per row;
    g / eps where |A| < eps (A_hat = A / eps there, a linear map)."""
    radial = (A_hat * dA_hat).sum(axis=1, keepdims=True)  # (N, 1)
    small = n <= NORM_EPS
    return np.where(small, dA_hat, dA_hat - A_hat * radial) / n


def margin_softmax_loss(
    X: np.ndarray,
    W: np.ndarray,
    y: np.ndarray,
    s: float,
    m1: float = 1.0,
    m2: float = 0.0,
    m3: float = 0.0,
    fallback: str = "none",
    straight_through: bool = False,
    blend: float = 0.0,
    scale_by_norm: bool = False,
) -> tuple[float, np.ndarray, np.ndarray]:
    """The whole family in one function; returns (loss, dX, dW).

        cos = X_hat W_hat^T                              (N, C)
        logits_ij = r_i cos_ij, target r_i psi(cos_iy)   r_i = s, or s |x_i| (scale_by_norm)
        L = softmax_loss(logits, y)
    psi = (blend cos + psi_combined) / (1 + blend). straight_through uses psi' := 1.
    With no margin (m1 = 1, m2 = m3 = 0) y may hold soft rows."""
    N, C = X.shape[0], W.shape[0]
    X_hat, nx = normalize(X)  # (N, D), (N, 1)
    W_hat, nw = normalize(W)  # (C, D), (C, 1)
    cos = X_hat @ W_hat.T  # (N, C)
    transformed = cos.copy()
    dtransform = np.ones_like(cos)  # d transformed / d cos, elementwise
    if (m1, m2, m3) == (1, 0, 0):
        Y = label_matrix(y, N, C)
    else:
        idx = target_indices(y, N, C)
        Y = label_matrix(idx, N, C)
        rows = np.arange(N)
        psi, dpsi = psi_combined(cos[rows, idx], m1, m2, m3, fallback)
        psi = (blend * cos[rows, idx] + psi) / (1 + blend)
        dpsi = (blend + dpsi) / (1 + blend)
        transformed[rows, idx] = psi
        dtransform[rows, idx] = 1.0 if straight_through else dpsi
    r = s * np.linalg.norm(X, axis=1, keepdims=True) if scale_by_norm else np.full((N, 1), s)
    loss, dlogits = softmax_loss(r * transformed, Y)  # dlogits (N, C)
    dcos = dlogits * r * dtransform  # (N, C)
    dX_hat = dcos @ W_hat  # (N, D)
    dW_hat = dcos.T @ X_hat  # (C, D)
    dX = normalize_backward(X_hat, nx, dX_hat)
    if scale_by_norm:  # r_i = s |x_i|, d|x|/dx = x_hat
        dr = (dlogits * transformed).sum(axis=1, keepdims=True)  # (N, 1)
        dX = dX + s * dr * X_hat
    dW = normalize_backward(W_hat, nw, dW_hat)
    return loss, dX, dW


# ----------------------------------------------------------------------------- the losses


def normface_loss(X, W, y, s: float = 30.0):
    """NormFace: logits s cos(theta), no margin. y may hold soft rows. -> (loss, dX, dW)"""
    return margin_softmax_loss(X, W, y, s)


def am_softmax_loss(X, W, y, s: float = 30.0, m: float = 0.35):
    """AM-Softmax / CosFace: target logit s (cos(theta) - m). -> (loss, dX, dW)"""
    return margin_softmax_loss(X, W, y, s, m3=m)


def aam_softmax_loss(
    X, W, y, s: float = 30.0, m: float = 0.2, fallback: str = "seed", straight_through=False
):
    """AAM-Softmax / ArcFace: target logit s cos(theta + m). fallback (where theta + m > pi):
    "seed" (cos - m sin m, the default), "continuous" (cos - (1 - cos m)), "none", "easy".
    -> (loss, dX, dW)"""
    return margin_softmax_loss(
        X, W, y, s, m2=m, fallback=fallback, straight_through=straight_through
    )


def sphereface_loss(X, W, y, m: int = 4, s: float = 30.0, blend: float = 0.0, scale_by_norm=False):
    """SphereFace / A-Softmax: target (-1)^k cos(m theta) - 2k, theta in [k pi/m, (k+1) pi/m],
    blended with cos by lambda = blend; scale s, times |x| if scale_by_norm. -> (loss, dX, dW)"""
    return margin_softmax_loss(
        X, W, y, s, m1=m, fallback="piecewise", blend=blend, scale_by_norm=scale_by_norm
    )


def combined_margin_loss(X, W, y, s: float, m1: float, m2: float, m3: float, fallback="none"):
    """Combined margin: target s (cos(m1 theta + m2) - m3). -> (loss, dX, dW)"""
    return margin_softmax_loss(X, W, y, s, m1, m2, m3, fallback=fallback)


def accuracy(logits: np.ndarray, y: np.ndarray, topk=(1,)) -> list[float]:
    """Top-k accuracy in percent for each k (the seed's prec1 is accuracy(...)[0]).
    logits (N, C), y (N,) int or (N, C) one-hot."""
    N, C = logits.shape
    idx = target_indices(y, N, C)
    order = np.argsort(-logits, axis=1, kind="stable")  # (N, C), best first
    return [float((order[:, :k] == idx[:, None]).any(axis=1).mean() * 100) for k in topk]
