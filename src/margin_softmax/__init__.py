"""margin-softmax: the softmax family of losses for embedding models.

    import margin_softmax as ms
    head = ms.ArcFace(192, 5994, margin=0.2, scale=30.0)
    loss, prec1 = head.loss_and_accuracy(embeddings, labels)
"""

from .cleaning import SubCenterCleaning, find_outliers
from .functional import margin_cross_entropy, softmax_cross_entropy, target_cross_entropy
from .heads import (
    AAMSoftmax,
    AdaCos,
    AdaFace,
    AMSoftmax,
    ArcFace,
    CombinedMargin,
    CosFace,
    CurricularFace,
    ElasticArcFace,
    ElasticCosFace,
    MagFace,
    NormFace,
    SoftmaxLoss,
    SphereFace,
    SubCenterArcFace,
)
from .margins import Margin
from .scheduler import MarginScheduler

__version__ = "0.1.0"

__all__ = [
    "AAMSoftmax",
    "AMSoftmax",
    "AdaCos",
    "AdaFace",
    "ArcFace",
    "CombinedMargin",
    "CosFace",
    "CurricularFace",
    "ElasticArcFace",
    "ElasticCosFace",
    "MagFace",
    "Margin",
    "MarginScheduler",
    "NormFace",
    "SoftmaxLoss",
    "SphereFace",
    "SubCenterArcFace",
    "SubCenterCleaning",
    "find_outliers",
    "margin_cross_entropy",
    "softmax_cross_entropy",
    "target_cross_entropy",
]
