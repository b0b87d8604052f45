"""Row normalisation w / max(|w|, eps) and its backward, as F.normalize defines them."""

from __future__ import annotations

import torch

from ..numerics import NORM_EPS


def unit_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_hat, norm): w_hat = w / max(|w|, eps) row-wise (B, D), norm = |w| (B,)."""
    norm = w.norm(dim=1)  # (B,)
    return w / norm.clamp_min(NORM_EPS)[:, None], norm


def unit_rows_backward(grad: torch.Tensor, w_hat: torch.Tensor, norm: torch.Tensor):
    """d/dw of sum(grad * w_hat), (B, D): (grad - w_hat <w_hat, grad>) / |w| where
    |w| > eps, grad / eps below (there the clamp holds the norm still)."""
    radial = (w_hat * grad).sum(1) * (norm > NORM_EPS)  # (B,)
    return (grad - w_hat * radial[:, None]) / norm.clamp_min(NORM_EPS)[:, None]
