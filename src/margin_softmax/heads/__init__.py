"""nn.Module heads that own the class centres and call the functional core."""

from .base import ClassCentresHead, MarginHead
from .classic import (
    AAMSoftmax,
    AMSoftmax,
    ArcFace,
    CombinedMargin,
    CosFace,
    NormFace,
    SoftmaxLoss,
    SphereFace,
)

__all__ = [
    "AAMSoftmax",
    "AMSoftmax",
    "ArcFace",
    "ClassCentresHead",
    "CombinedMargin",
    "CosFace",
    "MarginHead",
    "NormFace",
    "SoftmaxLoss",
    "SphereFace",
]
