"""The backward of the GEMM schedule: dL/dx_hat and dL/dW in chunks of classes.

For each chunk [c0, c1) of about CHUNK_BYTES of H (gradient_tiles.py):

    H      = G * inv                 (N, T)  kernel: logit tile + softmax-gradient epilogue
    dx_hat += H W[c0:c1]             (N, D)  cuBLAS, float32 out
    A      = H^T x_hat               (T, D)  cuBLAS, float32 out; A_j = inv_j dL/dw_hat_j
    dL/dw_j = A_j - inv_j^2 <w_j, A_j> w_j   kernel (the normalisation backward; none where
                                              |w_j| <= eps, as F.normalize)

Two of the four N x D x C products (forward logits, backward logits, H W, H^T x_hat) run
in cuBLAS and the two logit products are GEMM tiles with no (BLOCK, D) accumulator, unlike
the fused schedule (forward.py's v, backward.py). Memory beyond the inputs and dW: H and A
for one chunk (CHUNK_BYTES each at D = 512, 3% of W + dW at 1024 x 512 x 1M bf16),
independent of C. Half inputs: H in bfloat16 (as the fused kernels round G for their dot) or,
for float16, float32 (G * inv can pass 65504); A is float32 so that dW is rounded once. The
target cells, which carry most of dW at small scales, stay out of H (0 there) and are added
in float32 as rank-one terms: t_i inv_y w_y to dL/dx_hat_i, t_i inv_y x_hat_i to A_y.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..chunked.tiles import matmul_dtype
from ..numerics import NORM_EPS
from .gradient_tiles import gradient_tile

CHUNK_BYTES = 32 << 20  # H (N, T) of one chunk; A (T, D) float32 is as large at D = N / 2
ROWS_PER_PROGRAM = 8  # (8, 512) float32 tiles of A and W: ~108 registers, no spills (sm_90a)


@triton.jit
def unit_rows_grad_kernel(A, W, INV, OUT, T, D, stride_a, stride_wc, stride_wd, stride_o,
                          EPS: tl.constexpr, BLOCK: tl.constexpr, DV: tl.constexpr):
    """OUT[j] = A[j] - inv_j^2 <W[j], A[j]> W[j] for BLOCK rows (the radial part only where
    |w_j| > eps, i.e. inv_j * eps < 1); A float32, OUT in W's dtype."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, DV)
    mask = (rows < T)[:, None] & (cols < D)[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    a = tl.load(A + rows64 * stride_a + cols[None, :], mask=mask, other=0.0)
    w = tl.load(W + rows64 * stride_wc + cols[None, :] * stride_wd, mask=mask,
                other=0.0).to(tl.float32)
    inv = tl.load(INV + rows, mask=rows < T, other=0.0)
    radial = tl.where(inv * EPS < 1.0, inv * inv * tl.sum(w * a, axis=1), 0.0)  # (BLOCK,)
    out = a - radial[:, None] * w
    tl.store(OUT + rows64 * stride_o + cols[None, :], out.to(OUT.dtype.element_ty), mask=mask)


@functools.cache
def _float32_products(device: torch.device) -> bool:
    """Whether torch.mm takes out_dtype=float32 for 16-bit inputs here (CUDA, torch >= 2.8),
    probed on operands laid out as the chunks' are (a transposed view, a strided slice) and
    checked for the right value."""
    if device.type != "cuda":
        return False
    m = torch.ones(4, 8, device=device, dtype=torch.bfloat16)
    try:
        product = torch.mm(m[:, :2].t(), m[:, :3], out_dtype=torch.float32)  # (2, 3)
    except Exception:  # a probe: any refusal (older torch, another backend) means no
        return False
    return product.dtype == torch.float32 and bool((product == 4).all())


def mm_float32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in float32, products of 16-bit inputs accumulated and returned in float32 (cuBLAS
    with out_dtype; elsewhere, i.e. the CPU interpreter or torch < 2.8, float32 copies)."""
    if a.dtype == torch.float32:
        return torch.mm(a, b)
    if _float32_products(a.device):
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.float(), b.float())


def chunk_classes(n: int, num_classes: int, itemsize: int) -> int:
    """Classes per chunk: H (n, T) about CHUNK_BYTES, T a multiple of 16, at most C."""
    per_chunk = max(16, CHUNK_BYTES // (max(n, 1) * itemsize) // 16 * 16)
    return max(1, min(per_chunk, num_classes))


def gradients(x: torch.Tensor, weight: torch.Tensor, inv: torch.Tensor, r: torch.Tensor,
              labels: torch.Tensor, lse: torch.Tensor, row_grad_r: torch.Tensor,
              target_grad: torch.Tensor, want_dx: bool, want_dw: bool):
    """(dL/dx_hat (N, D) float32 or None, dL/dW (C, D) in weight's dtype or None). x (N, D)
    and weight (C, D) in one dtype; inv (C,), r, lse, row_grad_r = g * r, target_grad = t
    (N,) float32; labels (N,) int64."""
    n, dim = x.shape
    num_classes = weight.shape[0]
    mm = matmul_dtype(weight.dtype)
    x_mm = x.to(mm)
    width = chunk_classes(n, num_classes, torch.finfo(mm).bits // 8)
    h_store = torch.empty(n, width, device=x.device, dtype=mm)
    dx = torch.zeros(n, dim, device=x.device, dtype=torch.float32) if want_dx else None
    dw = weight.new_empty(weight.shape) if want_dw else None  # contiguous
    # The target cells, H_iy = t_i inv_y, carry most of dW's norm: added in float32 as
    # rank-one terms, not rounded into a 16-bit H (which doubled dW's error against eager's
    # at small scales). The tiles get 0 there.
    owned = labels >= 0  # (N,): -1, a target on another shard
    y = labels.clamp_min(0)
    h_target = torch.where(owned, target_grad * inv[y], 0.0)  # (N,) float32
    if want_dx:
        dx += h_target[:, None] * weight[y].float()
    no_target, x_f32 = torch.zeros_like(target_grad), x.float()
    for start in range(0, num_classes, width):
        stop = min(start + width, num_classes)
        h = h_store[:, : stop - start]  # (N, T)
        gradient_tile(x, weight, inv, r, labels, lse, row_grad_r, no_target, start, stop, h)
        w = weight[start:stop].to(mm)  # (T, D); a copy only for float16
        if want_dx:
            dx += mm_float32(h, w)
        if want_dw:  # A in float32: rounded to bfloat16 before the projection, dW's error
            a = mm_float32(h.t(), x_mm)  # (T, D)    was 1.5x eager's (single rounding: 1x)
            here = (y >= start) & (y < stop) & owned  # (N,) targets in this chunk, no sync
            a.index_add_(0, (y - start).clamp(0, stop - start - 1),
                         torch.where(here, h_target, 0.0)[:, None] * x_f32)
            grid = (triton.cdiv(stop - start, ROWS_PER_PROGRAM),)
            unit_rows_grad_kernel[grid](
                a, weight[start:], inv[start:], dw[start:], stop - start, dim, a.stride(0),
                weight.stride(0), weight.stride(1), dw.stride(0), EPS=NORM_EPS,
                BLOCK=ROWS_PER_PROGRAM, DV=triton.next_power_of_2(dim),
            )
    return dx, dw
