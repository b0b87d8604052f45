"""ShardedHead: the base of the class-sharded heads. It owns this rank's block of class
centres and runs the steps that every sharded head shares; subclasses define the loss.

    forward(local_embeddings (n_r, D), local_labels (n_r,)):
        handshake          check every rank's inputs and that the ranks' heads agree
                           (agreement.py), agree on the batch sizes (handshake.py)
        gather labels      the global labels (N,), in rank order
        local_target       each label's row in this rank's block, -1 where another rank owns it
        sample             sample_rate < 1 in training: the positives and a uniform sample of
                           the other classes (sampling.py)
        sharded_loss       the subclass's global mean loss, the same on every rank
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from ..validation import check_positive_int, check_scale
from ..zero_rows import zero_rows_get_no_gradient
from .agreement import head_config
from .comm import all_gather_stack, gather_rows, rank_and_world_size
from .handshake import BatchLayout, handshake
from .sampling import check_sample_rate, remap_targets, sample_rows, step_generator
from .sharded_loss import check_impl
from .sharding import class_range


class ShardedHead(nn.Module):
    """``weight`` (stop - start, D) holds this rank's classes [start, stop) in class order
    (sharding.py), drawn as a xavier_normal_ of the full (C, D) matrix; with rows_per_class
    K > 1 (sub-centres) it is ((stop - start) K, D), class c in rows cK ... cK + K - 1.
    Subclasses define ``sharded_loss``. sample_rate, seed: Partial FC sampling over classes
    (``sampled_rows`` holds the rows of ``weight`` used by the last forward; the ``step``
    buffer fixes each step's sample). impl, block_size: how each shard's softmax runs
    (sharded_loss.py)."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        scale: float,
        sample_rate: float = 1.0,
        group=None,
        seed: int = 0,
        block_size: int | None = None,
        impl: str = "auto",
        rows_per_class: int = 1,
    ) -> None:
        super().__init__()
        embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        num_classes = check_positive_int("num_classes", num_classes)
        self.embedding_dim, self.num_classes = embedding_dim, num_classes
        self.scale = check_scale(scale)
        self.sample_rate = check_sample_rate(sample_rate)
        if block_size is not None:  # the chunked path coerced 0, -1 and 3.5 silently
            block_size = check_positive_int("block_size", block_size)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int (the same on every rank), got {seed!r}")
        self.group, self.seed, self.block_size = group, int(seed), block_size
        self.impl = check_impl(impl)
        self.rank, self.world_size = rank_and_world_size(group)
        self.start, self.stop = class_range(num_classes, self.world_size, self.rank)
        self.rows_per_class = k = check_positive_int("rows_per_class", rows_per_class)
        self.weight = nn.Parameter(torch.empty((self.stop - self.start) * k, embedding_dim))
        # xavier_normal_ of the full (C K, D) matrix, drawn shard by shard
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / (num_classes * k + embedding_dim)))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.sampled_rows: torch.Tensor | None = None  # rows of weight used by the last step
        self.rows_since_step: list[torch.Tensor] = []  # every sample since the optimizer's

    def sharded_loss(self, x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                     local_target: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
        """The global mean loss (a scalar, the same on every rank). x (n_r, D) this rank's
        embeddings; weight (K, D) this rank's (sampled) rows; labels (N,) the global labels;
        local_target (N,) each label's row in ``weight`` or -1."""
        raise NotImplementedError

    def check_parameters(self) -> None:
        """Raise TypeError or ValueError for a bad parameter (a scheduler's), on this rank;
        the handshake turns it into the same error on every rank, before any state moves."""

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor):
        x, amp_dtype = local_embeddings, None
        if isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type):
            amp_dtype = torch.get_autocast_dtype(x.device.type)  # the matmuls in it, loss fp32
            x = x.to(amp_dtype)
        like = self.weight if amp_dtype is None else self.weight[:0].to(amp_dtype)  # (0, D)
        layout = handshake(x, local_labels, like, self.num_classes, self.group,
                           self.check_parameters, head_config(self, like.dtype))
        if layout.total == 0:  # no sample anywhere: a zero that keeps the graph
            return (x.sum() + self.weight.sum()) * 0
        x = zero_rows_get_no_gradient(x)  # float16: a zero row's gradient 0, not g / eps = inf
        labels = gather_rows(local_labels.long(), layout.sizes, self.group)  # (N,)
        inside = (labels >= self.start) & (labels < self.stop)
        local_target = torch.where(inside, labels - self.start, -1)  # (N,)
        weight = self.weight
        if self.sample_rate < 1 and self.training:
            generator = step_generator(self.seed, int(self.step), self.start, weight.device)
            kept = sample_rows(local_target, self.stop - self.start, self.sample_rate,
                               generator)  # (S,) classes of this block
            k = self.rows_per_class
            rows = (kept[:, None] * k + torch.arange(k, device=kept.device)).view(-1)  # (S K,)
            self.sampled_rows = rows
            self.rows_since_step.append(rows)  # gradient accumulation: SampledRowsOptimizer
            weight, local_target = weight[rows], remap_targets(local_target, kept)
            self.step += 1
        else:
            self.sampled_rows = None
        if amp_dtype is not None:
            weight = weight.to(amp_dtype)
        loss = self.sharded_loss(x, weight, labels, local_target, layout)
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
            f"scale={self.scale}, sample_rate={self.sample_rate}"
        )
