"""AdaCos (Zhang et al., CVPR 2019): NormFace with an adaptive scale and no margin.

    fixed:    s = sqrt(2) * log(C - 1)
    dynamic:  B_avg = (1/N) sum_i sum_{j != y_i} exp(s_old * cos_ij)
              theta_med = median_i theta_{i,y_i}
              s = log(B_avg) / cos(min(pi/4, theta_med))

The dynamic update runs on every training-mode forward, before the loss (which then uses the
new s), without gradient; the loss itself goes through the functional core (any impl).
"""

from __future__ import annotations

import math

import torch

from ..functional import AUTO_CHUNK_ELEMENTS, autocast_inputs
from ..margins import Margin
from ..numerics import normalize
from ..validation import MAX_SCALE, check_embeddings, check_labels, check_scale
from .base import MarginHead
from .float64_state import Float64State, state_update


class AdaptiveScale(Float64State):
    """AdaCos's scale, shared by the single-device head and the class-sharded one
    (distributed/target_heads.py): the float64 buffer ``adaptive_scale`` (saved in
    state_dict, float64 whatever dtype the head is moved to), read and set as ``scale``."""

    FLOAT64_BUFFERS = ("adaptive_scale",)

    @property
    def scale(self) -> float:
        return float(self.adaptive_scale)

    @scale.setter
    def scale(self, value: float) -> None:
        value = check_scale(value)
        if "adaptive_scale" in self._buffers:
            self.adaptive_scale.fill_(value)
        else:
            self.register_buffer("adaptive_scale", torch.tensor(value, dtype=torch.float64))

    @staticmethod
    def check_dynamic(dynamic) -> bool:
        if not isinstance(dynamic, bool):  # "False" from a config would mean True
            raise TypeError(f"dynamic must be a bool, got {dynamic!r}")
        return dynamic

    @staticmethod
    def fixed_scale(num_classes: int) -> float:
        """The paper's fixed s = sqrt(2) log(C - 1); C >= 3."""
        if num_classes < 3:
            raise ValueError(
                f"num_classes must be >= 3 for AdaCos (s = sqrt(2) log(C - 1) > 0), "
                f"got {num_classes!r}"
            )
        return math.sqrt(2) * math.log(num_classes - 1)

    def set_dynamic_scale(self, log_b_avg: torch.Tensor, cos_target: torch.Tensor) -> float:
        """s = log(B_avg) / cos(min(pi/4, theta_med)) from log B_avg (0-d) and the batch's
        target cosines (N,); a result outside check_scale's (0, MAX_SCALE] (or not finite)
        leaves the scale unchanged. Returns the scale."""
        theta_med = torch.acos(cos_target.clamp(-1.0, 1.0)).median()
        new = float(log_b_avg / torch.cos(theta_med.clamp(max=math.pi / 4)))
        if math.isfinite(new) and 0 < new <= MAX_SCALE:
            self.scale = new
        return self.scale


class AdaCos(AdaptiveScale, MarginHead):
    """AdaCos. scale=None starts from the paper's fixed s = sqrt(2) log(C - 1);
    dynamic=False keeps the scale fixed (the paper's "fixed AdaCos").
    The current scale is the buffer ``adaptive_scale`` (AdaptiveScale); ``scale`` reads it
    as a float."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        scale: float | None = None,
        dynamic: bool = True,
        impl: str = "auto",
    ) -> None:
        initial = 1.0 if scale is None else scale  # the fixed s is set below, once C is checked
        super().__init__(embedding_dim, num_classes, scale=initial, impl=impl)
        fixed = self.fixed_scale(num_classes)
        if scale is None:
            self.scale = fixed
        self.dynamic = self.check_dynamic(dynamic)

    def margin_spec(self) -> Margin:
        return Margin()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dynamic:
            self.update_scale(embeddings, labels)
        return super().forward(embeddings, labels)

    @state_update
    @torch.no_grad()
    def update_scale(self, embeddings: torch.Tensor, labels: torch.Tensor) -> float:
        """The dynamic update from one batch; returns the new scale. B_avg is accumulated as
        a log-sum-exp over blocks of classes (no (N, C) matrix, no overflow); an empty batch, or
        one whose update is not a finite positive number, leaves the scale unchanged."""
        embeddings, weight, _ = autocast_inputs(embeddings, self.weight)  # as the loss does
        check_embeddings(embeddings, weight)
        labels = check_labels(labels, embeddings.shape[0], self.num_classes, embeddings.device)
        if embeddings.shape[0] == 0:
            return self.scale
        x = normalize(embeddings.float() if embeddings.dtype != torch.float64 else embeddings)
        w = weight.to(x.dtype)
        n, s_old = x.shape[0], self.scale
        block = max(1, AUTO_CHUNK_ELEMENTS // n)
        lse = torch.full((), -math.inf, dtype=x.dtype, device=x.device)
        with torch.autocast(x.device.type, enabled=False):  # a float32 statistic
            for start in range(0, self.num_classes, block):
                cos = x @ normalize(w[start : start + block]).t()  # (N, B)
                inside = (labels >= start) & (labels < start + cos.shape[1])  # target here
                cos[inside, (labels - start)[inside]] = -math.inf
                lse = torch.logaddexp(lse, torch.logsumexp(s_old * cos, dim=(0, 1)))
        cos_target = (x * normalize(w[labels])).sum(1)  # (N,)
        return self.set_dynamic_scale(lse - math.log(n), cos_target)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dynamic={self.dynamic}"
