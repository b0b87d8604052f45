"""Kernel 2 of the GEMM schedule: the gradient of the logits for one chunk of classes, as a
plain GEMM tile with the softmax-gradient epilogue. With G = dL/dcos (N, C):

    G_ij = g_i r_i exp(r_i cos_ij - lse_i)           j != y_i
    G_iy = t_i = g_i r_i (p_iy - 1) psi'(cos_iy)      (computed on the host, (N,))
    H_ij = G_ij * inv_j                               written for classes [c0, c1)

H is what the two cuBLAS products of gradients.py need: H W = dL/dx_hat (the raw rows of W
times inv are w_hat) and H^T x_hat = inv_j dL/dw_hat_j. Grid: (row blocks, class blocks of
the chunk), rows fastest, so the programs that share a tile of W run together and read it
from L2. Each program computes one (BLOCK_N, BLOCK_C) logit tile with a pipelined K-loop
over D (tiles.cosine_tile): no accumulator but the tile's own, so tiles as wide as a
GEMM's fit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import dot_precision, gemm_autotune, upcast_dots
from .tiles import cosine_tile


@gemm_autotune(["D"])
@triton.jit
def gradient_tile_kernel(
    X, W, INV, R, Y, LSE, GR, TGT, H, N, C0, C1, D,
    stride_xn, stride_xd, stride_wc, stride_wd, stride_hn,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """GR = g * r and TGT = t, both (N,) float32; H (N, >= C1 - C0), column j - C0 for
    class j, in the matmul dtype."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = C0 + tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < N
    col_ok = cols < C1
    cos = cosine_tile(X, W, INV, rows, cols, N, C1, D, stride_xn, stride_xd, stride_wc,
                      stride_wd, BLOCK_N, BLOCK_C, BLOCK_K, UPCAST, PRECISION)
    r = tl.load(R + rows, mask=row_ok, other=0.0)  # (BLOCK_N,)
    y = tl.load(Y + rows, mask=row_ok, other=-1)
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    gr = tl.load(GR + rows, mask=row_ok, other=0.0)
    tgt = tl.load(TGT + rows, mask=row_ok, other=0.0)
    inv = tl.load(INV + cols, mask=col_ok, other=0.0)  # (BLOCK_C,)
    g = tl.where(cols[None, :] == y[:, None], tgt[:, None],
                 gr[:, None] * tl.exp(r[:, None] * cos - lse[:, None]))  # (BLOCK_N, BLOCK_C)
    h = g * inv[None, :]
    out = H + rows.to(tl.int64)[:, None] * stride_hn + (cols - C0)[None, :]
    tl.store(out, h.to(H.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def gradient_tile(x: torch.Tensor, weight: torch.Tensor, inv: torch.Tensor, r: torch.Tensor,
                  labels: torch.Tensor, lse: torch.Tensor, row_grad_r: torch.Tensor,
                  target_grad: torch.Tensor, start: int, stop: int, out: torch.Tensor) -> None:
    """out (N, stop - start) <- H for the classes [start, stop). x (N, D), weight (C, D) in
    one dtype; inv (C,), r, lse, row_grad_r = g * r, target_grad = t (N,) float32; labels
    (N,) int64; out in the matmul dtype, rows contiguous."""
    n, dim = x.shape

    def grid(meta):
        return triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(stop - start, meta["BLOCK_C"])

    gradient_tile_kernel[grid](
        x, weight, inv, r, labels, lse, row_grad_r, target_grad, out, n, start, stop, dim,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), out.stride(0),
        UPCAST=upcast_dots(weight.dtype), PRECISION=dot_precision(weight.dtype),
    )
