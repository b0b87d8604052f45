"""Tile helpers shared by the kernels."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_rows(ptr, rows, num_rows, dim, stride_row, stride_col, DV: tl.constexpr):
    """Rows ``rows`` of a (num_rows, dim) matrix, all of dim padded to DV: (len(rows), DV)
    in the matrix's dtype, zeros outside. Row offsets in int64 (C * D may pass 2**31)."""
    cols = tl.arange(0, DV)
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
