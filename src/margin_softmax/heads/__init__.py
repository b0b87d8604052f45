"""nn.Module heads that own the class centres and call the functional core."""

from .adacos import AdaCos
from .adaface import AdaFace
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
from .curricularface import CurricularFace
from .elastic import ElasticArcFace, ElasticCosFace
from .magface import MagFace
from .subcenter import SubCenterArcFace

__all__ = [
    "AAMSoftmax",
    "AMSoftmax",
    "AdaCos",
    "AdaFace",
    "ArcFace",
    "ClassCentresHead",
    "CombinedMargin",
    "CosFace",
    "CurricularFace",
    "ElasticArcFace",
    "ElasticCosFace",
    "MagFace",
    "MarginHead",
    "NormFace",
    "SoftmaxLoss",
    "SphereFace",
    "SubCenterArcFace",
]
