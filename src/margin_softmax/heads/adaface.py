"""AdaFace (Kim et al., CVPR 2022): a margin that adapts to the feature norm, an image
quality proxy. With a_i = clip(|x_i|, 0.001, 100) (no gradient) and the batch statistics
mu, sigma of a (EMAs):

    z_i       = clip(h * (a_i - mu) / (sigma + eps), -1, 1)
    g_angular = -m * z_i,   g_additive = m + m * z_i
    logit_iy  = s * (cos(clip(theta_iy + g_angular, eps, pi - eps)) - g_additive)
    logit_ij  = s * cos_ij                                            (j != y_i)

z = -1 (low norm, poor image) gives ArcFace's cos(theta + m), z = 0 CosFace's cos - m, and
z = 1 (high norm) cos(theta - m) - 2m, which weights hard samples more. eps = 1e-3; the
target cosine is clamped to +-(1 - eps).
"""

from __future__ import annotations

import math

import torch

from .eager import TargetLogitHead, check_float
from .float64_state import Float64State, state_update

EPS = 1e-3  # the official code's eps: cosine clamp, theta clip and the std guard


class AdaFaceRule(Float64State):
    """AdaFace's target logit and running state, shared by the single-device head and the
    class-sharded one (distributed/target_heads.py): the parameters m, h, t_alpha and the
    float64 EMAs ``batch_mean`` and ``batch_std`` (start at 20 and 100, saved in state_dict),
    updated on training-mode forwards before the margins are computed (as the official code
    does), frozen in eval mode. The head sets ``scale``."""

    FLOAT64_BUFFERS = ("batch_mean", "batch_std")

    def init_rule(self, margin: float, h: float, t_alpha: float) -> None:
        self.margin = check_float("margin", margin, 0.0, math.pi / 2)
        self.h = check_float("h", h, 0.0)
        self.t_alpha = check_float("t_alpha", t_alpha, 0.0, 1.0)
        self.register_buffer("batch_mean", torch.tensor(20.0, dtype=torch.float64))
        self.register_buffer("batch_std", torch.tensor(100.0, dtype=torch.float64))

    @staticmethod
    def feature_norms(embeddings: torch.Tensor) -> torch.Tensor:
        """a_i = clip(|x_i|, 0.001, 100), without gradient (N,)."""
        return embeddings.detach().norm(dim=1).clamp(0.001, 100.0)

    @state_update
    def update_state(self, cos, labels, embeddings):
        norms = self.feature_norms(embeddings).to(self.batch_mean.dtype)  # (N,)
        self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * norms.mean())
        if norms.shape[0] > 1:  # the std of one sample is undefined (NaN): keep the old one
            self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * norms.std())

    def margin_scaler(self, embeddings: torch.Tensor) -> torch.Tensor:
        """z_i = clip(h * (a_i - mu) / (sigma + eps), -1, 1) (N,)."""
        norms = self.feature_norms(embeddings).to(self.batch_mean.dtype)
        z = self.h * (norms - self.batch_mean) / (self.batch_std + EPS)
        return z.clamp(-1.0, 1.0)

    def target_logit(self, cos_target, embeddings):
        m = check_float("margin", self.margin, 0.0, math.pi / 2)  # a scheduler may change it
        z = self.margin_scaler(embeddings).to(cos_target.dtype)  # (N,)
        g_angular, g_additive = -m * z, m + m * z
        theta = torch.acos(cos_target.clamp(-1 + EPS, 1 - EPS))  # (N,)
        psi = torch.cos((theta + g_angular).clamp(EPS, math.pi - EPS)) - g_additive
        return self.scale * psi

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, h={self.h}, t_alpha={self.t_alpha}"


class AdaFace(AdaFaceRule, TargetLogitHead):
    """AdaFace with the official training defaults (m = 0.4, h = 0.333, s = 64,
    t_alpha = 0.01; the EMAs start at mean 20, std 100; AdaFaceRule). impl: "auto", "eager",
    "chunked" (never the (N, C) logits) or "triton" (CUDA)."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        margin: float = 0.4,
        h: float = 0.333,
        scale: float = 64.0,
        t_alpha: float = 0.01,
        impl: str = "auto",
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale=scale, impl=impl)
        self.init_rule(margin, h, t_alpha)
