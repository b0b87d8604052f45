"""Class-sharded margin heads over torch.distributed (model parallel and Partial FC).

Each rank owns a contiguous block of the classes (sharding.py); the loss is exact across
ranks (sharded_loss.py); sample_rate < 1 is Partial FC (sampling.py, sampled_optimizer.py).
PartialFC is the combined margin; the heads with a per-sample target logit or a running
scale (AdaFace, MagFace, ElasticFace, CurricularFace, AdaCos) share their rule with the
single-device heads (target_heads.py).
Works with gloo on CPU, NCCL on GPU, and without any process group at world size 1.
"""

from .checkpoint import (
    load_full,
    load_rows,
    load_sharded,
    load_state,
    load_trainer_state,
    save_full,
    save_sharded,
)
from .partial_fc import ArcFacePartialFC, CosFacePartialFC, PartialFC
from .sampled_optimizer import SampledRowsOptimizer
from .sharded_head import ShardedHead
from .sharded_loss import sharded_margin_cross_entropy
from .sharded_target_loss import sharded_target_cross_entropy
from .sharding import class_range, class_ranges
from .target_heads import (
    AdaCosPartialFC,
    AdaFacePartialFC,
    CurricularFacePartialFC,
    ElasticArcFacePartialFC,
    ElasticCosFacePartialFC,
    MagFacePartialFC,
    SubCenterArcFacePartialFC,
    TargetPartialFC,
)

__all__ = [
    "AdaCosPartialFC",
    "AdaFacePartialFC",
    "ArcFacePartialFC",
    "CosFacePartialFC",
    "CurricularFacePartialFC",
    "ElasticArcFacePartialFC",
    "ElasticCosFacePartialFC",
    "MagFacePartialFC",
    "PartialFC",
    "SampledRowsOptimizer",
    "ShardedHead",
    "SubCenterArcFacePartialFC",
    "TargetPartialFC",
    "class_range",
    "class_ranges",
    "load_full",
    "load_rows",
    "load_sharded",
    "load_state",
    "load_trainer_state",
    "save_full",
    "save_sharded",
    "sharded_margin_cross_entropy",
    "sharded_target_cross_entropy",
]
