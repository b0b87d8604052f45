"""Numerics every path shares (eager, chunked, kernels, sharded): the norm floor, the
dtype that softmax sums run in, the reduction. Below functional.py, chunked/ and kernels/;
imports nothing of ours.

    normalize(x)         = x / max(|x|, NORM_EPS)      row-wise, (..., D) -> (..., D)
    compute_dtype(t)     = float32 for float16/bfloat16, t otherwise
    reduce(loss, "mean") = mean_i loss_i               (N,) -> (); "sum", "none" likewise
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NORM_EPS = 1e-12  # |x| below this is treated as this (x / eps): finite gradients at x = 0


def normalize(x: torch.Tensor) -> torch.Tensor:
    """x / max(|x|, eps) row-wise; a zero row stays zero with a finite gradient."""
    return F.normalize(x, dim=-1, eps=NORM_EPS)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax and sums run in float32 for half inputs, in the input dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-sample losses (N,) to their mean, sum, or themselves ("none")."""
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss
