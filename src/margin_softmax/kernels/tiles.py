"""Tile helpers shared by the kernels."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_half(ptr, rows, num_rows, dim, stride_row, stride_col, HALF: tl.constexpr,
              DV: tl.constexpr):
    """Columns [HALF DV/2, (HALF + 1) DV/2) (HALF 0 or 1) of rows ``rows`` of a (num_rows, dim)
    matrix: (len(rows), DV/2), zeros outside. The products over all of D run in two halves
    so that a whole operand tile never passes through registers at once (ptxas spills)."""
    cols = tl.arange(0, DV // 2) + HALF * (DV // 2)
    mask = (rows < num_rows)[:, None] & (cols < dim)[None, :]
    offsets = rows.to(tl.int64)[:, None] * stride_row + cols[None, :] * stride_col
    return tl.load(ptr + offsets, mask=mask, other=0.0)


@triton.jit
def dot_acc(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ b in float32. UPCAST is for the CPU interpreter only, whose tl.dot
    multiplies the raw bit patterns of bfloat16 operands (triton 3.9)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def cosine_tile(X, W, INV, rows, cols, num_rows, num_cols, dim, stride_xn, stride_xd,
                stride_wc, stride_wd, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """cos = (x[rows] . w[cols]^T) * inv[cols]  (BLOCK_N, BLOCK_C) float32, zero outside.
    A K-loop over D in BLOCK_K chunks of both operands, which Triton software-pipelines
    (num_stages), so no operand needs all of D in shared memory at once."""
    ks = tl.arange(0, BLOCK_K)
    x_ptr = X + rows.to(tl.int64)[:, None] * stride_xn + ks[None, :] * stride_xd
    w_ptr = W + cols.to(tl.int64)[:, None] * stride_wc + ks[None, :] * stride_wd
    row_ok = (rows < num_rows)[:, None]
    col_ok = (cols < num_cols)[:, None]
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for k0 in range(0, dim, BLOCK_K):
        k_ok = (k0 + ks < dim)[None, :]
        x = tl.load(x_ptr, mask=row_ok & k_ok, other=0.0)  # (BLOCK_N, BLOCK_K)
        w = tl.load(w_ptr, mask=col_ok & k_ok, other=0.0)  # (BLOCK_C, BLOCK_K)
        acc = dot_acc(x, tl.trans(w), acc, UPCAST, PRECISION)
        x_ptr += BLOCK_K * stride_xd
        w_ptr += BLOCK_K * stride_wd
    inv = tl.load(INV + cols, mask=cols < num_cols, other=0.0)  # (BLOCK_C,)
    return acc * inv[None, :]
