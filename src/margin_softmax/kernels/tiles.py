"""Tile helpers shared by the kernels: one (BLOCK_N, BLOCK_C) tile of raw dot products.

A tile is x_hat[rows] . w[cols]^T summed over D in BLOCK_K steps, operands in the input dtype
(bf16/fp16 on tensor cores), accumulated in float32. The caller scales it by inv_norm[cols]
to get cosines; W is never normalised in memory.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def dot_acc(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ b in float32. UPCAST is for the CPU interpreter only, whose tl.dot
    multiplies the raw bit patterns of bfloat16 operands (triton 3.9)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def tile_dots(
    X, W, rows, cols, N, C, D,
    stride_xn, stride_xd, stride_wc, stride_wd,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """x[rows] . w[cols]^T over all of D: (BLOCK_N, BLOCK_C) float32. rows/cols out of
    range load zeros (their dots are 0). Offsets in int64: C * D may pass 2**31."""
    row_ok = rows < N
    col_ok = cols < C
    x_rows = X + rows.to(tl.int64)[:, None] * stride_xn  # (BLOCK_N, 1) pointers
    w_rows = W + cols.to(tl.int64)[:, None] * stride_wc  # (BLOCK_C, 1) pointers
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < D
        x = tl.load(x_rows + ks[None, :] * stride_xd, mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0)  # (BLOCK_N, BLOCK_K)
        w = tl.load(w_rows + ks[None, :] * stride_wd, mask=col_ok[:, None] & k_ok[None, :],
                    other=0.0)  # (BLOCK_C, BLOCK_K)
        acc = dot_acc(x, tl.trans(w), acc, UPCAST, PRECISION)
    return acc
