"""Loss names -> head classes, with defaults that suit the small embedded datasets.

    head = build_head("arcface", embedding_dim=64, num_classes=200, margin=0.3)

A new head is one entry in ``LOSSES``: its class and the defaults that override the class's
own (empty when the class's defaults are fine). Parameters are the head's keyword-only
constructor arguments; ``build_head`` rejects unknown ones with a message that lists the
accepted names.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class LossSpec:
    """A head class, by its name in ``margin_softmax.heads``, and the defaults used for it
    here (they override the class's own). The class is imported on first use, so the names
    below (and the command line's help) need no torch."""

    head_name: str
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def head(self) -> type[nn.Module]:
        return getattr(import_module(".heads", __package__), self.head_name)


# The scale 30 and the margins are smaller than the face-recognition defaults (s = 64,
# m = 0.5): with a few hundred classes and a small network those train slowly or not at all.
LOSSES: dict[str, LossSpec] = {
    "softmax": LossSpec("SoftmaxLoss"),
    "normface": LossSpec("NormFace", {"scale": 30.0}),
    "cosface": LossSpec("CosFace", {"margin": 0.3, "scale": 30.0}),
    "arcface": LossSpec("ArcFace", {"margin": 0.3, "scale": 30.0}),
    "sphereface": LossSpec("SphereFace", {"margin": 4, "anneal": True, "lambda_gamma": 0.5}),
    "combined": LossSpec("CombinedMargin", {"m1": 1.0, "m2": 0.2, "m3": 0.1, "scale": 30.0}),
    "subcenter-arcface": LossSpec("SubCenterArcFace", {"margin": 0.3, "scale": 30.0}),
    "adacos": LossSpec("AdaCos"),
    "curricularface": LossSpec("CurricularFace", {"margin": 0.3, "scale": 30.0}),
    "adaface": LossSpec("AdaFace", {"margin": 0.3, "scale": 30.0}),
    "magface": LossSpec("MagFace", {"scale": 30.0}),
    "elastic-arcface": LossSpec("ElasticArcFace", {"margin": 0.3, "scale": 30.0}),
    "elastic-cosface": LossSpec("ElasticCosFace", {"margin": 0.3, "scale": 30.0}),
}

ALIASES = {"am-softmax": "cosface", "aam-softmax": "arcface", "a-softmax": "sphereface"}

# What compare trains when --losses is not given.
DEFAULT_LOSSES = ("softmax", "normface", "cosface", "arcface", "sphereface", "combined")

# Constructor arguments the caller fixes; everything else keyword-only is a parameter.
_STRUCTURAL = ("self", "embedding_dim", "num_classes", "impl")


def loss_names() -> list[str]:
    """Every registered name (aliases excluded), in registration order."""
    return list(LOSSES)


def resolve_name(name: str) -> str:
    """The registered name for ``name`` or an alias of it; ValueError listing the choices."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(loss_names())}")
    return key


def head_parameters(name: str) -> dict[str, Any]:
    """The parameters of loss ``name`` and their values here (class default, then ours)."""
    spec = LOSSES[resolve_name(name)]
    signature = inspect.signature(spec.head.__init__)
    params = {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name not in _STRUCTURAL and p.kind is p.KEYWORD_ONLY
    }
    params.update(spec.defaults)
    return params


def build_head(
    name: str, embedding_dim: int, num_classes: int, *, impl: str = "auto", **params: Any
) -> nn.Module:
    """The head for loss ``name`` with the registry's defaults, updated by ``params``, on the
    path ``impl`` ("auto", "eager", "chunked" or "triton", as the head accepts)."""
    accepted = head_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"loss {name!r} has no parameter {unknown[0]!r}; its parameters are: "
            f"{', '.join(accepted) or '(none)'}"
        )
    spec = LOSSES[resolve_name(name)]
    return spec.head(embedding_dim, num_classes, impl=impl, **{**spec.defaults, **params})
