"""The chunked margin cross-entropy as one autograd.Function.

Forward: normalise x, gather the N target rows of weight for cos_it, psi and psi' (margins.py),
the log-sum-exp over blocks, loss_i = lse_i - r_i psi(cos_it). For a scalar reduction the
gradients are computed in the same call (backward only scales them by grad_output), which
saves a second pass over the classes; for reduction="none" backward computes them with the
per-row grad_output.
"""

from __future__ import annotations

import torch

from ..functional import compute_dtype
from ..margins import Margin
from .shard import shard_gradients, shard_logsumexp
from .unit_rows import unit_rows, unit_rows_backward


def _target_cosines(x_hat: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor):
    """cos_it (N,) in compute dtype, rounded like the blocks' matmul in weight's dtype."""
    acc = x_hat.dtype
    w_hat, _ = unit_rows(weight[labels].to(acc))  # (N, D)
    x_mm, w_mm = x_hat.to(weight.dtype).to(acc), w_hat.to(weight.dtype).to(acc)
    return (x_mm * w_mm).sum(1)  # (N,)


class ChunkedMarginCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, embeddings, weight, row_scale, labels, scale, margin, reduction):
        with torch.autocast(embeddings.device.type, enabled=False):
            acc = compute_dtype(embeddings.dtype)
            x_hat, x_norm = unit_rows(embeddings.to(acc))  # (N, D), (N,)
            psi, dpsi = margin.psi_and_grad(_target_cosines(x_hat, weight, labels))
            n = embeddings.shape[0]
            r = torch.full((n,), scale, dtype=acc) if row_scale is None else row_scale.to(acc)
            target_logit = r * psi  # (N,)
            lse = shard_logsumexp(x_hat, weight, labels, target_logit, r)  # (N,)
            loss = lse - target_logit  # (N,)
            ctx.has_row_scale = row_scale is not None
            ctx.reduction = reduction
            state = (x_hat, x_norm, weight, labels, target_logit, dpsi, r, lse)
            if reduction == "none":
                ctx.state = state
                return loss.to(embeddings.dtype)
            row_grad = torch.full((n,), 1.0 / n if reduction == "mean" else 1.0, dtype=acc)
            ctx.grads = _input_gradients(state, row_grad)
            total = loss.mean() if reduction == "mean" else loss.sum()
            return total.to(embeddings.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        if ctx.reduction == "none":
            with torch.autocast(grad_output.device.type, enabled=False):
                grads = _input_gradients(ctx.state, grad_output)
        else:
            if ctx.grads is None:
                raise RuntimeError(
                    "chunked margin cross-entropy: backward ran twice "
                    "(retain_graph is not supported for reduction='mean'/'sum')"
                )
            grads, ctx.grads = ctx.grads, None  # drop our reference: autograd may keep it
            if not bool(grad_output == 1):
                grads = tuple(g.mul_(grad_output) for g in grads)
        d_embeddings, d_weight, d_row_scale = grads
        if not ctx.has_row_scale:
            d_row_scale = None
        return d_embeddings, d_weight, d_row_scale, None, None, None, None


def _input_gradients(state, row_grad):
    """(d_embeddings, d_weight, d_row_scale) for sum_i row_grad_i * loss_i."""
    x_hat, x_norm, weight, labels, target_logit, dpsi, r, lse = state
    d_x_hat, d_weight, d_r = shard_gradients(
        x_hat, weight, labels, target_logit, dpsi, r, lse, row_grad.to(r.dtype)
    )
    d_embeddings = unit_rows_backward(d_x_hat, x_hat, x_norm).to(weight.dtype)
    return d_embeddings, d_weight, d_r


def chunked_margin_cross_entropy(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    scale: float,
    margin: Margin,
    row_scale: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """margin_cross_entropy(...) without the (N, C) logits. embeddings (N, D), weight (C, D),
    labels (N,), row_scale (N,) or None (then r_i = scale). Returns a scalar or (N,)."""
    return ChunkedMarginCrossEntropy.apply(
        embeddings, weight, row_scale, labels, scale, margin, reduction
    )
