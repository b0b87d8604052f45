"""Kernel 2: the gradients, from recomputed logit tiles. With G = dL/dcos (N, C):

    G_ij = g_i r_i exp(r_i cos_ij - lse_i)              j != y_i
    G_iy = t_i = g_i r_i (p_iy - 1) psi'(cos_iy)         (computed on the host, (N,))
    dL/dx_hat = (G * inv) @ W                            # (N, D)
    dL/dw_hat = G^T @ x_hat                              # (C, D), then norms.weight_grad

where g_i = dL/dloss_i. Grid: one program per (row block, class block) tile. It recomputes
the tile's logits, forms G in registers, and walks D in BLOCK_K steps adding both products
with float32 atomics: dx_hat gets one add per class block, dw_hat one per row block.
Atomics rather than a split reduction because a program cannot hold a full-D gradient row
in registers for D up to 512+, and a split-K scheme would recompute the logits once per D
slice. The classes are processed in chunks so the float32 dw_hat buffer stays
BACKWARD_CHUNK_ELEMENTS long whatever C is; each chunk is then normalised into the weight
gradient in its own dtype (for float32 weights the buffer is the gradient itself).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import BACKWARD_CHUNK_ELEMENTS, backward_blocks, dot_precision, upcast_dots
from .norms import normalized_weight_grad
from .tiles import dot_acc, tile_dots


@triton.jit
def grad_kernel(
    X, W, INV, R, Y, LSE, GR, TGT, DX, DW, N, C0, C1, D,
    stride_xn, stride_xd, stride_wc, stride_wd,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
    WANT_DX: tl.constexpr, WANT_DW: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """Tiles over rows [0, N) x classes [C0, C1). DX (N, D) and DW (C1 - C0, D) are
    row-major float32; GR = g * r, TGT = t, both (N,)."""
    pid = tl.program_id(0)
    row_blocks = tl.cdiv(N, BLOCK_N)
    rows = (pid % row_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)  # neighbours share W tiles
    cols = C0 + (pid // row_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < N
    col_ok = cols < C1
    r = tl.load(R + rows, mask=row_ok, other=0.0)
    y = tl.load(Y + rows, mask=row_ok, other=-1)
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    gr = tl.load(GR + rows, mask=row_ok, other=0.0)
    tgt = tl.load(TGT + rows, mask=row_ok, other=0.0)
    inv = tl.load(INV + cols, mask=col_ok, other=0.0)

    cos = tile_dots(X, W, rows, cols, N, C1, D, stride_xn, stride_xd, stride_wc, stride_wd,
                    BLOCK_N, BLOCK_C, BLOCK_K, UPCAST, PRECISION) * inv[None, :]
    p = tl.exp(r[:, None] * cos - lse[:, None])  # (BLOCK_N, BLOCK_C)
    g = tl.where(cols[None, :] == y[:, None], tgt[:, None], gr[:, None] * p)
    g = tl.where(row_ok[:, None] & col_ok[None, :], g, 0.0)  # dL/dcos
    g_x = (g * inv[None, :]).to(X.dtype.element_ty)  # dL/d(x . w) for dx_hat
    g_w = tl.trans(g.to(X.dtype.element_ty))  # (BLOCK_C, BLOCK_N)

    x_rows = X + rows.to(tl.int64)[:, None] * stride_xn
    w_rows = W + cols.to(tl.int64)[:, None] * stride_wc
    dx_rows = DX + rows.to(tl.int64)[:, None] * D
    dw_rows = DW + (cols - C0).to(tl.int64)[:, None] * D
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < D
        if WANT_DX:
            w = tl.load(w_rows + ks[None, :] * stride_wd, mask=col_ok[:, None] & k_ok[None, :],
                        other=0.0)  # (BLOCK_C, BLOCK_K)
            dx = dot_acc(g_x, w, tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32), UPCAST,
                         PRECISION)
            tl.atomic_add(dx_rows + ks[None, :], dx, mask=row_ok[:, None] & k_ok[None, :],
                          sem="relaxed")
        if WANT_DW:
            x = tl.load(x_rows + ks[None, :] * stride_xd, mask=row_ok[:, None] & k_ok[None, :],
                        other=0.0)  # (BLOCK_N, BLOCK_K)
            dw = dot_acc(g_w, x, tl.zeros((BLOCK_C, BLOCK_K), dtype=tl.float32), UPCAST,
                         PRECISION)
            tl.atomic_add(dw_rows + ks[None, :], dw, mask=col_ok[:, None] & k_ok[None, :],
                          sem="relaxed")


def input_grads(x, weight, inv, r, labels, lse, row_grad_r, target_grad, want_dx, want_dw):
    """(dL/dx_hat (N, D) float32 or None, dL/dweight (C, D) in weight.dtype or None).
    x (N, D), weight (C, D) in one dtype; inv (C,), r, lse, row_grad_r, target_grad (N,)
    float32; labels (N,) int64."""
    n, dim = x.shape
    num_classes = weight.shape[0]
    b = backward_blocks(weight.dtype)
    device = x.device
    dx = torch.zeros(n, dim, device=device, dtype=torch.float32) if want_dx else None
    dw = None
    if want_dw:
        in_place = weight.dtype == torch.float32
        dw = (torch.zeros if in_place else torch.empty)(weight.shape, device=device,
                                                        dtype=weight.dtype)
    chunk = max(b.c, BACKWARD_CHUNK_ELEMENTS // max(dim, 1) // b.c * b.c)  # classes
    buffer = None
    if want_dw and not in_place:
        buffer = torch.empty(min(chunk, num_classes), dim, device=device, dtype=torch.float32)
    dummy = torch.empty(1, device=device, dtype=torch.float32)
    row_blocks = triton.cdiv(n, b.n)
    for c0 in range(0, num_classes, chunk):
        c1 = min(c0 + chunk, num_classes)
        dw_hat = None
        if want_dw:
            dw_hat = dw[c0:c1] if in_place else buffer[: c1 - c0].zero_()
        grid = (row_blocks * triton.cdiv(c1 - c0, b.c),)
        grad_kernel[grid](
            x, weight, inv, r, labels, lse, row_grad_r, target_grad,
            dx if want_dx else dummy, dw_hat if want_dw else dummy, n, c0, c1, dim,
            x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
            BLOCK_N=b.n, BLOCK_C=b.c, BLOCK_K=b.k, WANT_DX=want_dx, WANT_DW=want_dw,
            UPCAST=upcast_dots(weight.dtype), PRECISION=dot_precision(weight.dtype),
            num_warps=b.warps, num_stages=b.stages,
        )
        if want_dw:
            normalized_weight_grad(weight[c0:c1], inv[c0:c1], dw_hat, dw[c0:c1])
    return dx, dw
