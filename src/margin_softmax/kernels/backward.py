"""Kernel 2: dL/dW, each program owning a block of classes. With G = dL/dcos (N, C):

    G_ij = g_i r_i exp(r_i cos_ij - lse_i)              j != y_i
    G_iy = t_i = g_i r_i (p_iy - 1) psi'(cos_iy)         (computed on the host, (N,))
    dL/dw_hat_j = sum_i G_ij x_hat_i                     # (C, D)
    dL/dw_j = inv_j (dL/dw_hat_j - w_hat_j <w_hat_j, dL/dw_hat_j>)

where g_i = dL/dloss_i. Grid: one program per BLOCK_C classes. It walks all rows in
BLOCK_N blocks (x_hat is small: it stays in L2), recomputes each logit tile with a pipelined
K-loop over D (tiles.cosine_tile), forms G in registers, reads the rows' whole x_hat tile
and accumulates G^T x_hat into a float32 (BLOCK_C, DV) tile; at the end it re-reads its W
tile, applies the normalisation backward in registers and
writes the gradient once, in the weight's dtype. Owning the rows of dW this way needs no
atomics, no float32 (C, D) buffer and no second pass over dW.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..numerics import NORM_EPS
from .config import autotune, dot_precision, padded_dim, upcast_dots
from .tiles import cosine_tile, dot_acc, load_half


@autotune(["DV"], accumulator="BLOCK_C", operand="BLOCK_N")
@triton.jit
def weight_grad_kernel(
    X, W, INV, R, Y, LSE, GR, TGT, DW, N, C, D,
    stride_xn, stride_xd, stride_wc, stride_wd, stride_dc,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, RESIDENT: tl.constexpr,
    DV: tl.constexpr, EPS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """GR = g * r and TGT = t, both (N,) float32; DW (C, D), row-major in D."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    inv = tl.load(INV + cols, mask=col_ok, other=0.0)  # (BLOCK_C,)
    if RESIDENT:  # the program's whole W tile stays on chip throughout, in halves
        w_lo = load_half(W, cols, C, D, stride_wc, stride_wd, 0, DV)  # (BLOCK_C, DV/2)
        w_hi = load_half(W, cols, C, D, stride_wc, stride_wd, 1, DV)
    grad_lo = tl.zeros((BLOCK_C, DV // 2), dtype=tl.float32)  # dL/dw_hat, first half of D
    grad_hi = tl.zeros((BLOCK_C, DV // 2), dtype=tl.float32)  # and second
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        r = tl.load(R + rows, mask=row_ok, other=0.0)
        y = tl.load(Y + rows, mask=row_ok, other=-1)
        lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
        gr = tl.load(GR + rows, mask=row_ok, other=0.0)
        tgt = tl.load(TGT + rows, mask=row_ok, other=0.0)
        if RESIDENT:  # x's whole tile in halves (BLOCK_N, DV/2), from L2
            x_lo = load_half(X, rows, N, D, stride_xn, stride_xd, 0, DV)
            x_hi = load_half(X, rows, N, D, stride_xn, stride_xd, 1, DV)
            cos = dot_acc(x_lo, tl.trans(w_lo), tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32),
                          UPCAST, PRECISION)
            cos = dot_acc(x_hi, tl.trans(w_hi), cos, UPCAST, PRECISION) * inv[None, :]
        else:  # K-loop over D, pipelined
            cos = cosine_tile(X, W, INV, rows, cols, N, C, D, stride_xn, stride_xd,
                              stride_wc, stride_wd, BLOCK_N, BLOCK_C, BLOCK_K, UPCAST,
                              PRECISION)
        g = tl.where(cols[None, :] == y[:, None], tgt[:, None],
                     gr[:, None] * tl.exp(r[:, None] * cos - lse[:, None]))
        g = tl.where(row_ok[:, None] & col_ok[None, :], g, 0.0)  # (BLOCK_N, BLOCK_C)
        g_t = tl.trans(g.to(X.dtype.element_ty))  # (BLOCK_C, BLOCK_N)
        if not RESIDENT:  # x's tile, re-read from L2 in two (BLOCK_N, DV/2) halves
            x_lo = load_half(X, rows, N, D, stride_xn, stride_xd, 0, DV)
        grad_lo = dot_acc(g_t, x_lo, grad_lo, UPCAST, PRECISION)
        if not RESIDENT:
            x_hi = load_half(X, rows, N, D, stride_xn, stride_xd, 1, DV)
        grad_hi = dot_acc(g_t, x_hi, grad_hi, UPCAST, PRECISION)

    # <w_hat, grad_hat> w_hat = inv^2 <w, grad_hat> w; no projection where |w| <= eps. One
    # half of W at a time (K-looped: read again per use, from L2), so that fewer registers
    # are live beside the accumulators
    if not RESIDENT:
        w_lo = load_half(W, cols, C, D, stride_wc, stride_wd, 0, DV)
    dot = tl.sum(w_lo.to(tl.float32) * grad_lo, axis=1)  # (BLOCK_C,)
    if not RESIDENT:
        w_hi = load_half(W, cols, C, D, stride_wc, stride_wd, 1, DV)
    dot += tl.sum(w_hi.to(tl.float32) * grad_hi, axis=1)
    proj = tl.where(inv * EPS < 1.0, inv * inv * dot, 0.0)
    ds = tl.arange(0, DV // 2)
    out = DW + cols.to(tl.int64)[:, None] * stride_dc + ds[None, :]
    if not RESIDENT:
        w_lo = load_half(W, cols, C, D, stride_wc, stride_wd, 0, DV)
    grad = inv[:, None] * (grad_lo - proj[:, None] * w_lo.to(tl.float32))  # (BLOCK_C, DV/2)
    tl.store(out, grad.to(DW.dtype.element_ty), mask=col_ok[:, None] & (ds < D)[None, :])
    if not RESIDENT:
        w_hi = load_half(W, cols, C, D, stride_wc, stride_wd, 1, DV)
    grad = inv[:, None] * (grad_hi - proj[:, None] * w_hi.to(tl.float32))
    tl.store(out + DV // 2, grad.to(DW.dtype.element_ty),
             mask=col_ok[:, None] & (ds + DV // 2 < D)[None, :])


def weight_grad(x: torch.Tensor, weight: torch.Tensor, inv: torch.Tensor, r: torch.Tensor,
                labels: torch.Tensor, lse: torch.Tensor, row_grad_r: torch.Tensor,
                target_grad: torch.Tensor) -> torch.Tensor:
    """dL/dweight (C, D) in weight.dtype. x (N, D), weight (C, D) in one dtype; inv (C,),
    r, lse, row_grad_r = g * r, target_grad = t (N,) float32; labels (N,) int64."""
    n, dim = x.shape
    num_classes = weight.shape[0]
    grad = torch.empty(num_classes, dim, device=weight.device, dtype=weight.dtype)
    weight_grad_kernel[lambda meta: (triton.cdiv(num_classes, meta["BLOCK_C"]),)](
        x, weight, inv, r, labels, lse, row_grad_r, target_grad, grad, n, num_classes, dim,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), grad.stride(0),
        DV=padded_dim(dim), EPS=NORM_EPS,
        UPCAST=upcast_dots(weight.dtype), PRECISION=dot_precision(weight.dtype),
    )
    return grad
