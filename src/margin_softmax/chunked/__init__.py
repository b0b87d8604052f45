"""The memory-efficient PyTorch path (any device): margin cross-entropy without the (N, C)
logits. See docs/scale.md for the design."""

from .function import (
    chunked_margin_cross_entropy,
    chunked_softmax_cross_entropy,
    chunked_target_cross_entropy,
)
from .shard import shard_gradients, shard_logsumexp

__all__ = [
    "chunked_margin_cross_entropy",
    "chunked_softmax_cross_entropy",
    "chunked_target_cross_entropy",
    "shard_gradients",
    "shard_logsumexp",
]
