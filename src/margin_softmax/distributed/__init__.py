"""Class-sharded margin heads over torch.distributed (model parallel and Partial FC).

Each rank owns a contiguous block of the classes (sharding.py); the loss is exact across
ranks (sharded_loss.py); sample_rate < 1 is Partial FC (sampling.py, sampled_optimizer.py).
Works with gloo on CPU, NCCL on GPU, and without any process group at world size 1.
"""

from .checkpoint import load_full, load_rows, load_sharded, save_full, save_sharded
from .partial_fc import ArcFacePartialFC, CosFacePartialFC, PartialFC
from .sampled_optimizer import SampledRowsOptimizer
from .sharded_loss import sharded_margin_cross_entropy
from .sharding import class_range, class_ranges

__all__ = [
    "ArcFacePartialFC",
    "CosFacePartialFC",
    "PartialFC",
    "SampledRowsOptimizer",
    "class_range",
    "class_ranges",
    "load_full",
    "load_rows",
    "load_sharded",
    "save_full",
    "save_sharded",
    "sharded_margin_cross_entropy",
]
