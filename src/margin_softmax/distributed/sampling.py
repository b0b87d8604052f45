"""Partial FC's class sampling: every positive class of the global batch plus uniformly
sampled negatives, on each rank's own block.

Rank r keeps K_r = max(round(sample_rate * C_r), P_r) of its C_r classes, where P_r is the
number of distinct labels of the global batch that fall in its block: all P_r positives and
K_r - P_r negatives drawn uniformly without replacement. The draw is seeded by
(seed, step, block start), so it is reproducible, needs no communication, and every rank
knows the whole sample of a step from the seed, the step and the global labels alone.
"""

from __future__ import annotations

import torch

from ..validation import real_number


def check_sample_rate(sample_rate: float) -> float:
    sample_rate = real_number("sample_rate", sample_rate, "a float in (0, 1]")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    return float(sample_rate)


def step_generator(seed: int, step: int, start: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded by (seed, step, start); the hash of a tuple of ints
    is the same in every process (PYTHONHASHSEED only affects str and bytes)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(hash((seed, step, start)) % (1 << 63))
    return generator


def sample_rows(
    local_target: torch.Tensor, num_local: int, sample_rate: float, generator: torch.Generator
) -> torch.Tensor:
    """Sorted rows (K,) of this block to keep. local_target (N,): the row of each sample's
    class in this block, -1 where the class lives elsewhere; those rows are always kept."""
    device = local_target.device
    positive = local_target[local_target >= 0].unique()  # (P,)
    keep = max(round(sample_rate * num_local), positive.numel())
    if keep >= num_local:
        return torch.arange(num_local, device=device)
    score = torch.rand(num_local, generator=generator, device=device)  # (C_r,) in [0, 1)
    score[positive] = 2.0  # positives first
    return score.topk(keep).indices.sort().values  # (K,)


def remap_targets(local_target: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """local_target (N,) in block rows (or -1) -> index into the sorted kept ``rows`` (or -1).
    Every target row is among the kept rows."""
    position = torch.searchsorted(rows, local_target.clamp_min(0))  # (N,)
    return torch.where(local_target >= 0, position, -1)
