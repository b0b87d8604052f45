"""The inverse row norms of the class centres, inv_j = 1 / max(|w_j|, eps) (C,) float32,
as torch.nn.functional.normalize uses them. The kernels scale dot products by inv instead of
reading a normalised copy of W. Each program owns BLOCK_R rows and walks D in BLOCK_D steps.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..numerics import NORM_EPS

BLOCK_R = 16
BLOCK_D = 128


@triton.jit
def row_inv_norm_kernel(W, INV, C, D, stride_wc, stride_wd, EPS: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < C
    base = W + rows.to(tl.int64)[:, None] * stride_wc  # (BLOCK_R, 1) pointers
    sum_sq = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_D):
        ks = k0 + tl.arange(0, BLOCK_D)
        w = tl.load(base + ks[None, :] * stride_wd, mask=row_ok[:, None] & (ks < D)[None, :],
                    other=0.0).to(tl.float32)  # (BLOCK_R, BLOCK_D)
        sum_sq += tl.sum(w * w, axis=1)
    tl.store(INV + rows, 1.0 / tl.maximum(tl.sqrt(sum_sq), EPS), mask=row_ok)


def row_inv_norms(weight: torch.Tensor) -> torch.Tensor:
    """1 / max(|w_j|, eps) (C,) float32, reading weight (C, D) once in its own dtype."""
    num_classes, dim = weight.shape
    inv = torch.empty(num_classes, device=weight.device, dtype=torch.float32)
    grid = (triton.cdiv(num_classes, BLOCK_R),)
    row_inv_norm_kernel[grid](weight, inv, num_classes, dim, weight.stride(0), weight.stride(1),
                              EPS=NORM_EPS, BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D)
    return inv
