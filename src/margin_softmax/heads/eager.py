"""The bases of the heads that do not fit the functional core's one Margin per batch, and the
per-sample margin math.

- ``TargetLogitHead``: the target transform differs from sample to sample (AdaFace, MagFace,
  ElasticFace), and the non-target logits are scale * cos or an elementwise transform of it
  (CurricularFace). The head computes t_i from the N target cosines (and |x_i|, its draws)
  with ordinary autograd and calls functional.target_cross_entropy, so impl="chunked" (or
  "auto" at large N * C) never holds the (N, C) logits.
- ``EagerHead``: sub-centres are pooled, and the hard negatives are the top k of each row
  (SubCenterArcFace). It builds its (N, C) training logits in plain PyTorch and takes the
  cross-entropy over them; SubCenterArcFace without the penalty also has a chunked path
  (chunked/subcenters.py), no Triton one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..functional import (
    autocast_inputs,
    checked_loss,
    cosine_logits,
    empty_loss,
    target_cosines,
    target_cross_entropy,
)
from ..margins import clamp_eps
from ..validation import check_embeddings, check_labels, check_scale, real_number
from ..zero_rows import zero_rows_get_no_gradient
from .base import ClassCentresHead

ARC_FALLBACKS = ("none", "seed", "continuous", "easy")


class _SinFromCos(torch.autograd.Function):
    """sqrt(1 - c^2) with the derivative -c / sqrt(1 - c^2) taken at c clamped to
    +-(1 - eps): finite at c = +-1, as margins.py does for psi'."""

    @staticmethod
    def forward(ctx, cos: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos)
        return torch.sqrt((1 - cos * cos).clamp_min(0))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (cos,) = ctx.saved_tensors
        eps = clamp_eps(cos.dtype)
        c = cos.clamp(-1 + eps, 1 - eps)
        return grad * (-c / torch.sqrt(1 - c * c))


def sin_from_cos(cos: torch.Tensor) -> torch.Tensor:
    """sin(theta) = sqrt(1 - cos^2) for theta in [0, pi], with a finite gradient at +-1."""
    return _SinFromCos.apply(cos.clamp(-1.0, 1.0))


def cos_plus_angle(cos: torch.Tensor, m: torch.Tensor | float) -> torch.Tensor:
    """cos(theta + m) = cos * cos(m) - sin(theta) * sin(m), elementwise; m a float or a
    tensor broadcastable to cos (per-sample margins, with autograd through m too)."""
    m = torch.as_tensor(m, dtype=cos.dtype, device=cos.device)
    return cos.clamp(-1.0, 1.0) * torch.cos(m) - sin_from_cos(cos) * torch.sin(m)


def arc_margin(cos: torch.Tensor, m: torch.Tensor | float, fallback: str) -> torch.Tensor:
    """ArcFace's target cos(theta + m) with a per-sample m (N,) and margins.py's fallbacks:
    "none" (as it is), "seed" (cos - m sin m where theta + m >= pi), "continuous"
    (cos - (1 - cos m) there), "easy" (plain cos where cos <= 0)."""
    m = torch.as_tensor(m, dtype=cos.dtype, device=cos.device)
    value = cos_plus_angle(cos, m)  # (N,)
    c = cos.clamp(-1.0, 1.0)
    if fallback == "easy":
        return torch.where(c > 0, value, c)
    beyond = c <= torch.cos(math.pi - m.detach())  # theta + m >= pi
    if fallback == "seed":
        return torch.where(beyond, c - m * torch.sin(m), value)
    if fallback == "continuous":
        return torch.where(beyond, c - (1 - torch.cos(m)), value)
    return value


def check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_float(name: str, value, low: float = -math.inf, high: float = math.inf,
                low_open: bool = False, high_open: bool = False) -> float:
    """value as a float in the interval [low, high] (ends open where asked)."""
    value = real_number(name, value)
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if not math.isfinite(value) or below or above:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a finite float in {interval}, got {value!r}")
    return float(value)


def check_rule(head) -> None:
    """Raise the ValueError of a bad margin parameter (a scheduler may have set one) before a
    forward moves any running state: the eval-view target logit of one dummy sample, whose
    rule validates its parameters (no draws, no state change)."""
    device = head.weight.device
    with torch.no_grad():
        head.target_logit(torch.zeros(1, device=device),
                          torch.ones(1, head.embedding_dim, device=device))


class EagerHead(ClassCentresHead):
    """A scaled-cosine head whose loss is cross_entropy(training_logits, labels) over the
    materialised (N, C) logits. Subclasses define ``training_logits`` (a pure function of
    the cosines and the current state) and, for adaptive state, ``update_state`` (called
    under no_grad in training mode only, before the logits: eval mode freezes the state)."""

    IMPLS = ("auto", "eager")  # these heads have one path: eager

    def __init__(self, embedding_dim: int, num_classes: int, *, scale: float, impl: str):
        check_choice("impl", impl, self.IMPLS)
        super().__init__(embedding_dim, num_classes, impl=impl)
        self.scale = check_scale(scale)

    def cosine(self, embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(N, C) cosines between the embeddings and the class centres."""
        return cosine_logits(embeddings, weight)

    def update_state(self, cos: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor):
        """Update EMAs / adaptive parameters from a training batch (no gradient)."""

    def training_logits(
        self, cos: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor
    ) -> torch.Tensor:
        """The (N, C) scaled logits the cross-entropy sees."""
        raise NotImplementedError

    def extra_loss(self, embeddings: torch.Tensor) -> torch.Tensor | float:
        """A term added to the cross-entropy (MagFace's regulariser); 0 by default."""
        return 0.0

    def _inputs(self, embeddings: torch.Tensor, labels: torch.Tensor | None):
        embeddings, weight, out_dtype = autocast_inputs(embeddings, self.weight)
        check_embeddings(embeddings, weight)
        if labels is not None:
            labels = check_labels(labels, embeddings.shape[0], self.num_classes,
                                  embeddings.device)
        return zero_rows_get_no_gradient(embeddings), weight, labels, out_dtype

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings, weight, labels, out_dtype = self._inputs(embeddings, labels)
        if embeddings.shape[0] == 0:
            return empty_loss("mean", embeddings, weight).to(out_dtype)
        cos = self.cosine(embeddings, weight)  # (N, C)
        if self.training:
            with torch.no_grad():
                self.update_state(cos.detach(), labels, embeddings.detach())
        logits = self.training_logits(cos, labels, embeddings)  # (N, C)
        loss = F.cross_entropy(logits, labels) + self.extra_loss(embeddings)
        return checked_loss(loss, weight).to(out_dtype)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None):
        """(N, C) logits: the training view (margins, current state, no update) where labels
        are given, scale * cos otherwise."""
        embeddings, weight, labels, _ = self._inputs(embeddings, labels)
        cos = self.cosine(embeddings, weight)  # (N, C)
        if labels is None:
            return self.scale * cos
        return self.training_logits(cos, labels, embeddings)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}"


class TargetLogitHead(EagerHead):
    """A head whose target logit is set per sample: logit_iy = t_i, computed by
    ``target_logit`` from the target cosines cos_iy (N,) and the embeddings (autograd through
    both), and logit_ij = scale * f_i(cos_ij) elsewhere, f the identity or the elementwise
    ``non_target`` transform. forward gathers the N target rows of weight for cos_iy and runs
    functional.target_cross_entropy: impl "eager", "chunked" (never the (N, C) logits),
    "triton" (the kernels, CUDA; not with a non-target transform) or "auto" (as the core
    decides: triton on CUDA, chunked at large N * C). ``update_state`` receives the target
    cosines (N,) here."""

    IMPLS = ("auto", "eager", "chunked", "triton")

    def target_logit(self, cos_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """t_i (N,) for the current state (eval view; also the training view of ``logits``)."""
        raise NotImplementedError

    def training_target_logit(self, cos_target, embeddings) -> torch.Tensor:
        """t_i (N,) in a training forward, after update_state (ElasticFace draws here)."""
        return self.target_logit(cos_target, embeddings)

    def non_target(self, cos_target: torch.Tensor):
        """None (logit_ij = scale * cos_ij), or the transform f for target_cross_entropy."""
        return None

    def training_logits(self, cos, labels, embeddings):
        cos_target = target_of(cos, labels)  # (N,)
        f = self.non_target(cos_target)
        if f is not None:
            cos = f(cos, f.row_param[:, None])[0]  # (N, C)
        return replace_target(self.scale * cos, labels, self.target_logit(cos_target, embeddings))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings, weight, labels, out_dtype = self._inputs(embeddings, labels)
        if embeddings.shape[0] == 0:
            return empty_loss("mean", embeddings, weight).to(out_dtype)
        check_rule(self)  # before update_state: a bad margin moves no state
        cos_target = target_cosines(embeddings, weight, labels)  # (N,)
        if self.training:
            with torch.no_grad():
                self.update_state(cos_target.detach(), labels, embeddings.detach())
            target = self.training_target_logit(cos_target, embeddings)  # (N,)
        else:
            target = self.target_logit(cos_target, embeddings)
        loss = target_cross_entropy(
            embeddings, weight, labels, target, scale=self.scale, impl=self.impl,
            non_target=self.non_target(cos_target),
        )
        return (loss + self.extra_loss(embeddings)).to(out_dtype)


def replace_target(cos: torch.Tensor, labels: torch.Tensor, target: torch.Tensor):
    """cos (N, C) with column labels[i] of row i replaced by target[i] (autograd-safe)."""
    return cos.scatter(1, labels[:, None], target[:, None].to(cos.dtype))


def target_of(cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """cos[i, labels[i]] (N,)."""
    return cos.gather(1, labels[:, None]).squeeze(1)
