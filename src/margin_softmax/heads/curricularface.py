"""CurricularFace (Huang et al., CVPR 2020): ArcFace whose hard negatives gain weight as
training goes on.

    T(cos_y)   = cos(theta_y + m)                     (the seed fallback past theta_y + m = pi)
    N(t, cos_j) = cos_j                  where cos_j <= cos(theta_y + m)
                = cos_j * (t + cos_j)    where cos_j >  cos(theta_y + m)   (hard negative)
    t <- momentum * mean_i cos_{i,y_i} + (1 - momentum) * t      (training forwards only)
    loss = cross_entropy(s * [T on the target, N elsewhere])

N is elementwise with a per-row threshold, so the chunked path applies it tile by tile
(HardNegatives below, with its slope t + 2 cos_j) and never holds the (N, C) logits.
"""

from __future__ import annotations

import torch

from ..margins import Margin, apply_margin
from .eager import TargetLogitHead, check_float
from .float64_state import Float64State, state_update


class HardNegatives:
    """N(t, cos) for target_cross_entropy: (cos, bar) -> (N, dN/dcos), with
    N = cos (t + cos), slope t + 2 cos where cos > bar, and cos, 1 elsewhere.
    row_param: each row's threshold bar_i = cos(theta_iy + m) (N,), no gradient."""

    def __init__(self, t: torch.Tensor, bar: torch.Tensor) -> None:
        self.t, self.row_param = t, bar

    def __call__(self, cos: torch.Tensor, bar: torch.Tensor):
        hard = cos > bar
        value = torch.where(hard, cos * (self.t + cos), cos)
        return value, torch.where(hard, self.t + 2 * cos, 1.0)


class CurricularFaceRule(Float64State):
    """CurricularFace's target logit, hard-negative transform and EMA, shared by the
    single-device head and the class-sharded one (distributed/target_heads.py): ``t`` is a
    float64 buffer (saved in state_dict; float64 whatever dtype the head is moved to),
    updated on training-mode forwards before the logits, frozen in eval mode. The head sets
    ``scale``."""

    FLOAT64_BUFFERS = ("t",)

    def init_rule(self, margin: float, momentum: float) -> None:
        self.margin = margin
        self.momentum = check_float("momentum", momentum, 0.0, 1.0)
        self.register_buffer("t", torch.zeros((), dtype=torch.float64))
        self.margin_spec()

    def margin_spec(self) -> Margin:
        """The target's Margin (ArcFace with the seed fallback, as the official code)."""
        check_float("margin", self.margin, 0.0, torch.pi, high_open=True)
        fallback = "none" if self.margin == 0 else "seed"
        return Margin(m2=self.margin, fallback=fallback)

    @state_update
    def update_state(self, cos_target, labels, embeddings):
        mean_target = cos_target.clamp(-1.0, 1.0).mean()
        self.t.mul_(1 - self.momentum).add_(self.momentum * mean_target.to(self.t.dtype))

    def target_logit(self, cos_target, embeddings):
        return self.scale * apply_margin(cos_target.clamp(-1.0, 1.0), self.margin_spec())

    def non_target(self, cos_target):
        with torch.no_grad():  # the threshold cos(theta_y + m), without fallback
            bar = Margin(m2=self.margin, fallback="none").psi(cos_target.clamp(-1.0, 1.0))
        return HardNegatives(self.t.to(cos_target.dtype), bar)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, momentum={self.momentum}"


class CurricularFace(CurricularFaceRule, TargetLogitHead):
    """CurricularFace with the official code's defaults (m = 0.5, s = 64, momentum 0.01,
    t starting at 0; CurricularFaceRule). impl: "auto", "eager" or "chunked" (the Triton
    kernels have no hard-negative transform)."""

    IMPLS = ("auto", "eager", "chunked")

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        margin: float = 0.5,
        scale: float = 64.0,
        momentum: float = 0.01,
        impl: str = "auto",
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale=scale, impl=impl)
        self.init_rule(margin, momentum)
