"""The autograd Function around the kernels: per-sample margin cross-entropy losses.

    loss_i = logsumexp_j l_ij - l_iy,   l_ij = r_i cos_ij (j != y_i),   l_iy = r_i psi(cos_iy)

Forward: inverse norms of W (norms.py); the N target cosines and psi, psi' in PyTorch (O(N D)
work, so the kernels never see the margin); kernel 1 (forward.py): one pass over the classes
for the log-sum-exp of the other classes, and, when gradients are wanted, cbar (for dL/dr).
Backward, by config.SCHEDULE: "gemm" (gradients.py): chunks of classes, each a GEMM-tile
kernel for H = dL/dcos * inv and two cuBLAS products for dL/dx_hat and dL/dW; "fused": v in
kernel 1 gives dL/dx_hat in PyTorch (O(N D)), and one kernel (backward.py) dL/dW. dL/dr in
PyTorch from cbar. Nothing (N, C) or (C, D) is allocated besides dL/dW itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..margins import Margin
from . import config
from .backward import weight_grad
from .forward import non_target_softmax
from .gradients import gradients
from .norms import row_inv_norms


class MarginCrossEntropyRows(torch.autograd.Function):
    """loss (N,) float32 from x_hat (N, D) (normalised rows, float32 or the weight dtype),
    weight (C, D) (raw class centres), r (N,) float32 (the per-row scale), labels (N,), and
    either a Margin (l_iy = r_i psi(cos_iy)) or target_logit (N,), the caller's per-sample
    l_iy with its own autograd (then the target cells add nothing here and the gradient
    g_i (p_iy - 1) goes back to target_logit)."""

    @staticmethod
    def forward(ctx, x_hat, weight, r, labels, margin: Margin | None, target_logit=None):
        want_dx, _, want_dr = ctx.needs_input_grad[:3]
        x = x_hat.to(weight.dtype)  # (N, D), the dtype the matmuls run in
        inv = row_inv_norms(weight)  # (C,)
        w_target = weight[labels].float() * inv[labels, None]  # (N, D) w_hat of the targets
        if target_logit is None:
            cos_target = (x_hat.float() * w_target).sum(dim=1)  # (N,)
            psi, dpsi = margin.psi_and_grad(cos_target)
        else:  # l_iy given: psi = l_iy / r for dL/dr, no psi' term in the cells
            psi, dpsi = target_logit.float() / r, torch.zeros_like(r)
        ctx.schedule = config.SCHEDULE
        want_v = want_dx and ctx.schedule == "fused"  # else dx comes from the backward
        lse_other, cbar, v = non_target_softmax(x, weight, inv, r, labels, want_dr, want_v)
        logit_target = r * psi if target_logit is None else target_logit.float()  # (N,)
        ctx.save_for_backward(x, weight, inv, r, labels, lse_other, logit_target, psi, dpsi,
                              cbar, v, w_target)
        ctx.x_hat_dtype = x_hat.dtype
        return F.softplus(lse_other - logit_target)  # = lse - l_iy, exact as p_iy -> 1

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        x, weight, inv, r, labels, lse_other, logit_target, psi, dpsi, cbar, v, w_target = (
            ctx.saved_tensors
        )
        want_dx, want_dw, want_dr = ctx.needs_input_grad[:3]
        g = grad_loss.float().contiguous()  # (N,)
        other_mass = torch.sigmoid(lse_other - logit_target)  # 1 - p_iy, without cancelling
        dx = dw = dr = None
        lse = torch.logaddexp(lse_other, logit_target)  # (N,)
        target_grad = -g * r * other_mass * dpsi  # g r (p_iy - 1) psi'
        if ctx.schedule == "gemm" and (want_dx or want_dw):
            dx, dw = gradients(x, weight, inv, r, labels, lse, g * r, target_grad, want_dx,
                               want_dw)
        else:
            if want_dx:  # sum_j G_ij w_hat_j = g r [(1 - p_y) v - (1 - p_y) psi' w_hat_y]
                dx = (g * r * other_mass)[:, None] * (v - dpsi[:, None] * w_target)  # (N, D)
            if want_dw:
                dw = weight_grad(x, weight, inv, r, labels, lse, g * r, target_grad)
        if dx is not None:
            dx = dx.to(ctx.x_hat_dtype)
        if want_dr:
            dr = g * other_mass * (cbar - psi)  # g (sum_j p_ij c_ij - psi_i)
        d_target = -g * other_mass if ctx.needs_input_grad[5] else None  # g (p_iy - 1)
        return dx, dw, dr, None, None, d_target
