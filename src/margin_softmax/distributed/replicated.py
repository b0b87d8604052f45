"""Autograd across ranks for a loss that every rank computes in full from gathered values.

The per-sample heads split each step's work two ways. Some of it is *partitioned*: a rank
does it for its own classes only (the target cosines of the classes it owns, its shard's
log-sum-exp). The rest is *replicated*: every rank repeats it on the same gathered values
(a target logit from the N target cosines and norms, the heads' running state, MagFace's
regulariser), so every rank holds the same loss. The global loss L is that one value, and
its gradient must count each piece of work once:

- a partitioned contribution to a gathered row is summed over the ranks (reduce-scatter);
- a replicated contribution is already the whole gradient on every rank: each rank keeps
  its own rows of it, not the sum over ranks (that would count it world_size times);
- a partitioned value made whole by a sum over ranks (each rank fills its own entries,
  zeros elsewhere) passes the replicated gradient through unchanged.
"""

from __future__ import annotations

import torch

from .comm import all_gather_stack, gather_rows, rank_and_world_size, reduce_scatter_rows


class _GatherTwice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes, group):
        ctx.sizes, ctx.group = sizes, group
        gathered = gather_rows(x, sizes, group)  # (N, D)
        return gathered, gathered.clone()

    @staticmethod
    def backward(ctx, d_replicated, d_partitioned):
        rank, world = rank_and_world_size(ctx.group)
        start = sum(ctx.sizes[: rank])
        mine = slice(start, start + ctx.sizes[rank])
        if d_partitioned is None:  # every rank still takes part in the collective
            d_partitioned = torch.zeros_like(d_replicated)
        grad = reduce_scatter_rows(d_partitioned, ctx.sizes, ctx.group)  # (n_r, D)
        if d_replicated is not None:
            grad = grad + d_replicated[mine]
        return grad * world, None, None


def gather_twice(x: torch.Tensor, sizes: list[int], group=None):
    """(replicated, partitioned): every rank's rows (N, D), in rank order, twice, with the
    gradient rules of the module doc. The gradient returned for x is world_size times
    dL/dx: a backbone wrapped in DistributedDataParallel averages over the ranks, so it then
    receives the gradient of the global mean loss."""
    return _GatherTwice.apply(x, sizes, group)


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return all_gather_stack(x, group).sum(0)  # rank order: the same sum on every rank

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def sum_over_ranks(x: torch.Tensor, group=None) -> torch.Tensor:
    """The sum over ranks of x (equal shapes), the same on every rank; its gradient is passed
    to x unchanged (the caller's use of the sum is replicated)."""
    return _SumOverRanks.apply(x, group)
