"""The two shard primitives of chunked/shard.py (the seam of the class-sharded head) by the
kernels of the GEMM schedule, for CUDA: one shard holds the weight rows of its classes, the
target of row i is local_target_i, or -1 where another shard owns it.

    shard lse_i   = logaddexp(log sum_{j != t_i} exp(r_i cos_ij), target_logit_i if owned)
    gradients     = those of sum_i row_grad_i (lse_i - target_logit_i), lse the GLOBAL one

The forward kernel leaves the target column out by its index (-1 matches no column), the
gradient-tile kernel puts the host's g r (p_t - 1) psi' there, and everything else is
gradients.py. Same contract and results as the chunked primitives (within float32), for
float32/bfloat16/float16 weights; the row-scale gradient is not computed here (the sharded
head's scale is fixed).
"""

from __future__ import annotations

import torch

from ..chunked.sweeps import p_target_minus_1
from .forward import non_target_softmax
from .gradients import gradients
from .norms import row_inv_norms


def _operands(x_hat, weight, local_target):
    """x_hat in the weight's dtype (the kernels' operand), labels as int64."""
    return x_hat.to(weight.dtype).contiguous(), local_target.long().contiguous()


@torch.no_grad()
def triton_shard_logsumexp(x_hat: torch.Tensor, weight: torch.Tensor,
                           local_target: torch.Tensor, target_logit: torch.Tensor,
                           row_scale: torch.Tensor, *, with_target: bool = True) -> torch.Tensor:
    """lse (N,) float32 over this shard's classes of r_i cos_ij, the target class holding
    target_logit (with_target=False: the other classes only); -inf for an empty shard.
    x_hat (N, D) unit rows, weight (C_r, D) raw."""
    owned = torch.where(local_target >= 0, target_logit.float(), -float("inf"))  # (N,)
    if not with_target:
        owned = torch.full_like(owned, -float("inf"))
    if weight.shape[0] == 0:
        return owned
    x, labels = _operands(x_hat, weight, local_target)
    inv = row_inv_norms(weight)  # (C_r,)
    lse_other, _, _ = non_target_softmax(x, weight, inv, row_scale.float().contiguous(), labels,
                                         False, False)
    return torch.logaddexp(lse_other, owned)


@torch.no_grad()
def triton_shard_gradients(x_hat: torch.Tensor, weight: torch.Tensor,
                           local_target: torch.Tensor, target_logit: torch.Tensor,
                           target_dpsi: torch.Tensor, row_scale: torch.Tensor,
                           lse: torch.Tensor, row_grad: torch.Tensor, *,
                           gap: torch.Tensor | None = None):
    """(d_x_hat (N, D) float32, d_weight (C_r, D) in weight's dtype, None): this shard's
    share of the gradients of sum_i row_grad_i * loss_i, lse (N,) the global one; gap (N,)
    the global lse over the other classes - target_logit, where known (exact p_t - 1)."""
    n, dim = x_hat.shape
    if weight.shape[0] == 0:
        return x_hat.new_zeros(n, dim, dtype=torch.float32), weight.new_zeros(0, dim), None
    x, labels = _operands(x_hat, weight, local_target)
    r, lse, g = row_scale.float(), lse.float(), row_grad.float()
    p_minus_1 = p_target_minus_1(target_logit.float(), lse, None if gap is None else gap.float())
    target_grad = torch.where(labels >= 0, g * r * p_minus_1 * target_dpsi.float(), 0.0)
    inv = row_inv_norms(weight)
    d_x_hat, d_weight = gradients(x, weight, inv, r.contiguous(), labels, lse.contiguous(),
                                  (g * r).contiguous(), target_grad.contiguous(), True, True)
    return d_x_hat, d_weight, None
