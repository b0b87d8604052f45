"""The two primitives over one shard of the classes: the seam between the single-device path
and the class-sharded head. Each process holds the weight rows C_r of its classes, calls
``shard_logsumexp``, combines the (N,) results over processes with logaddexp (the global lse),
then calls ``shard_gradients``. Memory beyond inputs and outputs: one (block, N) tile.

For row i and class j of this shard, x_hat the unit embeddings and w_hat_j = w_j / |w_j|:

    logit_ij = r_i * <x_hat_i, w_hat_j>,  target_logit_i = r_i * psi(cos_it) at j = t_i
    lse_i    = log sum_j exp(logit_ij)                       (over this shard's classes)
    loss_i   = lse_i(global) - target_logit_i
"""

from __future__ import annotations

import torch

from ..numerics import compute_dtype
from .plan import tile_bytes, tile_classes
from .sweeps import RowSide, gradient_sweep, lse_sweep
from .tiles import ClassTiles, matmul_dtype


def _sides(x_hat, weight, local_target, target_logit, row_scale, block_size, non_target=None,
           mm=None):
    acc, mm = compute_dtype(weight.dtype), mm or matmul_dtype(weight.dtype)
    r = row_scale.to(acc)
    rows = RowSide(
        x=x_hat.to(mm),
        scaled=(r[:, None] * x_hat.to(acc)).to(mm),  # (N, D)
        target=local_target,
        target_logit=target_logit.to(acc),
        row_scale=r,
        non_target=non_target,
    )
    block = block_size or tile_classes(x_hat.shape[0], tile_bytes(False, x_hat.device.type))
    return ClassTiles(weight, block, mm=mm), rows


@torch.no_grad()
def shard_logsumexp(
    x_hat: torch.Tensor,
    weight: torch.Tensor,
    local_target: torch.Tensor,
    target_logit: torch.Tensor,
    row_scale: torch.Tensor,
    block_size: int | None = None,
    *,
    with_target: bool = True,
    non_target=None,
    matmul_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """lse (N,) over this shard's classes of r_i * cos_ij, the target class (local_target,
    -1 where another shard owns it) holding target_logit; with_target=False, over the other
    classes only (the caller adds the target: exact for confident rows). x_hat (N, D) unit
    rows, weight (C_r, D) raw, row_scale (N,). -inf for an empty shard. Compute dtype.
    non_target: None, or the transform r_i f_i(cos_ij) of functional.target_cross_entropy.
    matmul_dtype: the tiles' matmul dtype (float32 for a statistic of half weights; default:
    the weight's, float16 as float32)."""
    classes, rows = _sides(x_hat, weight, local_target, target_logit, row_scale, block_size,
                           non_target, matmul_dtype)
    return lse_sweep(classes, rows, with_target)


@torch.no_grad()
def shard_gradients(
    x_hat: torch.Tensor,
    weight: torch.Tensor,
    local_target: torch.Tensor,
    target_logit: torch.Tensor,
    target_dpsi: torch.Tensor | None,
    row_scale: torch.Tensor,
    lse: torch.Tensor,
    row_grad: torch.Tensor,
    block_size: int | None = None,
    *,
    need_row_scale_grad: bool = True,
    gap: torch.Tensor | None = None,
    non_target=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of sum_i row_grad_i * loss_i from this shard's classes, lse the GLOBAL one:

        dlogit_ij = p_ij - y_ij,  p_ij = exp(logit_ij - lse_i)
        dcos_ij   = row_grad_i * r_i * dlogit_ij      (times target_dpsi_i at the target)

    target_dpsi None: the target cells contribute nothing here (a target logit with its own
    autograd; its gradient is row_grad_i * (p_it - 1), from the global lse). gap (N,): the
    global lse over the other classes - target_logit, where the caller has it: p_it - 1 is
    then -sigmoid(gap), exact for confident rows, instead of expm1(target_logit - lse).
    non_target: as shard_logsumexp's (its slope enters dcos; its row_param gets no gradient).

    Returns d_x_hat (N, D) and d_row_scale (N,) in compute dtype (d_row_scale_i = row_grad_i *
    sum_j dlogit_ij * logit_ij / r_i, 0 where r_i = 0; None unless need_row_scale_grad), and
    d_weight (C_r, D) in weight's dtype, through the normalisation of each weight row."""
    classes, rows = _sides(x_hat, weight, local_target, target_logit, row_scale, block_size,
                           non_target)
    acc = classes.acc
    row_grad = row_grad.to(acc)
    dpsi = None if target_dpsi is None else target_dpsi.to(acc)
    gap = None if gap is None else gap.to(acc)
    grads = gradient_sweep(classes, rows, lse.to(acc), row_grad, dpsi, need_row_scale_grad, gap)
    d_row_scale = None
    if need_row_scale_grad:
        d_row_scale = row_scale_gradient(grads.dot, rows.row_scale, row_grad)
    return grads.d_x, grads.d_weight.to(weight.dtype), d_row_scale


def row_scale_gradient(dot: torch.Tensor, row_scale: torch.Tensor, row_grad: torch.Tensor):
    """d loss / d r_i = row_grad_i * sum_j dlogit_ij * logit_ij / r_i (N,); 0 where r_i = 0."""
    nonzero = row_scale != 0
    return torch.where(nonzero, row_grad * dot / torch.where(nonzero, row_scale, 1.0), 0.0)
