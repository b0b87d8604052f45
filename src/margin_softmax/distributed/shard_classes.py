"""How one rank's shard of the classes computes its part of a sharded softmax, for the
heads whose target logit comes with its own autograd (target_heads.py): the lse over its
classes other than each row's target, and that lse's share of the gradients.

    logit_ij = s cos_ij                   plain (the chunked sweeps, or the Triton kernels)
             = s f_i(cos_ij)              with a non-target transform (CurricularFace; chunked)
             = s max_k cos(x_i, w_jK+k)   with K sub-centres per class (SubCenterArcFace)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..chunked import subcenters
from .sharded_loss import other_logsumexp, shard_share


@dataclass
class ShardClasses:
    """local_target (N,): each row's class in this shard's weight, or -1. block_size: the
    chunked tiles (classes); triton: the kernels (plain only); non_target: the chunked
    sweeps' transform; sub_centers: K rows per class (weight (C_r K, D)), or None."""

    local_target: torch.Tensor
    block_size: int | None = None
    triton: bool = False
    non_target: object | None = None
    sub_centers: int | None = None

    def _tile(self, n: int) -> int:
        return self.block_size or subcenters.tile_classes(n, self.sub_centers)

    def other_logsumexp(self, x_hat: torch.Tensor, weight: torch.Tensor, scale: float):
        """lse_i (N,) of the logits over this shard's classes other than row i's target."""
        if self.sub_centers is not None:
            return subcenters.other_logsumexp(x_hat, weight, self.local_target,
                                              self.sub_centers, scale, self._tile(len(x_hat)))
        r = torch.full_like(x_hat[:, 0], scale)  # (N,)
        return other_logsumexp(x_hat, weight, self.local_target, torch.zeros_like(r), r,
                               self.block_size, self.triton, self.non_target)

    def gradients(self, x_hat, weight, scale: float, lse, gap, row_grad):
        """(d_x_hat (N, D), d_weight like weight): the non-target cells' share of the
        gradients of sum_i row_grad_i loss_i, lse (N,) and gap (N,) the global ones."""
        if self.sub_centers is not None:
            return subcenters.other_gradients(x_hat, weight, self.local_target,
                                              self.sub_centers, scale, lse, row_grad * scale,
                                              self._tile(len(x_hat)))
        r = torch.full_like(x_hat[:, 0], scale)  # (N,)
        d_x_hat, d_weight, _ = shard_share(x_hat, weight, self.local_target,
                                           torch.zeros_like(r), None, r, lse, gap, row_grad,
                                           self.block_size, self.triton, self.non_target)
        return d_x_hat, d_weight
