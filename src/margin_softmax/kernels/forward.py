"""Kernel 1: one pass over the classes gives everything the loss and dL/dx need.

For each row i, over the non-target classes j != y_i, with l_ij = r_i * cos_ij and
q_ij = softmax over those classes of l_ij:

    lse_other_i = log sum_{j != y_i} exp(l_ij)                     # (N,)
    cbar_i      = sum_{j != y_i} q_ij cos_ij                       # (N,)   for dL/dr
    v_i         = sum_{j != y_i} q_ij w_hat_j                      # (N, D) for dL/dx_hat

The target column is left out (set to -inf in its tile) and added back on the host with
logaddexp, so lse - l_iy = softplus(lse_other - l_iy) keeps its precision when p_iy -> 1,
and the kernel never sees the margin. v is flash-attention's output with x_hat as the
queries and W as both keys and values: dL/dx_hat_i = g_i r_i (1 - p_iy) (v_i - psi'_i w_hat_y),
so no second pass over the classes is needed for dx.

Grid: (row blocks, class splits). A program walks its share of the classes in BLOCK_C
blocks with an online max and writes partials (split, N[, D]) that the host combines (a few
MiB: splits x N x D float32). Each logit tile is either K-looped over D (x and W in BLOCK_K
chunks, pipelined) or, if RESIDENT, one dot of the program's resident x tile with a whole W
tile; v accumulates in two DV/2 halves (docs/triton.md, "Tiles and tuning").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import autotune, class_splits, dot_precision, padded_dim, upcast_dots
from .tiles import cosine_tile, dot_acc, load_half

MAX_INIT = tl.constexpr(-1.0e30)  # finite start for the running max: no inf - inf in the rescale


@autotune(["DV", "WITH_V"], accumulator="BLOCK_N", operand="BLOCK_C", flag="WITH_V")
@triton.jit
def lse_kernel(
    X, W, INV, R, Y, M, S, T, V, N, C, D,
    stride_xn, stride_xd, stride_wc, stride_wd,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, RESIDENT: tl.constexpr,
    DV: tl.constexpr, WITH_COS_MEAN: tl.constexpr, WITH_V: tl.constexpr, INV_CAP: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    r = tl.load(R + rows, mask=row_ok, other=0.0)  # (BLOCK_N,)
    y = tl.load(Y + rows, mask=row_ok, other=-1)

    if RESIDENT:  # the whole x tile stays on chip for the program's lifetime, in halves
        x_lo = load_half(X, rows, N, D, stride_xn, stride_xd, 0, DV)  # (BLOCK_N, DV/2)
        x_hi = load_half(X, rows, N, D, stride_xn, stride_xd, 1, DV)

    blocks_per_split = tl.cdiv(tl.cdiv(C, BLOCK_C), tl.num_programs(1))
    start = split * blocks_per_split * BLOCK_C
    stop = tl.minimum(start + blocks_per_split * BLOCK_C, C)
    m = tl.full((BLOCK_N,), MAX_INIT, dtype=tl.float32)  # running max
    s = tl.zeros((BLOCK_N,), dtype=tl.float32)  # sum exp(l - m)
    t = tl.zeros((BLOCK_N,), dtype=tl.float32)  # sum exp(l - m) cos
    v_lo = tl.zeros((BLOCK_N, DV // 2), dtype=tl.float32)  # sum exp(l - m) w_hat, 1st half
    v_hi = tl.zeros((BLOCK_N, DV // 2), dtype=tl.float32)  # 2nd (both dropped without v)
    for c0 in range(start, stop, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        inv = tl.load(INV + cols, mask=cols < stop, other=0.0)  # (BLOCK_C,)
        if RESIDENT:  # whole (BLOCK_C, DV) tiles of W in halves, pipelined over the classes
            w_lo = load_half(W, cols, stop, D, stride_wc, stride_wd, 0, DV)  # (BLOCK_C, DV/2)
            w_hi = load_half(W, cols, stop, D, stride_wc, stride_wd, 1, DV)
            cos = dot_acc(x_lo, tl.trans(w_lo), tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32),
                          UPCAST, PRECISION)
            cos = dot_acc(x_hi, tl.trans(w_hi), cos, UPCAST, PRECISION) * inv[None, :]
        else:  # K-loop over D, pipelined; x re-read in chunks from L2
            cos = cosine_tile(X, W, INV, rows, cols, N, stop, D, stride_xn, stride_xd,
                              stride_wc, stride_wd, BLOCK_N, BLOCK_C, BLOCK_K, UPCAST,
                              PRECISION)
        live = (cols[None, :] < stop) & (cols[None, :] != y[:, None])
        logits = tl.where(live, r[:, None] * cos, float("-inf"))
        m_new = tl.maximum(m, tl.max(logits, axis=1))
        alpha = tl.exp(m - m_new)
        e = tl.exp(logits - m_new[:, None])  # (BLOCK_N, BLOCK_C), 0 where not live
        s = s * alpha + tl.sum(e, axis=1)
        if WITH_COS_MEAN:
            t = t * alpha + tl.sum(e * cos, axis=1)
        if WITH_V:  # e * inv weighs the raw rows of W; INV_CAP keeps float16 finite
            weights = (e * tl.minimum(inv, INV_CAP)[None, :]).to(W.dtype.element_ty)
            if not RESIDENT:  # W's tile, re-read from L2 in two (BLOCK_C, DV/2) halves
                w_lo = load_half(W, cols, stop, D, stride_wc, stride_wd, 0, DV)
            v_lo = dot_acc(weights, w_lo, v_lo * alpha[:, None], UPCAST, PRECISION)
            if not RESIDENT:
                w_hi = load_half(W, cols, stop, D, stride_wc, stride_wd, 1, DV)
            v_hi = dot_acc(weights, w_hi, v_hi * alpha[:, None], UPCAST, PRECISION)
        m = m_new
    out = split * N + rows
    tl.store(M + out, m, mask=row_ok)
    tl.store(S + out, s, mask=row_ok)
    if WITH_COS_MEAN:
        tl.store(T + out, t, mask=row_ok)
    if WITH_V:
        ds = tl.arange(0, DV // 2)
        v_out = V + out.to(tl.int64)[:, None] * D + ds[None, :]
        tl.store(v_out, v_lo, mask=row_ok[:, None] & (ds < D)[None, :])
        tl.store(v_out + DV // 2, v_hi, mask=row_ok[:, None] & (ds + DV // 2 < D)[None, :])


def non_target_softmax(x: torch.Tensor, weight: torch.Tensor, inv: torch.Tensor,
                       r: torch.Tensor, labels: torch.Tensor, with_cos_mean: bool,
                       with_v: bool):
    """(lse_other (N,), cbar (N,) or None, v (N, D) or None), all float32. x (N, D) and
    weight (C, D) in one dtype, inv (C,) and r (N,) float32, labels (N,) int64."""
    n, dim = x.shape
    num_classes = weight.shape[0]
    splits = class_splits(x.device, n, num_classes, with_v)
    m, s, t = torch.empty(3, splits, n, device=x.device, dtype=torch.float32)
    v = torch.empty(splits if with_v else 0, n, dim, device=x.device, dtype=torch.float32)
    inv_cap = 2.0**15 if weight.dtype == torch.float16 else 3.0e38
    lse_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), splits)](
        x, weight, inv, r, labels, m, s, t, v, n, num_classes, dim,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
        DV=padded_dim(dim), WITH_COS_MEAN=with_cos_mean, WITH_V=with_v, INV_CAP=inv_cap,
        UPCAST=upcast_dots(weight.dtype), PRECISION=dot_precision(weight.dtype),
    )
    m_all = m.max(dim=0).values  # (N,)
    rescale = torch.exp(m - m_all)  # (splits, N)
    total = (s * rescale).sum(dim=0)  # (N,); 0 when C == 1
    lse_other = m_all + torch.log(total)  # -inf when C == 1
    denominator = total.clamp_min(torch.finfo(torch.float32).tiny)
    cbar = (t * rescale).sum(dim=0) / denominator if with_cos_mean else None
    if with_v:
        v = torch.einsum("kn,knd->nd", rescale, v) / denominator[:, None]  # (N, D)
    return lse_other, cbar, (v if with_v else None)
