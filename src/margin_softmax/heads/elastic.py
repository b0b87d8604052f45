"""ElasticFace (Boutros et al., CVPRW 2022): ArcFace / CosFace with a margin drawn for every
sample of every training batch from a normal distribution N(margin, std).

    ElasticArcFace:  logit_iy = s * cos(theta_iy + m_i),  m_i ~ N(margin, std)
    ElasticCosFace:  logit_iy = s * (cos_iy - m_i),       m_i ~ N(margin, std)

The draws come from a torch.Generator owned by the head (float64, on the CPU, then moved to
the embeddings' device), seeded by ``seed`` (or from torch's global generator when seed is
None, so torch.manual_seed makes runs repeat). Its state is saved in state_dict (extra state),
so a resumed run draws what the uninterrupted one would. Eval mode uses the mean margin.
Only the target logit changes, so impl="chunked" (or "auto" at large N * C) runs without
the (N, C) logits (heads/eager.py's TargetLogitHead).
"""

from __future__ import annotations

import torch

from .eager import ARC_FALLBACKS, TargetLogitHead, arc_margin, check_choice, check_float


class _ElasticHead(TargetLogitHead):
    """Shared: the generator, the draws, and the target logit (draws in training, the mean
    margin in eval and in ``logits``)."""

    def __init__(self, embedding_dim, num_classes, *, margin, std, scale, seed, impl):
        super().__init__(embedding_dim, num_classes, scale=scale, impl=impl)
        self.margin = check_float("margin", margin, 0.0, torch.pi, high_open=True)
        self.std = check_float("std", std, 0.0)
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()))
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        self.generator = torch.Generator().manual_seed(seed)

    def draw_margins(self, n: int) -> torch.Tensor:
        """n margins from N(margin, std) (n,), float64 on the CPU; advances the generator."""
        return torch.empty(n, dtype=torch.float64).normal_(
            self.margin, self.std, generator=self.generator
        )

    def margin_target(self, cos_target: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """psi(cos_iy; m_i) (N,), before the scale."""
        raise NotImplementedError

    def target_logit(self, cos_target, embeddings):
        """Every sample gets the mean margin."""
        return self.scale * self.margin_target(cos_target, torch.full_like(cos_target, self.margin))

    def training_target_logit(self, cos_target, embeddings):
        m = self.draw_margins(cos_target.shape[0]).to(cos_target.device, cos_target.dtype)
        return self.scale * self.margin_target(cos_target, m)

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, std={self.std}"


class ElasticArcFace(_ElasticHead):
    """ElasticFace-Arc: cos(theta + m_i). Defaults from the official config (s = 64,
    m = 0.5, std = 0.05). fallback: "none" (official: cos(theta + m) as it is) or one of
    ArcFace's ("seed", "continuous", "easy")."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        margin: float = 0.5,
        std: float = 0.05,
        scale: float = 64.0,
        fallback: str = "none",
        seed: int | None = None,
        impl: str = "auto",
    ) -> None:
        super().__init__(embedding_dim, num_classes, margin=margin, std=std, scale=scale,
                         seed=seed, impl=impl)
        check_choice("fallback", fallback, ARC_FALLBACKS)
        self.fallback = fallback

    def margin_target(self, cos_target, m):
        return arc_margin(cos_target, m, self.fallback)


class ElasticCosFace(_ElasticHead):
    """ElasticFace-Cos: cos - m_i. Defaults from the official config (s = 64, m = 0.35,
    std = 0.05)."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        margin: float = 0.35,
        std: float = 0.05,
        scale: float = 64.0,
        seed: int | None = None,
        impl: str = "auto",
    ) -> None:
        super().__init__(embedding_dim, num_classes, margin=margin, std=std, scale=scale,
                         seed=seed, impl=impl)

    def margin_target(self, cos_target, m):
        return cos_target - m
