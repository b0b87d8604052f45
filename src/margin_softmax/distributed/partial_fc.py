"""PartialFC: a margin head whose class centres are sharded across the ranks of a process
group, with optional Partial FC class sampling. See docs/distributed.md.

    head = PartialFC(512, 1_000_000, m2=0.5, scale=64.0, sample_rate=0.1)  # ArcFace
    loss = head(local_embeddings, local_labels)  # global mean loss, the same on every rank
    loss.backward()                              # on every rank
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..margins import Margin
from ..validation import check_positive_int, check_scale
from .comm import all_gather_stack, gather_rows, rank_and_world_size
from .handshake import handshake
from .sampling import check_sample_rate, remap_targets, sample_rows, step_generator
from .sharded_loss import check_impl, sharded_margin_cross_entropy
from .sharding import class_range


class PartialFC(nn.Module):
    """Combined-margin head over sharded classes: target logit s (cos(m1 theta + m2) - m3).

    ``weight`` (stop - start, D) holds this rank's classes [start, stop) in class order
    (sharding.py). forward(local_embeddings (n_r, D), local_labels (n_r,)) returns the mean
    loss over the global batch. Gradients: exact for ``weight``; world_size times the exact
    one for the embeddings, which is what a DDP-wrapped backbone needs.

    impl: how each shard's softmax runs: "auto" (the Triton kernels on NVIDIA GPUs of compute
    capability 8.0+ where triton imports, else the chunked PyTorch path), "chunked"
    (block_size classes per tile) or "triton" (sharded_loss.py).

    sample_rate < 1 (training mode only): each step keeps every class of the global batch and
    a uniform sample of the other classes (sampling.py); ``sampled_rows`` then holds the rows
    of ``weight`` used by the last forward, and SampledRowsOptimizer keeps the optimizer from
    moving the others. ``seed`` and the ``step`` buffer fix the sample of each step.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        m1: float = 1.0,
        m2: float = 0.0,
        m3: float = 0.0,
        scale: float = 64.0,
        sample_rate: float = 1.0,
        group=None,
        fallback: str = "none",
        straight_through: bool = False,
        seed: int = 0,
        block_size: int | None = None,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        num_classes = check_positive_int("num_classes", num_classes)
        self.embedding_dim, self.num_classes = embedding_dim, num_classes
        self.margin = Margin(m1, m2, m3, fallback, 0.0, straight_through)
        self.scale = check_scale(scale)
        self.sample_rate = check_sample_rate(sample_rate)
        if block_size is not None:  # the chunked path coerced 0, -1 and 3.5 silently
            block_size = check_positive_int("block_size", block_size)
        self.group, self.seed, self.block_size = group, seed, block_size
        self.impl = check_impl(impl)
        self.rank, self.world_size = rank_and_world_size(group)
        self.start, self.stop = class_range(num_classes, self.world_size, self.rank)
        self.weight = nn.Parameter(torch.empty(self.stop - self.start, embedding_dim))
        # xavier_normal_ of the full (C, D) matrix, drawn shard by shard
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / (num_classes + embedding_dim)))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.sampled_rows: torch.Tensor | None = None  # rows of weight used by the last step

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor):
        x, amp_dtype = local_embeddings, None
        if isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type):
            amp_dtype = torch.get_autocast_dtype(x.device.type)  # the matmuls in it, loss fp32
            x = x.to(amp_dtype)
        like = self.weight if amp_dtype is None else self.weight[:0].to(amp_dtype)  # (0, D)
        layout = handshake(x, local_labels, like, self.num_classes, self.group)
        if layout.total == 0:  # no sample anywhere: a zero that keeps the graph
            return (x.sum() + self.weight.sum()) * 0
        labels = gather_rows(local_labels.long(), layout.sizes, self.group)  # (N,)
        inside = (labels >= self.start) & (labels < self.stop)
        local_target = torch.where(inside, labels - self.start, -1)  # (N,)
        weight = self.weight
        if self.sample_rate < 1 and self.training:
            generator = step_generator(self.seed, int(self.step), self.start, weight.device)
            rows = sample_rows(local_target, weight.shape[0], self.sample_rate, generator)
            self.sampled_rows = rows  # (K,)
            weight, local_target = weight[rows], remap_targets(local_target, rows)
            self.step += 1
        else:
            self.sampled_rows = None
        if amp_dtype is not None:
            weight = weight.to(amp_dtype)
        loss = sharded_margin_cross_entropy(
            x, weight, local_target, layout, self.scale, self.margin, self.group, self.block_size,
            self.impl,
        )
        if not bool(torch.isfinite(loss)):  # the same loss on every rank: all of them are here
            self._name_non_finite_shards()
        return loss if amp_dtype is None else loss.float()

    def _name_non_finite_shards(self) -> None:
        """The same ValueError on every rank when some rank's weight rows hold NaN or inf (a
        diverged run), instead of a silent NaN loss."""
        bad = torch.isfinite(self.weight).all().logical_not().long().view(1)  # (1,)
        ranks = all_gather_stack(bad, self.group).view(-1).nonzero().view(-1).tolist()
        if ranks:
            raise ValueError(f"weight contains non-finite values (NaN or inf) in the classes "
                             f"held by rank(s) {ranks}; the run has diverged")

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, "
            f"classes=[{self.start}, {self.stop}) of rank {self.rank}/{self.world_size}, "
            f"scale={self.scale}, margin={self.margin}, sample_rate={self.sample_rate}"
        )


class ArcFacePartialFC(PartialFC):
    """Sharded ArcFace: target logit s cos(theta + margin)."""

    def __init__(self, embedding_dim: int, num_classes: int, *, margin: float = 0.5,
                 scale: float = 64.0, fallback: str = "seed", **kwargs) -> None:
        if margin == 0:
            fallback = "none"
        super().__init__(embedding_dim, num_classes, m2=margin, scale=scale,
                         fallback=fallback, **kwargs)


class CosFacePartialFC(PartialFC):
    """Sharded CosFace: target logit s (cos(theta) - margin)."""

    def __init__(self, embedding_dim: int, num_classes: int, *, margin: float = 0.35,
                 scale: float = 64.0, **kwargs) -> None:
        super().__init__(embedding_dim, num_classes, m3=margin, scale=scale, **kwargs)
