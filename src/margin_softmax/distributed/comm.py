"""The collectives the sharded head needs, all of which also work without a process group
(world size 1: no torch.distributed call at all, so no NCCL, GPU or init is needed).

Ranks may hold different numbers of rows. Rows travel through a padded (W, n_max, ...)
buffer, because gloo's all_gather needs equal sizes; the global batch is the concatenation
of every rank's rows in rank order.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world_size(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """(rank, world_size) in ``group``; (0, 1) when torch.distributed is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise ValueError("a process group was given but torch.distributed is not initialised")
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def all_gather_stack(x: torch.Tensor, group=None) -> torch.Tensor:
    """(W, *x.shape): every rank's ``x`` (equal shapes), in rank order. No gradient."""
    _, world = rank_and_world_size(group)
    if world == 1:
        return x[None]
    out = x.new_empty((world, *x.shape))
    dist.all_gather(list(out.unbind(0)), x.contiguous(), group=group)
    return out


def all_gather_objects(obj, group=None) -> list:
    """[obj of rank 0, obj of rank 1, ...] for any picklable ``obj``."""
    _, world = rank_and_world_size(group)
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj, group=group)
    return out


def object_gather(group=None):
    """obj -> [every rank's obj] over ``group``: all_gather_objects, with no collective at all
    at world size 1."""
    return lambda obj: all_gather_objects(obj, group)


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] == rows:
        return x.contiguous()
    pad = x.new_zeros((rows - x.shape[0], *x.shape[1:]))
    return torch.cat([x, pad])


def _unpad(padded: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """(W, n_max, ...) -> (sum(sizes), ...): rank r's first sizes[r] rows, in rank order."""
    return torch.cat([padded[r, :n] for r, n in enumerate(sizes)])


def gather_rows(x: torch.Tensor, sizes: list[int], group=None) -> torch.Tensor:
    """(sum(sizes), ...): the rows of every rank, in rank order; rank r holds sizes[r] rows.
    No gradient (the sharded loss routes it back with reduce_scatter_rows)."""
    _, world = rank_and_world_size(group)
    if world == 1:
        return x
    padded = all_gather_stack(_pad_rows(x, max(sizes)), group)  # (W, n_max, ...)
    return _unpad(padded, sizes)  # (N, ...)


def reduce_scatter_rows(x: torch.Tensor, sizes: list[int], group=None) -> torch.Tensor:
    """The inverse of gather_rows for gradients: x (sum(sizes), ...) holds this rank's
    contribution for every row; returns (sizes[rank], ...), the sum over ranks of the
    contributions for this rank's own rows."""
    rank, world = rank_and_world_size(group)
    if world == 1:
        return x
    rows = max(sizes)
    padded = [_pad_rows(part, rows) for part in x.split(sizes)]  # W x (n_max, ...)
    out = padded[rank].new_empty(padded[rank].shape)
    dist.reduce_scatter(out, padded, group=group)  # sum over ranks
    return out[: sizes[rank]]
