"""Kernel 1: the log-sum-exp over the non-target logits, streamed over classes.

For each row i, with logits l_ij = r_i * cos_ij over the classes j != y_i:

    lse_other_i = log sum_{j != y_i} exp(l_ij)                      # (N,)
    cbar_i      = sum_{j != y_i} softmax_j(l_ij) * cos_ij            # (N,), for d/dr_i

The target column is left out of the stream (set to -inf in its tile) and added back on the
host with logaddexp, so the loss lse - l_iy = softplus(lse_other - l_iy) keeps its precision
when p_iy is near 1, and the kernel never sees the margin.

Grid: (row blocks, class splits). Each program walks the class blocks of its split with an
online (max, sum) per row and writes partial results (split, N); the host combines them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import class_splits, dot_precision, forward_blocks, upcast_dots
from .tiles import tile_dots

MAX_INIT = -1.0e30  # finite start for the running max: no inf - inf in the rescale


@triton.jit
def lse_partial_kernel(
    X, W, INV, R, Y, M, S, T, N, C, D,
    stride_xn, stride_xd, stride_wc, stride_wd,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
    WITH_COS_MEAN: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    row_block = tl.program_id(0)
    split = tl.program_id(1)
    splits = tl.num_programs(1)
    rows = row_block * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    r = tl.load(R + rows, mask=row_ok, other=0.0)  # (BLOCK_N,)
    y = tl.load(Y + rows, mask=row_ok, other=-1)

    blocks_per_split = tl.cdiv(tl.cdiv(C, BLOCK_C), splits)
    start = split * blocks_per_split * BLOCK_C
    stop = tl.minimum(start + blocks_per_split * BLOCK_C, C)
    m = tl.full((BLOCK_N,), MAX_INIT, dtype=tl.float32)  # running max
    s = tl.zeros((BLOCK_N,), dtype=tl.float32)  # sum exp(l - m)
    t = tl.zeros((BLOCK_N,), dtype=tl.float32)  # sum exp(l - m) * cos
    for c0 in range(start, stop, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        inv = tl.load(INV + cols, mask=cols < stop, other=0.0)
        cos = tile_dots(X, W, rows, cols, N, stop, D, stride_xn, stride_xd, stride_wc,
                        stride_wd, BLOCK_N, BLOCK_C, BLOCK_K, UPCAST, PRECISION)
        cos = cos * inv[None, :]  # (BLOCK_N, BLOCK_C)
        live = (cols[None, :] < stop) & (cols[None, :] != y[:, None])
        logits = tl.where(live, r[:, None] * cos, float("-inf"))
        m_new = tl.maximum(m, tl.max(logits, axis=1))
        alpha = tl.exp(m - m_new)
        e = tl.exp(logits - m_new[:, None])  # 0 where not live
        s = s * alpha + tl.sum(e, axis=1)
        if WITH_COS_MEAN:
            t = t * alpha + tl.sum(e * cos, axis=1)
        m = m_new
    out = split * N + rows
    tl.store(M + out, m, mask=row_ok)
    tl.store(S + out, s, mask=row_ok)
    if WITH_COS_MEAN:
        tl.store(T + out, t, mask=row_ok)


def non_target_lse(x: torch.Tensor, weight: torch.Tensor, inv: torch.Tensor, r: torch.Tensor,
                   labels: torch.Tensor, with_cos_mean: bool):
    """(lse_other (N,), cbar (N,) or None), float32. x (N, D) and weight (C, D) in one dtype,
    inv (C,) and r (N,) float32, labels (N,) int64."""
    n, dim = x.shape
    num_classes = weight.shape[0]
    b = forward_blocks(weight.dtype)
    row_blocks = triton.cdiv(n, b.n)
    splits = class_splits(x.device, row_blocks, triton.cdiv(num_classes, b.c))
    m, s, t = torch.empty(3, splits, n, device=x.device, dtype=torch.float32)  # partials
    lse_partial_kernel[(row_blocks, splits)](
        x, weight, inv, r, labels, m, s, t, n, num_classes, dim,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
        BLOCK_N=b.n, BLOCK_C=b.c, BLOCK_K=b.k, WITH_COS_MEAN=with_cos_mean,
        UPCAST=upcast_dots(weight.dtype), PRECISION=dot_precision(weight.dtype),
        num_warps=b.warps, num_stages=b.stages,
    )
    m_all = m.max(dim=0).values  # (N,)
    rescale = torch.exp(m - m_all)  # (splits, N)
    total = (s * rescale).sum(dim=0)  # (N,), 0 when C == 1
    lse_other = m_all + torch.log(total)  # -inf when C == 1
    if not with_cos_mean:
        return lse_other, None
    cbar = (t * rescale).sum(dim=0) / total.clamp_min(torch.finfo(torch.float32).tiny)
    return lse_other, cbar
