"""margin-softmax: the softmax family of losses for embedding models.

    import margin_softmax as ms
    head = ms.ArcFace(192, 5994, margin=0.2, scale=30.0)
    loss, prec1 = head.loss_and_accuracy(embeddings, labels)
"""

from .functional import margin_cross_entropy, softmax_cross_entropy
from .heads import (
    AAMSoftmax,
    AMSoftmax,
    ArcFace,
    CombinedMargin,
    CosFace,
    NormFace,
    SoftmaxLoss,
    SphereFace,
)
from .margins import Margin

__version__ = "0.1.0"

__all__ = [
    "AAMSoftmax",
    "AMSoftmax",
    "ArcFace",
    "CombinedMargin",
    "CosFace",
    "Margin",
    "NormFace",
    "SoftmaxLoss",
    "SphereFace",
    "margin_cross_entropy",
    "softmax_cross_entropy",
]
