"""margin-softmax: the softmax family of losses for embedding models.

    import margin_softmax as ms
    head = ms.ArcFace(192, 5994, margin=0.2, scale=30.0)
    loss, prec1 = head.loss_and_accuracy(embeddings, labels)

The names below load on first use, so that ``import margin_softmax.reference`` (the NumPy
reference) does not import torch.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {  # public name -> the module that defines it
    **dict.fromkeys(("SubCenterCleaning", "find_outliers"), ".cleaning"),
    **dict.fromkeys(
        ("margin_cross_entropy", "softmax_cross_entropy", "target_cross_entropy"), ".functional"
    ),
    **dict.fromkeys(
        (
            "AAMSoftmax", "AMSoftmax", "AdaCos", "AdaFace", "ArcFace", "CombinedMargin",
            "CosFace", "CurricularFace", "ElasticArcFace", "ElasticCosFace", "MagFace",
            "NormFace", "SoftmaxLoss", "SphereFace", "SubCenterArcFace",
        ),
        ".heads",
    ),
    "Margin": ".margins",
    "MarginScheduler": ".scheduler",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'margin_softmax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    """The public names, each once: not the helpers above, nor the names loaded so far."""
    return [*__all__, "__version__"]
