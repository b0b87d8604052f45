"""The classic heads: NormFace, CosFace, ArcFace, SphereFace, the combined margin, and the
plain softmax loss. ``head(embeddings, labels)`` returns the scalar loss;
``loss, prec1 = head.loss_and_accuracy(embeddings, labels)`` is the seed's AAMsoftmax call."""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from ..functional import autocast_inputs, softmax_cross_entropy
from ..margins import Margin, check_m3
from ..validation import check_embeddings, check_labels
from .base import ClassCentresHead, MarginHead


class NormFace(MarginHead):
    """NormFace: cross-entropy over s cos(theta), no margin."""

    def __init__(self, embedding_dim: int, num_classes: int, *, scale: float = 30.0, impl="auto"):
        super().__init__(embedding_dim, num_classes, scale=scale, impl=impl)

    def margin_spec(self) -> Margin:
        return Margin()


class CosFace(MarginHead):
    """CosFace / AM-Softmax: target logit s (cos(theta) - margin), margin in [0, 2) (a
    cosine offset, margins.M3_MAX)."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        margin: float = 0.35,
        scale: float = 64.0,
        impl: str = "auto",
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale=scale, impl=impl)
        self.margin = margin
        self.margin_spec()  # validate now, not at the first forward

    def margin_spec(self) -> Margin:
        return Margin(m3=check_m3(self.margin, "margin"))


class ArcFace(MarginHead):
    """ArcFace / AAM-Softmax: target logit s cos(theta + margin), margin in [0, pi) radians.

    fallback where theta + margin > pi: "seed" (cos - m sin m; default, as the seed,
    SpeechBrain, voxceleb_trainer and PyTorch Metric Learning), "continuous"
    (cos - (1 - cos m), WeSpeaker), "none" (InsightFace), "easy" (margin only where cos > 0).
    straight_through=True passes the target gradient as if psi' = 1 (InsightFace's PyTorch)."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        margin: float = 0.5,
        scale: float = 64.0,
        fallback: str = "seed",
        straight_through: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale=scale, impl=impl)
        self.margin, self.fallback, self.straight_through = margin, fallback, straight_through
        self.margin_spec()

    def margin_spec(self) -> Margin:
        if isinstance(self.margin, numbers.Real) and not 0 <= self.margin < math.pi:
            raise ValueError(f"margin must be in [0, pi) radians, got {self.margin!r}")
        fallback = "none" if self.margin == 0 else self.fallback
        return Margin(m2=self.margin, fallback=fallback, straight_through=self.straight_through)


class SphereFace(MarginHead):
    """SphereFace / A-Softmax: target (-1)^k cos(m theta) - 2k with an integer margin m.

    With scale_by_norm=True the logits are scaled by |x| (the original, unnormalised
    A-Softmax and PyTorch Metric Learning's SphereFaceLoss with its ``scale``).
    anneal=True blends in the plain softmax at the start of training:
    target = (lambda cos + psi) / (1 + lambda),
    lambda = max(lambda_min, lambda_base * (1 + lambda_gamma * iteration) ** -lambda_power),
    with ``iteration`` counted by training-mode forwards, incremented before lambda is
    computed as the original Caffe layer does (the paper's 1000, 0.12, 1, 5)."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        margin: int = 4,
        scale: float = 30.0,
        scale_by_norm: bool = False,
        anneal: bool = False,
        lambda_base: float = 1000.0,
        lambda_gamma: float = 0.12,
        lambda_power: float = 1.0,
        lambda_min: float = 5.0,
        impl: str = "auto",
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale=scale, impl=impl)
        if isinstance(margin, bool) or not isinstance(margin, int) or margin < 1:
            raise ValueError(f"margin must be a positive int for SphereFace, got {margin!r}")
        self.margin, self.scale_by_norm, self.anneal = margin, scale_by_norm, anneal
        self.lambda_base, self.lambda_gamma = lambda_base, lambda_gamma
        self.lambda_power, self.lambda_min = lambda_power, lambda_min
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    @property
    def blend(self) -> float:
        """The current lambda (0 when annealing is off)."""
        if not self.anneal:
            return 0.0
        decayed = self.lambda_base * (1 + self.lambda_gamma * int(self.iteration)) ** (
            -self.lambda_power
        )
        return max(self.lambda_min, decayed)

    def margin_spec(self) -> Margin:
        return Margin(m1=float(self.margin), fallback="piecewise", blend=self.blend)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.anneal):
            return super().forward(embeddings, labels)
        self.iteration += 1
        try:
            return super().forward(embeddings, labels)
        except (TypeError, ValueError):  # bad input: the step did not happen
            self.iteration -= 1
            raise


class CombinedMargin(MarginHead):
    """Combined margin: target logit s (cos(m1 theta + m2) - m3), for any m1 > 0, m2 in
    [0, pi), m3 in [0, 2) (InsightFace's (1.0, 0.3, 0.2) by default), the full formula:
    fallback="none" by default; "continuous", "piecewise", "easy" or (m1 == 1) "seed" where
    m1 theta + m2 > pi."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        m1: float = 1.0,
        m2: float = 0.3,
        m3: float = 0.2,
        scale: float = 64.0,
        fallback: str = "none",
        straight_through: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale=scale, impl=impl)
        self.m1, self.m2, self.m3 = m1, m2, m3
        self.fallback, self.straight_through = fallback, straight_through
        self.margin_spec()

    def margin_spec(self) -> Margin:
        return Margin(self.m1, self.m2, self.m3, self.fallback, 0.0, self.straight_through)


class SoftmaxLoss(ClassCentresHead):
    """Plain softmax loss: cross_entropy(x W^T + b, y), no normalisation, optional bias."""

    def __init__(
        self, embedding_dim: int, num_classes: int, *, bias: bool = True, impl: str = "auto"
    ) -> None:
        super().__init__(embedding_dim, num_classes, impl=impl)
        if impl == "triton":  # now, not at the first forward
            raise ValueError("impl='triton' covers the margin losses; SoftmaxLoss takes "
                             "'auto', 'eager' or 'chunked'")
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return softmax_cross_entropy(embeddings, self.weight, labels, self.bias, impl=self.impl)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None):
        embeddings, weight, _ = autocast_inputs(embeddings, self.weight)
        check_embeddings(embeddings, weight)
        if labels is not None:  # no margin to apply, but the same checks as every head
            check_labels(labels, embeddings.shape[0], self.num_classes, embeddings.device)
        return torch.nn.functional.linear(embeddings, weight, self.bias)

    @torch.no_grad()
    def predict(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.logits(embeddings).argmax(dim=1)


AAMSoftmax = ArcFace
AMSoftmax = CosFace
