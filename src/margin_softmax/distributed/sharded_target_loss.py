"""Cross-entropy over sharded classes with the target logit given per sample, as one
autograd.Function: the sharded form of functional.target_cross_entropy.

Every rank holds the gathered rows X (N, D) and the same target logits t (N,), computed by
the caller on every rank (replicated.py); rank r holds the rows W_r (C_r, D) of its classes.

forward, on every rank:
    x_hat  = X / |X|
    o_r,i  = lse over this shard's classes other than y_i of s <x_hat_i, w_hat_j>   # (N,)
             (or of a transform of it, or over sub-centres: shard_classes.py)
    o_i    = logsumexp over ranks of o_r,i;  gap_i = o_i - t_i
    loss   = mean_i log(1 + e^gap_i)          (= lse_i - t_i, exact however small)

backward, on every rank:
    dL/dt_i        = g_i (p_iy - 1) = -g_i sigmoid(gap_i)      the same on every rank
    dL/dW_r, dL/dX this shard's share (the target cells left out: their gradient goes back
                   through t by the caller's autograd)

The t_i of all ranks travel with the lse table and must agree to the bit: a rank whose
state or draws differ (a different seed, a checkpoint loaded on one rank only) makes every
rank raise the same ValueError instead of training on a loss that differs between ranks.
"""

from __future__ import annotations

import torch

from ..chunked.unit_rows import unit_rows, unit_rows_backward
from ..numerics import compute_dtype
from .comm import all_gather_stack
from .shard_classes import ShardClasses
from .sharded_loss import global_loss, returned_loss


def _check_same_targets(targets: torch.Tensor) -> None:
    """targets (W, N): every rank's t; the same check, and the same error, on every rank."""
    same = torch.isclose(targets, targets[:1], rtol=0.0, atol=0.0, equal_nan=True)  # (W, N)
    if not bool(same.all()):
        ranks = (~same).any(1).nonzero().view(-1).tolist()
        raise ValueError(
            f"the ranks computed different target logits (rank(s) {ranks} differ from rank "
            "0): the heads' running state, draws or margin parameters differ between ranks "
            "(a different seed, a checkpoint or scheduler applied on some ranks only)"
        )


class ShardedTargetCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, target_logit, shard, scale, group):
        with torch.autocast(x.device.type, enabled=False):
            acc = compute_dtype(x.dtype)
            x_hat, norm = unit_rows(x.to(acc))  # (N, D), (N,)
            n = x.shape[0]
            t = target_logit.detach().to(acc)  # (N,)
            other = shard.other_logsumexp(x_hat, weight, scale)  # (N,)
            table = all_gather_stack(torch.cat([other.to(acc), t]), group)  # (W, 2N)
            _check_same_targets(table[:, n:])
            gap, lse, loss = global_loss(table[:, :n], t)
        ctx.save_for_backward(weight, x_hat, norm, lse, gap)
        ctx.shard, ctx.scale = shard, scale
        ctx.x_dtype, ctx.t_dtype = x.dtype, target_logit.dtype
        return returned_loss(loss, x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        weight, x_hat, norm, lse, gap = ctx.saved_tensors
        with torch.autocast(grad_output.device.type, enabled=False):
            n = x_hat.shape[0]
            row_grad = (grad_output.to(x_hat.dtype) / n).expand(n)  # (N,)
            d_x_hat, d_weight = ctx.shard.gradients(x_hat, weight, ctx.scale, lse, gap,
                                                    row_grad)
            d_x = None
            if ctx.needs_input_grad[0]:
                d_x = unit_rows_backward(d_x_hat.to(x_hat.dtype), x_hat, norm).to(ctx.x_dtype)
            d_t = (-row_grad * torch.sigmoid(gap)).to(ctx.t_dtype)  # (N,) g (p_t - 1)
        if not ctx.needs_input_grad[1]:
            d_weight = None
        return d_x, d_weight, d_t, None, None, None


def sharded_target_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    target_logit: torch.Tensor,
    shard: ShardClasses,
    scale: float,
    group=None,
) -> torch.Tensor:
    """The global mean loss (a scalar, the same on every rank). x (N, D) the gathered rows
    (the partitioned view of replicated.gather_twice); weight this rank's classes (C_r, D),
    or (C_r K, D) with sub-centres; target_logit (N,) the same on every rank, with its own
    autograd; shard: how this rank computes its classes' part (shard_classes.py)."""
    return ShardedTargetCrossEntropy.apply(x, weight, target_logit, shard, scale, group)
