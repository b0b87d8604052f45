"""Blocks of classes: the log-sum-exp and the gradients over one shard of the classes.

These two are the seam between the single-device path and the class-sharded head: each
process holds weight rows C_r of the C classes, calls ``shard_logsumexp``, combines the (N,)
results over processes with logaddexp (the global lse), then calls ``shard_gradients``.
Memory beyond the inputs and outputs: a few (N, block) tensors, never (N, C_r).

For row i and column j of this shard, with x_hat the unit embeddings and w_hat_j = w_j/|w_j|:

    cos_ij   = <x_hat_i, w_hat_j>
    logit_ij = r_i * cos_ij,  and target_logit_i = r_i * psi(cos_it) at j = t_i
    lse_i    = log sum_j exp(logit_ij)                               (this shard's columns)
    loss_i   = lse_i(global) - target_logit_i
"""

from __future__ import annotations

import torch

from ..functional import compute_dtype
from .unit_rows import unit_rows, unit_rows_backward

BLOCK_BYTES = 16 << 20  # default size of one (N, block) float32 tensor


def default_block_size(n_rows: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Classes per block so that an (n_rows, block) float32 tensor takes ~block_bytes."""
    return max(256, block_bytes // (4 * max(n_rows, 1)))


def _block_logits(x_mm, w_block, local_target, target_logit, row_scale, start):
    """logits (N, B) in compute dtype with the target substituted, w_hat (B, D), |w| (B,)."""
    acc = compute_dtype(w_block.dtype)
    w_hat, norm = unit_rows(w_block.to(acc))  # (B, D), (B,)
    cos = (x_mm @ w_hat.to(w_block.dtype).t()).to(acc)  # (N, B)
    logits = row_scale[:, None] * cos  # (N, B)
    col = local_target - start  # (N,)
    inside = (col >= 0) & (col < w_block.shape[0])
    col = col.clamp(0, w_block.shape[0] - 1)[:, None]  # (N, 1)
    value = torch.where(inside, target_logit, logits.gather(1, col).squeeze(1))
    logits.scatter_(1, col, value[:, None])
    return logits, w_hat, norm, inside, col


@torch.no_grad()
def shard_logsumexp(
    x_hat: torch.Tensor,
    weight: torch.Tensor,
    local_target: torch.Tensor,
    target_logit: torch.Tensor,
    row_scale: torch.Tensor,
    block_size: int | None = None,
) -> torch.Tensor:
    """lse (N,) over this shard's columns of r_i * cos_ij, the target column (local_target,
    -1 where not here) holding target_logit. x_hat (N, D) unit rows, weight (C_r, D) raw.
    -inf for an empty shard."""
    acc = compute_dtype(weight.dtype)
    block = block_size or default_block_size(x_hat.shape[0])
    x_mm = x_hat.to(weight.dtype)
    row_scale, target_logit = row_scale.to(acc), target_logit.to(acc)
    lse = torch.full((x_hat.shape[0],), -float("inf"), dtype=acc, device=x_hat.device)
    for start in range(0, weight.shape[0], block):
        w_block = weight[start : start + block]
        logits, *_ = _block_logits(x_mm, w_block, local_target, target_logit, row_scale, start)
        lse = torch.logaddexp(lse, logits.logsumexp(1))
    return lse


@torch.no_grad()
def shard_gradients(
    x_hat: torch.Tensor,
    weight: torch.Tensor,
    local_target: torch.Tensor,
    target_logit: torch.Tensor,
    target_dpsi: torch.Tensor,
    row_scale: torch.Tensor,
    lse: torch.Tensor,
    row_grad: torch.Tensor,
    block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of sum_i row_grad_i * loss_i from this shard's columns, lse the GLOBAL one:

        dlogit_ij = p_ij - y_ij,   p_ij = exp(logit_ij - lse_i)
        dcos_ij   = row_grad_i * r_i * dlogit_ij   (times psi'_i = target_dpsi at the target)

    Returns d_x_hat (N, D) and d_row_scale (N,) in compute dtype, and d_weight (C_r, D) in
    weight's dtype, taken through the normalisation of each weight row. d_row_scale_i =
    row_grad_i * sum_j dlogit_ij * logit_ij / r_i (0 where r_i = 0)."""
    acc = compute_dtype(weight.dtype)
    block = block_size or default_block_size(x_hat.shape[0])
    x_mm = x_hat.to(weight.dtype)
    row_scale, target_logit, lse = row_scale.to(acc), target_logit.to(acc), lse.to(acc)
    row_factor = row_grad.to(acc) * row_scale  # (N,)
    target_dlogit = torch.expm1(target_logit - lse)  # (N,) p_t - 1 without cancellation
    d_x_hat = torch.zeros(x_hat.shape, dtype=acc, device=x_hat.device)
    d_weight = torch.empty_like(weight)
    dot = torch.zeros_like(lse)  # sum_j dlogit_ij * logit_ij
    for start in range(0, weight.shape[0], block):
        w_block = weight[start : start + block]
        logits, w_hat, norm, inside, col = _block_logits(
            x_mm, w_block, local_target, target_logit, row_scale, start
        )
        dlogit = torch.exp(logits - lse[:, None])  # (N, B) p
        dlogit.scatter_(
            1, col, torch.where(inside, target_dlogit, dlogit.gather(1, col)[:, 0])[:, None]
        )
        dot += (dlogit * logits).sum(1)
        dcos = dlogit * row_factor[:, None]  # (N, B)
        dpsi = torch.where(inside, target_dpsi.to(acc), 1.0)[:, None]  # (N, 1)
        dcos.scatter_(1, col, dcos.gather(1, col) * dpsi)
        dcos_mm = dcos.to(weight.dtype)
        d_x_hat += (dcos_mm @ w_hat.to(weight.dtype)).to(acc)  # (N, D)
        d_w_hat = (dcos_mm.t() @ x_mm).to(acc)  # (B, D)
        d_weight[start : start + block] = unit_rows_backward(d_w_hat, w_hat, norm)
    safe = torch.where(row_scale != 0, row_scale, 1.0)
    d_row_scale = torch.where(row_scale != 0, row_grad.to(acc) * dot / safe, 0.0)
    return d_x_hat, d_weight, d_row_scale
