"""Margin cross-entropy with the classes sharded across ranks, as one autograd.Function.

Rank r holds the rows W_r (C_r, D) of its classes and its own embeddings x_r (n_r, D).

forward, on every rank:
    X      = all-gather of every rank's embeddings                     # (N, D), N = sum n_r
    x_hat  = X / |X|
    t_i    = r * psi(cos(x_hat_i, w_{y_i}))  on the rank owning y_i     # (N,)
    o_i    = logsumexp over ranks of the shards' lse over non-target classes   # (N,)
    gap_i  = o_i - t_i,  lse_i = logaddexp(o_i, t_i)
    loss   = mean_i log(1 + e^gap_i)    (= lse_i - t_i, exact however small) on every rank

backward, on every rank:
    shard_gradients with the global lse (and gap: p_t - 1 = -sigmoid(gap)) gives dloss/dW_r and
    this shard's share of
    dloss/dx_hat for all N rows; the shares are summed over ranks with a reduce-scatter that
    returns each rank its own rows, and go through the normalisation of x.

The gradient returned for x_r is ``world_size * dloss/dx_r``: a backbone wrapped in
DistributedDataParallel averages its gradients over the W ranks, so it then receives
exactly the gradient of the global mean loss (see docs/distributed.md).

The two shard primitives come from chunked/shard.py (any device) or, on CUDA, from the
Triton kernels' GEMM schedule (kernels/shard.py): ``impl`` "auto" picks the latter where
triton imports and the dtype (not float64) and embedding size fit.
"""

from __future__ import annotations

import torch

from ..chunked import shard_gradients, shard_logsumexp
from ..chunked.unit_rows import unit_rows, unit_rows_backward
from ..margins import Margin
from ..numerics import compute_dtype
from .comm import all_gather_stack, gather_rows, rank_and_world_size, reduce_scatter_rows
from .handshake import BatchLayout

IMPLS = ("auto", "chunked", "triton")


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def use_triton(impl: str, weight: torch.Tensor) -> bool:
    """Whether the shard primitives run on the Triton kernels for this weight. "auto": as
    margin_cross_entropy decides (kernels.auto_picks_triton: the same self-check). "triton"
    where they cannot run at all raises; float64 and too large an embedding size go to
    chunked, as in margin_cross_entropy(impl="triton")."""
    if check_impl(impl) == "chunked":
        return False
    from ..kernels import auto_picks_triton, check_runnable, kernels_fit

    if impl == "auto":
        return auto_picks_triton(weight)
    check_runnable(weight, "the head's weight")
    return kernels_fit(weight)


def other_logsumexp(x_hat, weight, local_target, t, r, block_size, triton: bool,
                    non_target=None):
    """This shard's lse over its non-target classes (N,); non_target: the chunked path's
    transform of the non-target logits (not on the kernels)."""
    if triton:
        from ..kernels.shard import triton_shard_logsumexp

        return triton_shard_logsumexp(x_hat, weight, local_target, t, r, with_target=False)
    return shard_logsumexp(x_hat, weight, local_target, t, r, block_size, with_target=False,
                           non_target=non_target)


def shard_share(x_hat, weight, local_target, t, dpsi, r, lse, gap, row_grad, block_size,
                triton: bool, non_target=None):
    """(d_x_hat (N, D), d_weight (C_r, D), None): this shard's share of the gradients of
    sum_i row_grad_i loss_i; dpsi None leaves the target cells out (a target logit with its
    own autograd)."""
    if triton:
        from ..kernels.shard import triton_shard_gradients

        if dpsi is None:  # the kernels put g r (p_t - 1) psi' there: zero it
            dpsi = torch.zeros_like(t)
        return triton_shard_gradients(x_hat, weight, local_target, t, dpsi, r, lse, row_grad,
                                      gap=gap)
    return shard_gradients(x_hat, weight, local_target, t, dpsi, r, lse, row_grad, block_size,
                           need_row_scale_grad=False, gap=gap, non_target=non_target)


def _target_logits(x_hat, weight, local_target, scale: float, margin: Margin):
    """(t, dpsi), both (N,): scale * psi(cos_it) and psi'(cos_it) where this rank owns the
    target (local_target >= 0), zeros elsewhere."""
    t, dpsi = torch.zeros_like(x_hat[:, 0]), torch.zeros_like(x_hat[:, 0])  # (N,)
    owned = (local_target >= 0).nonzero().squeeze(1)  # (M,)
    if owned.numel():
        w_hat, _ = unit_rows(weight[local_target[owned]].to(x_hat.dtype))  # (M, D)
        # round like the matmul in shard_logsumexp, which runs in weight's dtype
        x_mm = x_hat[owned].to(weight.dtype).to(x_hat.dtype)
        cos = (x_mm * w_hat.to(weight.dtype).to(x_hat.dtype)).sum(1)  # (M,)
        psi, grad = margin.psi_and_grad(cos)
        t[owned], dpsi[owned] = scale * psi, grad
    return t, dpsi


def global_loss(others: torch.Tensor, t: torch.Tensor):
    """(gap (N,), lse (N,), loss) from every rank's lse over its non-target classes
    (W, N) and the target logits t (N,): gap = o - t with o the lse over all of them,
    lse = logaddexp(o, t), loss = mean log(1 + e^gap) (= lse - t, exact however small)."""
    other = others.logsumexp(0)  # (N,)
    gap, lse = other - t, torch.logaddexp(other, t)
    return gap, lse, torch.logaddexp(gap, torch.zeros_like(gap)).sum() / t.shape[0]


def returned_loss(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The loss as a sharded Function returns it: float32 (the compute dtype) under
    autocast, as the single-device path does, else in the embeddings' dtype."""
    return loss if torch.is_autocast_enabled(x.device.type) else loss.to(x.dtype)


class ShardedMarginCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, embeddings, weight, local_target, layout, scale, margin, group, block_size,
                impl):
        triton = use_triton(impl, weight)
        with torch.autocast(embeddings.device.type, enabled=False):
            acc = compute_dtype(embeddings.dtype)
            x_hat, _ = unit_rows(gather_rows(embeddings, layout.sizes, group).to(acc))  # (N, D)
            n = layout.total
            t, dpsi = _target_logits(x_hat, weight, local_target, scale, margin)
            r = torch.full((n,), scale, dtype=acc, device=x_hat.device)  # (N,)
            other = other_logsumexp(x_hat, weight, local_target, t, r, block_size, triton)
            partial = torch.cat([other.to(acc), t])  # (2N,): t is 0 where another rank owns it
            table = all_gather_stack(partial, group)  # (W, 2N), the same on every rank
            gap, lse, loss = global_loss(table[:, :n], table[:, n:].sum(0))
        ctx.save_for_backward(embeddings, weight, local_target, x_hat, t, dpsi, lse, gap)
        ctx.layout, ctx.scale, ctx.group, ctx.block_size = layout, scale, group, block_size
        ctx.triton = triton
        return returned_loss(loss, embeddings)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        embeddings, weight, local_target, x_hat, t, dpsi, lse, gap = ctx.saved_tensors
        layout, group = ctx.layout, ctx.group
        with torch.autocast(grad_output.device.type, enabled=False):
            n = layout.total
            r = torch.full((n,), ctx.scale, dtype=x_hat.dtype, device=x_hat.device)
            row_grad = (grad_output.to(x_hat.dtype) / n).expand(n)  # (N,)
            d_x_hat, d_weight, _ = shard_share(x_hat, weight, local_target, t, dpsi, r, lse, gap,
                                               row_grad, ctx.block_size, ctx.triton)
            d_x_hat = d_x_hat.to(x_hat.dtype)
            d_embeddings = None
            if layout.embeddings_need_grad:  # the same decision on every rank
                rank, world = rank_and_world_size(group)
                d_mine = reduce_scatter_rows(d_x_hat, layout.sizes, group)  # (n_r, D)
                start = sum(layout.sizes[:rank])
                mine = slice(start, start + layout.sizes[rank])
                norm = embeddings.to(x_hat.dtype).norm(dim=1)  # (n_r,)
                d_embeddings = unit_rows_backward(d_mine, x_hat[mine], norm) * world
                d_embeddings = d_embeddings.to(embeddings.dtype)
        if not ctx.needs_input_grad[0]:
            d_embeddings = None
        return d_embeddings, d_weight, None, None, None, None, None, None, None


def sharded_margin_cross_entropy(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    local_target: torch.Tensor,
    layout: BatchLayout,
    scale: float,
    margin: Margin,
    group=None,
    block_size: int | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """The global mean loss (a scalar, the same on every rank). embeddings (n_r, D) this
    rank's rows; weight (C_r, D) this rank's classes; local_target (N,) the row of each
    global sample's class in ``weight``, or -1 where another rank owns it. impl: the shard
    primitives, "auto", "chunked" (block_size: classes per tile) or "triton"."""
    return ShardedMarginCrossEntropy.apply(
        embeddings, weight, local_target, layout, scale, margin, group, block_size, impl
    )
