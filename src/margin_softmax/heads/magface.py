"""MagFace (Meng et al., CVPR 2021): an ArcFace margin that grows with the feature magnitude,
plus a regulariser that rewards large magnitudes, so |x| learns to measure quality.

    a_i  = clip(|x_i|, l_a, u_a)                        (with gradient, inside the bounds)
    m(a) = l_margin + (u_margin - l_margin) * (a - l_a) / (u_a - l_a)
    g(a) = 1 / a + a / u_a^2
    loss = cross_entropy(s * [cos(theta_y + m(a_i)) on the target, cos elsewhere])
           + lambda_g * mean_i g(a_i)
"""

from __future__ import annotations

import math
import warnings

import torch

from .eager import TargetLogitHead, arc_margin, check_choice, check_float


def margin_bounds(l_margin: float, u_margin: float) -> tuple[float, float]:
    """(l_margin, u_margin) as floats in [0, pi), l_margin <= u_margin; the ValueError of a
    wrong order names both (a scheduler may move either one past the other)."""
    low = check_float("l_margin", l_margin, 0.0, math.pi, high_open=True)
    high = check_float("u_margin", u_margin, 0.0, math.pi, high_open=True)
    if high < low:
        raise ValueError(f"l_margin must be <= u_margin, got l_margin={low!r} > "
                         f"u_margin={high!r} (the margin would shrink as |x| grows)")
    return low, high


class MagFaceRule:
    """MagFace's target logit and regulariser, shared by the single-device head and the
    class-sharded one (distributed/target_heads.py). No running state. The head sets
    ``scale``; the margin's gradient through |x_i| flows by autograd through the target
    logit."""

    def init_rule(self, l_a: float, u_a: float, l_margin: float, u_margin: float,
                  lambda_g: float, fallback: str) -> None:
        self.l_a = check_float("l_a", l_a, 0.0, low_open=True)
        self.u_a = check_float("u_a", u_a, self.l_a, low_open=True)
        self.l_margin, self.u_margin = margin_bounds(l_margin, u_margin)
        self.lambda_g = check_float("lambda_g", lambda_g, 0.0)
        check_choice("fallback", fallback, ("easy", "seed"))
        self.fallback = fallback
        if 0 < self.lambda_g < self.min_lambda_g:
            warnings.warn(
                f"lambda_g={lambda_g} is below {self.min_lambda_g:.3g}, the bound under which "
                "the paper's convexity argument (and the official trainer's check) fails",
                stacklevel=3,
            )

    @property
    def min_lambda_g(self) -> float:
        """s k u_a^2 l_a^2 / (u_a^2 - l_a^2), k the margin's slope: the official lower bound."""
        k = (self.u_margin - self.l_margin) / (self.u_a - self.l_a)
        return self.scale * k * self.u_a**2 * self.l_a**2 / (self.u_a**2 - self.l_a**2)

    def magnitudes(self, embeddings: torch.Tensor) -> torch.Tensor:
        """a_i = clip(|x_i|, l_a, u_a) (N,), differentiable inside the bounds."""
        return embeddings.norm(dim=1).clamp(self.l_a, self.u_a)

    def margins(self, a: torch.Tensor) -> torch.Tensor:
        """m(a), linear from l_margin at l_a to u_margin at u_a (N,). The bounds are checked
        here too: a MarginScheduler may change either."""
        low, high = margin_bounds(self.l_margin, self.u_margin)
        slope = (high - low) / (self.u_a - self.l_a)
        return low + slope * (a - self.l_a)

    def target_logit(self, cos_target, embeddings):
        m = self.margins(self.magnitudes(embeddings).to(cos_target.dtype))  # (N,)
        return self.scale * arc_margin(cos_target, m, self.fallback)  # (N,)

    def extra_loss(self, embeddings: torch.Tensor) -> torch.Tensor:
        """lambda_g * mean_i g(a_i), g(a) = 1/a + a/u_a^2."""
        a = self.magnitudes(embeddings)
        return self.lambda_g * (1 / a + a / self.u_a**2).mean()

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, l_a={self.l_a}, u_a={self.u_a}, "
            f"l_margin={self.l_margin}, u_margin={self.u_margin}, lambda_g={self.lambda_g}"
        )


class MagFace(MagFaceRule, TargetLogitHead):
    """MagFace with the official defaults (s = 64, l_a = 10, u_a = 110, l_margin = 0.45,
    u_margin = 0.8, lambda_g = 35 from run/run.sh; easy margin, as the official MagLinear).
    fallback: "easy" (official default: no margin where cos <= 0) or "seed" (its
    easy_margin=False branch: cos - m sin m past theta + m = pi). No running state.
    impl: "auto", "eager", "chunked" (never the (N, C) logits) or "triton" (CUDA)."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        scale: float = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_margin: float = 0.45,
        u_margin: float = 0.8,
        lambda_g: float = 35.0,
        fallback: str = "easy",
        impl: str = "auto",
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale=scale, impl=impl)
        self.init_rule(l_a, u_a, l_margin, u_margin, lambda_g, fallback)
