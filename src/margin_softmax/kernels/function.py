"""The autograd Function around the kernels: per-sample margin cross-entropy losses.

    loss_i = logsumexp_j l_ij - l_iy,   l_ij = r_i cos_ij (j != y_i),   l_iy = r_i psi(cos_iy)

Forward: inverse norms of W (norms.py), the N target cosines and psi, psi' in PyTorch (O(N D)
work, so the kernels never see the margin), then kernel 1 (forward.py) for the log-sum-exp
over the other classes. Backward: kernel 2 (backward.py) recomputes the logits and
accumulates dL/dx_hat and dL/dW; dL/dr comes from the forward's cbar. Nothing (N, C) or
normalised (C, D) is ever allocated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..margins import Margin
from .backward import input_grads
from .forward import non_target_lse
from .norms import row_inv_norms


class MarginCrossEntropyRows(torch.autograd.Function):
    """loss (N,) float32 from x_hat (N, D) (normalised rows, float32 or the weight dtype),
    weight (C, D) (raw class centres), r (N,) float32 (the per-row scale), labels (N,)."""

    @staticmethod
    def forward(ctx, x_hat, weight, r, labels, margin: Margin):
        ctx.x_hat_dtype = x_hat.dtype
        x = x_hat.to(weight.dtype)  # (N, D), the dtype the matmuls run in
        inv = row_inv_norms(weight)  # (C,)
        target_w = weight[labels].float() * inv[labels, None]  # (N, D), O(N D)
        cos_target = (x_hat.float() * target_w).sum(dim=1)  # (N,)
        psi, dpsi = margin.psi_and_grad(cos_target)
        lse_other, cbar = non_target_lse(x, weight, inv, r, labels, ctx.needs_input_grad[2])
        logit_target = r * psi  # (N,)
        ctx.save_for_backward(x, weight, inv, r, labels, lse_other, logit_target, psi, dpsi,
                              cbar)
        return F.softplus(lse_other - logit_target)  # = lse - l_iy, exact as p_iy -> 1

    @staticmethod
    def backward(ctx, grad_loss):
        x, weight, inv, r, labels, lse_other, logit_target, psi, dpsi, cbar = ctx.saved_tensors
        want_dx, want_dw, want_dr = ctx.needs_input_grad[:3]
        g = grad_loss.float().contiguous()  # (N,)
        lse = torch.logaddexp(lse_other, logit_target)  # (N,)
        other_mass = torch.sigmoid(lse_other - logit_target)  # 1 - p_iy, without cancelling
        dx = dw = dr = None
        if want_dx or want_dw:
            target_grad = -g * r * other_mass * dpsi  # g r (p_iy - 1) psi'
            dx, dw = input_grads(x, weight, inv, r, labels, lse, g * r, target_grad,
                                 want_dx, want_dw)
            dx = None if dx is None else dx.to(ctx.x_hat_dtype)
        if want_dr:
            dr = g * other_mass * (cbar - psi)  # g (sum_j p_ij c_ij - psi_i)
        return dx, dw, dr, None, None
