"""CurricularFace (Huang et al., CVPR 2020): ArcFace whose hard negatives gain weight as
training goes on.

    T(cos_y)   = cos(theta_y + m)                     (the seed fallback past theta_y + m = pi)
    N(t, cos_j) = cos_j                  where cos_j <= cos(theta_y + m)
                = cos_j * (t + cos_j)    where cos_j >  cos(theta_y + m)   (hard negative)
    t <- momentum * mean_i cos_{i,y_i} + (1 - momentum) * t      (training forwards only)
    loss = cross_entropy(s * [T on the target, N elsewhere])
"""

from __future__ import annotations

import torch

from ..margins import Margin, apply_margin
from .eager import EagerHead, check_float, replace_target, target_of


class CurricularFace(EagerHead):
    """CurricularFace with the official code's defaults (m = 0.5, s = 64, momentum 0.01,
    t starting at 0). ``t`` is a buffer (saved in state_dict), updated on each training-mode
    forward before the logits, frozen in eval mode."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        margin: float = 0.5,
        scale: float = 64.0,
        momentum: float = 0.01,
        impl: str = "eager",
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale=scale, impl=impl)
        self.margin = margin
        self.momentum = check_float("momentum", momentum, 0.0, 1.0)
        self.register_buffer("t", torch.zeros((), dtype=torch.float64))
        self.margin_spec()

    def margin_spec(self) -> Margin:
        """The target's Margin (ArcFace with the seed fallback, as the official code)."""
        check_float("margin", self.margin, 0.0, torch.pi, high_open=True)
        fallback = "none" if self.margin == 0 else "seed"
        return Margin(m2=self.margin, fallback=fallback)

    def update_state(self, cos, labels, embeddings):
        mean_target = target_of(cos, labels).clamp(-1.0, 1.0).mean()
        self.t.mul_(1 - self.momentum).add_(self.momentum * mean_target.to(self.t.dtype))

    def training_logits(self, cos, labels, embeddings):
        cos = cos.clamp(-1.0, 1.0)
        target = target_of(cos, labels)  # (N,)
        with torch.no_grad():
            bar = Margin(m2=self.margin, fallback="none").psi(target)  # cos(theta_y + m)
            hard = cos > bar[:, None]  # (N, C); the target column is replaced below
        t = self.t.to(cos.dtype)
        cos = torch.where(hard, cos * (t + cos), cos)
        psi = apply_margin(target, self.margin_spec())  # (N,)
        return self.scale * replace_target(cos, labels, psi)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, momentum={self.momentum}"
