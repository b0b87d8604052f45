"""PartialFC: the combined-margin head over classes sharded across the ranks of a process
group, with optional Partial FC class sampling. See docs/distributed.md.

    head = PartialFC(512, 1_000_000, m2=0.5, scale=64.0, sample_rate=0.1)  # ArcFace
    loss = head(local_embeddings, local_labels)  # global mean loss, the same on every rank
    loss.backward()                              # on every rank
"""

from __future__ import annotations

from ..margins import Margin
from .sharded_head import ShardedHead
from .sharded_loss import sharded_margin_cross_entropy


class PartialFC(ShardedHead):
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
        super().__init__(embedding_dim, num_classes, scale=scale, sample_rate=sample_rate,
                         group=group, seed=seed, block_size=block_size, impl=impl)
        self.margin = Margin(m1, m2, m3, fallback, 0.0, straight_through)

    def sharded_loss(self, x, weight, labels, local_target, layout):
        return sharded_margin_cross_entropy(
            x, weight, local_target, layout, self.scale, self.margin, self.group,
            self.block_size, self.impl,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}"


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
