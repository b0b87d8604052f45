"""Sub-center ArcFace's cleaning step (Deng et al., ECCV 2020, section 3.2).

After training with K sub-centres per class, most of a class's clean samples gather at one
"dominant" sub-centre. The paper then drops the samples farther than 75 degrees from their
class's dominant sub-centre (label noise), keeps only the dominant sub-centre of each class,
and goes on training with K = 1. These helpers find both, over any number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .numerics import normalize
from .validation import check_embeddings, check_labels, check_positive_int, real_number


@dataclass(frozen=True)
class SubCenterCleaning:
    """dominant (C,) int64: each class's dominant sub-centre in [0, K), -1 for a class
    without samples. angle (N,): radians between each sample and its class's dominant
    sub-centre. outliers (N,) bool: angle above the threshold."""

    dominant: torch.Tensor
    angle: torch.Tensor
    outliers: torch.Tensor

    @property
    def outlier_indices(self) -> torch.Tensor:
        """Indices of the outlier samples (M,), ascending."""
        return self.outliers.nonzero().squeeze(1)


@torch.no_grad()
def find_outliers(
    weight: torch.Tensor,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    sub_centers: int,
    threshold_degrees: float = 75.0,
    block_size: int = 8192,
) -> SubCenterCleaning:
    """Dominant sub-centres and outliers, as the paper (and PyTorch Metric Learning's
    ``SubCenterArcFaceLoss.get_outliers``) define them.

    weight (C*K, D) with class c in rows c*K ... c*K + K - 1; embeddings (N, D); labels (N,).
    The dominant sub-centre of class c is the one that is nearest to most of the class's
    samples (ties: the lowest index); a sample is an outlier when its angle to that
    sub-centre exceeds ``threshold_degrees`` in [0, 180] (the paper's 75; 180: no outliers,
    0: every sample off its sub-centre). Memory O(N * K), not O(N * C).
    """
    sub_centers = check_positive_int("sub_centers", sub_centers)
    threshold = real_number("threshold_degrees", threshold_degrees)
    if not 0 <= threshold <= 180:
        raise ValueError(f"threshold_degrees must be in [0, 180], got {threshold_degrees!r}")
    check_embeddings(embeddings, weight)
    if weight.shape[0] % sub_centers:
        raise ValueError(
            f"weight has {weight.shape[0]} rows, not a multiple of sub_centers={sub_centers}"
        )
    num_classes = weight.shape[0] // sub_centers
    labels = check_labels(labels, embeddings.shape[0], num_classes, embeddings.device)

    centres = normalize(weight).view(num_classes, sub_centers, -1)  # (C, K, D)
    chunks = [
        torch.einsum("nd,nkd->nk", normalize(embeddings[s : s + block_size]),
                     centres[labels[s : s + block_size]])
        for s in range(0, embeddings.shape[0], block_size)
    ]
    cos = torch.cat(chunks) if chunks else embeddings.new_zeros(0, sub_centers)  # (N, K)

    nearest = cos.argmax(dim=1)  # (N,)
    counts = torch.zeros(num_classes, sub_centers, dtype=torch.long, device=weight.device)
    counts.index_put_((labels, nearest), torch.ones_like(nearest), accumulate=True)  # (C, K)
    dominant = torch.where(counts.sum(1) > 0, counts.argmax(dim=1), -1)  # (C,)

    cos_dominant = cos.gather(1, dominant[labels][:, None]).squeeze(1)  # (N,)
    angle = torch.acos(cos_dominant.clamp(-1.0, 1.0).double())  # float64: 0, 90, 180 exact
    outliers = torch.rad2deg(angle) > threshold  # none at 180
    return SubCenterCleaning(dominant, angle.to(cos.dtype), outliers)


@torch.no_grad()
def dominant_centres(
    weight: torch.Tensor, dominant: torch.Tensor, sub_centers: int
) -> torch.Tensor:
    """(C, D): each class's dominant sub-centre row (sub-centre 0 where dominant is -1),
    the weight of the K = 1 head the paper trains on after cleaning."""
    grouped = weight.view(-1, sub_centers, weight.shape[1])  # (C, K, D)
    rows = torch.arange(grouped.shape[0], device=weight.device)
    return grouped[rows, dominant.clamp_min(0)].clone()
