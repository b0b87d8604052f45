"""Cross-entropy over sharded classes with the target logit given per sample, as one
autograd.Function: the sharded form of functional.target_cross_entropy.

Every rank holds the gathered rows X (N, D) and the same target logits t (N,), computed by
the caller on every rank (replicated.py); rank r holds the rows W_r (C_r, D) of its classes.

forward, on every rank:
    x_hat  = X / |X|
    o_r,i  = lse over this shard's classes other than y_i of s <x_hat_i, w_hat_j>   # (N,)
             (or of s f_i(<x_hat_i, w_hat_j>): a non-target transform, CurricularFace's)
    o_i    = logsumexp over ranks of o_r,i;  gap_i = o_i - t_i
    loss   = mean_i log(1 + e^gap_i)          (= lse_i - t_i, exact however small)

backward, on every rank:
    dL/dt_i        = g_i (p_iy - 1) = -g_i sigmoid(gap_i)      the same on every rank
    dL/dW_r, dL/dX this shard's share (shard_gradients, the target cells left out: their
                   gradient goes back through t by the caller's autograd)

The t_i of all ranks travel with the lse table and must agree to the bit: a rank whose
state or draws differ (a different seed, a checkpoint loaded on one rank only) makes every
rank raise the same ValueError instead of training on a loss that differs between ranks.
"""

from __future__ import annotations

import torch

from ..chunked.unit_rows import unit_rows, unit_rows_backward
from ..functional import compute_dtype
from .comm import all_gather_stack
from .sharded_loss import global_loss, other_logsumexp, shard_share, use_triton


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
    def forward(ctx, x, weight, local_target, target_logit, scale, group, block_size, impl,
                non_target):
        triton = non_target is None and use_triton(impl, weight)  # the kernels have no f
        with torch.autocast(x.device.type, enabled=False):
            acc = compute_dtype(x.dtype)
            x_hat, norm = unit_rows(x.to(acc))  # (N, D), (N,)
            n = x.shape[0]
            t = target_logit.detach().to(acc)  # (N,)
            r = torch.full((n,), scale, dtype=acc, device=x.device)  # (N,)
            other = other_logsumexp(x_hat, weight, local_target, t, r, block_size, triton,
                                    non_target)
            table = all_gather_stack(torch.cat([other.to(acc), t]), group)  # (W, 2N)
            _check_same_targets(table[:, n:])
            gap, lse, loss = global_loss(table[:, :n], t)
        ctx.save_for_backward(weight, local_target, x_hat, norm, t, lse, gap)
        ctx.scale, ctx.block_size, ctx.triton = scale, block_size, triton
        ctx.non_target = non_target
        ctx.x_dtype, ctx.t_dtype = x.dtype, target_logit.dtype
        return loss.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        weight, local_target, x_hat, norm, t, lse, gap = ctx.saved_tensors
        with torch.autocast(grad_output.device.type, enabled=False):
            n = x_hat.shape[0]
            r = torch.full((n,), ctx.scale, dtype=x_hat.dtype, device=x_hat.device)
            row_grad = (grad_output.to(x_hat.dtype) / n).expand(n)  # (N,)
            d_x_hat, d_weight, _ = shard_share(x_hat, weight, local_target, t, None, r, lse,
                                               gap, row_grad, ctx.block_size, ctx.triton,
                                               ctx.non_target)
            d_x = None
            if ctx.needs_input_grad[0]:
                d_x = unit_rows_backward(d_x_hat.to(x_hat.dtype), x_hat, norm).to(ctx.x_dtype)
            d_t = (-row_grad * torch.sigmoid(gap)).to(ctx.t_dtype)  # (N,) g (p_t - 1)
        if not ctx.needs_input_grad[1]:
            d_weight = None
        return d_x, d_weight, None, d_t, None, None, None, None, None


def sharded_target_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    local_target: torch.Tensor,
    target_logit: torch.Tensor,
    scale: float,
    group=None,
    block_size: int | None = None,
    impl: str = "auto",
    non_target=None,
) -> torch.Tensor:
    """The global mean loss (a scalar, the same on every rank). x (N, D) the gathered rows
    (the partitioned view of replicated.gather_twice); weight (C_r, D) this rank's classes;
    local_target (N,) each row's class in ``weight`` or -1; target_logit (N,) the same on
    every rank, with its own autograd. impl: "auto", "chunked" or "triton". non_target:
    None, or functional.target_cross_entropy's transform of the non-target cosines, its
    row_param the same on every rank (chunked only: "auto" and "triton" run chunked)."""
    return ShardedTargetCrossEntropy.apply(
        x, weight, local_target, target_logit, scale, group, block_size, impl, non_target
    )
