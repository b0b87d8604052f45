"""Row normalisation of the class centres, forward and backward, without a normalised copy.

    inv_j  = 1 / max(|w_j|, eps)                                    # (C,) float32
    dL/dw_j = inv_j * (g_j - w_hat_j <w_hat_j, g_j>),  w_hat_j = w_j * inv_j

where g_j = dL/dw_hat_j. Where |w_j| <= eps, w_hat = w / eps and dL/dw_j = g_j / eps, as
torch.nn.functional.normalize gives. Each program owns BLOCK_R rows and walks D in BLOCK_D
steps (twice for the backward: the dot, then the write), so any D fits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..functional import NORM_EPS

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


@triton.jit
def weight_grad_kernel(W, INV, G, OUT, C, D, stride_wc, stride_wd, stride_gc, stride_oc,
                       EPS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """OUT[j] = inv_j * (G[j] - w_hat_j <w_hat_j, G[j]>) for the C rows of G (float32).
    OUT may be G itself: each element is read before it is written, by the same program."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < C
    w_base = W + rows.to(tl.int64)[:, None] * stride_wc
    g_base = G + rows.to(tl.int64)[:, None] * stride_gc
    o_base = OUT + rows.to(tl.int64)[:, None] * stride_oc
    inv = tl.load(INV + rows, mask=row_ok, other=0.0)  # (BLOCK_R,)
    w_dot_g = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_D):
        ks = k0 + tl.arange(0, BLOCK_D)
        mask = row_ok[:, None] & (ks < D)[None, :]
        w = tl.load(w_base + ks[None, :] * stride_wd, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_base + ks[None, :], mask=mask, other=0.0)
        w_dot_g += tl.sum(w * g, axis=1)
    # <w_hat, g> w_hat = inv^2 <w, g> w; no projection where |w| <= eps (inv == 1/eps)
    proj = tl.where(inv * EPS < 1.0, inv * inv * w_dot_g, 0.0)  # (BLOCK_R,)
    for k0 in range(0, D, BLOCK_D):
        ks = k0 + tl.arange(0, BLOCK_D)
        mask = row_ok[:, None] & (ks < D)[None, :]
        w = tl.load(w_base + ks[None, :] * stride_wd, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_base + ks[None, :], mask=mask, other=0.0)
        out = inv[:, None] * (g - proj[:, None] * w)
        tl.store(o_base + ks[None, :], out.to(OUT.dtype.element_ty), mask=mask)


def row_inv_norms(weight: torch.Tensor) -> torch.Tensor:
    """1 / max(|w_j|, eps) (C,) float32, reading weight (C, D) once in its own dtype."""
    num_classes, dim = weight.shape
    inv = torch.empty(num_classes, device=weight.device, dtype=torch.float32)
    grid = (triton.cdiv(num_classes, BLOCK_R),)
    row_inv_norm_kernel[grid](weight, inv, num_classes, dim, weight.stride(0), weight.stride(1),
                              EPS=NORM_EPS, BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D)
    return inv


def normalized_weight_grad(weight: torch.Tensor, inv: torch.Tensor, grad_hat: torch.Tensor,
                           out: torch.Tensor) -> None:
    """out (C', D) = the gradient w.r.t. weight (C', D) given grad_hat (C', D) float32, the
    gradient w.r.t. the normalised rows. All row-major in D; out may be grad_hat."""
    num_classes, dim = weight.shape
    grid = (triton.cdiv(num_classes, BLOCK_R),)
    weight_grad_kernel[grid](weight, inv, grad_hat, out, num_classes, dim,
                             weight.stride(0), weight.stride(1), grad_hat.stride(0),
                             out.stride(0), EPS=NORM_EPS, BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D)
