"""Sub-center ArcFace's cross-entropy without the (N, C) logits or the (N, C*K) cosines.

weight (C*K, D): class c owns rows c*K .. c*K + K - 1. A tile of T classes [a, b) is the
T*K weight rows [a*K, b*K):

    cos_all = w_hat[a*K:b*K] @ x_hat^T                 (T*K, N), viewed (T, K, N)
    cos, k  = max over K                               (T, N) each: value, winning sub-centre
    logit   = s * cos, the target cells set to -inf    (T, N)

Sweep 1 (forward) streams lse_i = log sum_j exp(logit_ij) with each tile's max per row as the
shift (any s: no fixed-shift bound is needed), then adds the target logit s * psi(cos_iy) by
logaddexp; cos_iy comes from the N*K target rows directly. Sweep 2 (backward) recomputes each
tile:

    dcos  = g_i s exp(logit - lse)                     (T, N), 0 at the target cells
    route = dcos scattered to the argmax sub-centre    (T, K, N) -> (T*K, N), zero elsewhere
    d_x_hat          += route^T @ w_hat rows           (N, D)
    dL/dw_hat rows    = route @ x_hat                  (T*K, D), then the normalisation backward

and the target cells' g_i s (p_iy - 1) psi'(cos_iy) goes to x_hat and to the target's winning
sub-centre row. Ties in the max: torch.max's first maximal index, as the eager head's
``cos.max(dim=2)`` (equal cosines give equal values in both paths when the rows are equal).
The backward always recomputes (one sweep for a no-grad forward). Memory beyond the inputs
and gradients: O(N*D + N*K*D + T*K*(N + D)). Half inputs run in float32 throughout.
"""

from __future__ import annotations

import torch

from ..margins import Margin
from ..numerics import compute_dtype
from .unit_rows import unit_rows, unit_rows_backward

TILE_ELEMENTS = 1 << 20  # T*K*N: elements of one (T*K, N) tile of cosines (8 MiB float32)


def tile_classes(n_rows: int, sub_centers: int) -> int:
    """Classes per tile T so that a (T*K, N) tile holds about TILE_ELEMENTS."""
    return max(1, TILE_ELEMENTS // max(1, n_rows * sub_centers))


def _ranges(weight: torch.Tensor, k: int, tile: int):
    """(a, b) of every tile of classes."""
    num_classes = weight.shape[0] // k
    for a in range(0, num_classes, tile):
        yield a, min(a + tile, num_classes)


def _tile_cosines(weight, a, b, k, x_hat):
    """(w_hat (T*K, D), |w| (T*K,), cos (T, N), argmax sub-centre (T, N)) of classes [a, b)."""
    w_hat, w_norm = unit_rows(weight[a * k : b * k].to(x_hat.dtype))  # (T*K, D), (T*K,)
    cos_all = (w_hat @ x_hat.t()).view(b - a, k, -1)  # (T, K, N)
    cos, best = cos_all.max(dim=1)  # (T, N) each; ties: the first sub-centre
    return w_hat, w_norm, cos, best


def _target_cells(labels: torch.Tensor, a: int, b: int):
    """(class offsets, rows) of the target cells (row i, class y_i) inside the tile [a, b)."""
    rows = ((labels >= a) & (labels < b)).nonzero().squeeze(1)  # (M,)
    return labels[rows] - a, rows


@torch.no_grad()
def other_logsumexp(x_hat, weight, targets, k: int, scale: float, tile: int) -> torch.Tensor:
    """Sweep 1: lse_i (N,) of s cos_ij over the classes of ``weight`` (C*K, D) other than
    targets_i (a class index, or -1: every class counts); -inf where there are none."""
    acc = x_hat.dtype
    lse = torch.full((x_hat.shape[0],), -torch.inf, dtype=acc, device=x_hat.device)  # (N,)
    for a, b in _ranges(weight, k, tile):
        logit = scale * _tile_cosines(weight, a, b, k, x_hat)[2]  # (T, N)
        logit[_target_cells(targets, a, b)] = -torch.inf
        m = logit.amax(0).clamp_min(torch.finfo(acc).min)  # (N,) finite if all -inf
        lse = torch.logaddexp(lse, m + (logit - m).exp_().sum(0).log())
    return lse


@torch.no_grad()
def other_gradients(x_hat, weight, targets, k: int, scale: float, lse, coef, tile: int):
    """Sweep 2: the non-target cells' gradients (d_x_hat (N, D) in x_hat's dtype, d_weight
    (C*K, D) in weight's) of sum_i g_i loss_i, lse (N,) the full one, coef (N,) = g_i s:
    dcos = coef p (T, N), routed to each cell's winning sub-centre."""
    n, acc = x_hat.shape[0], x_hat.dtype
    d_x_hat = torch.zeros_like(x_hat)  # (N, D)
    d_weight = torch.empty_like(weight)  # (C*K, D); each tile's rows written once
    for a, b in _ranges(weight, k, tile):
        w_hat, w_norm, cos, best = _tile_cosines(weight, a, b, k, x_hat)
        logit = (scale * cos).sub_(lse)  # (T, N) logit - lse
        logit[_target_cells(targets, a, b)] = -torch.inf
        dcos = logit.exp_().mul_(coef)  # (T, N) g s p, 0 at the target cells
        route = torch.zeros(b - a, k, n, dtype=acc, device=x_hat.device)  # (T, K, N)
        route.scatter_(1, best[:, None, :], dcos[:, None, :])
        route = route.view((b - a) * k, n)  # (T*K, N)
        d_x_hat.addmm_(route.t(), w_hat)  # (N, D)
        d_w_hat = route @ x_hat  # (T*K, D)
        d_weight[a * k : b * k] = unit_rows_backward(d_w_hat, w_hat, w_norm)
    return d_x_hat, d_weight


class SubCenterCrossEntropy(torch.autograd.Function):
    """loss_i = logsumexp_j logit_ij - s psi(cos_iy), cos_ij = max_k cos(x_i, w_{jK+k})."""

    @staticmethod
    def forward(ctx, embeddings, weight, labels, scale, margin, sub_centers, reduction):
        with torch.autocast(embeddings.device.type, enabled=False), torch.no_grad():
            k, n = sub_centers, embeddings.shape[0]
            acc = compute_dtype(embeddings.dtype)
            x_hat, x_norm = unit_rows(embeddings.to(acc))  # (N, D), (N,)

            # the target: its K rows, the best of them, psi and psi' there
            target_rows = labels[:, None] * k + torch.arange(k, device=labels.device)  # (N, K)
            w_t, w_t_norm = unit_rows(weight[target_rows.view(-1)].to(acc))  # (N*K, D)
            cos_t = (w_t.view(n, k, -1) * x_hat[:, None, :]).sum(2)  # (N, K)
            cos_t, k_t = cos_t.max(dim=1)  # (N,) each
            psi, dpsi = margin.psi_and_grad(cos_t)  # (N,) each
            target_logit = scale * psi  # (N,)

            # sweep 1: lse over the non-target classes, tile by tile, then the target
            tile = tile_classes(n, k)
            lse = other_logsumexp(x_hat, weight, labels, k, scale, tile)  # (N,)
            gap = lse - target_logit  # (N,) lse of the others - target: exact as p_t -> 1
            lse = torch.logaddexp(lse, target_logit)
            loss = torch.logaddexp(gap, torch.zeros_like(gap))  # (N,) log(1 + e^gap)

            best_row = labels * k + k_t  # (N,) the target's winning weight row
            pick = torch.arange(n, device=x_hat.device) * k + k_t  # its index in w_t
            ctx.save_for_backward(weight, labels, x_hat, x_norm, lse, gap, dpsi,
                                  best_row, w_t[pick], w_t_norm[pick])
            ctx.setup = (scale, k, reduction, embeddings.dtype, tile)
            if reduction == "none":
                return loss  # (N,) in compute dtype: the caller casts
            return loss.mean() if reduction == "mean" else loss.sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        weight, labels, x_hat, x_norm, lse, gap, dpsi, best_row, w_best, w_best_norm = (
            ctx.saved_tensors
        )
        scale, k, reduction, x_dtype, tile = ctx.setup
        n, acc = x_hat.shape[0], x_hat.dtype
        with torch.autocast(x_hat.device.type, enabled=False):
            row_grad = grad_output.to(acc).expand(n)  # (N,) g_i
            if reduction == "mean":
                row_grad = row_grad / n
            coef = row_grad * scale  # (N,) dloss/dlogit -> dloss/dcos

            # the target cells: dcos_t = g s (p_t - 1) psi'
            dcos_t = coef * -torch.sigmoid(gap) * dpsi  # (N,) p_t - 1 = -sigmoid(gap)
            d_w_t = unit_rows_backward(dcos_t[:, None] * x_hat, w_best, w_best_norm)  # (N, D)

            # sweep 2: the non-target cells, tile by tile
            d_x_hat, d_weight = other_gradients(x_hat, weight, labels, k, scale, lse, coef, tile)
            d_x_hat += dcos_t[:, None] * w_best  # (N, D)
            d_weight.index_add_(0, best_row, d_w_t.to(weight.dtype))
            d_x = unit_rows_backward(d_x_hat, x_hat, x_norm)  # (N, D)
        return d_x.to(x_dtype), d_weight, None, None, None, None, None


def chunked_subcenter_cross_entropy(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    scale: float,
    margin: Margin,
    sub_centers: int,
    reduction: str = "mean",
) -> torch.Tensor:
    """Sub-center ArcFace's loss (no inter-top-k penalty) without the (N, C) logits.
    embeddings (N, D), weight (C*K, D), labels (N,) in [0, C). Returns a scalar or (N,), in
    float32 for half inputs."""
    return SubCenterCrossEntropy.apply(
        embeddings, weight, labels, scale, margin, sub_centers, reduction
    )
