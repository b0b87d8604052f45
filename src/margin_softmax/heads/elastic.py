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

ElasticFace+ (plus=True): the N draws of a batch go to the samples by their target cosines
instead of in draw order. With r the samples ordered by cos_iy descending and m_(1) <= ... <=
m_(N) the sorted draws:

    plus_order="paper":     m_{r_k} = m_(k)    (the k-th closest sample gets the k-th smallest
                                                margin: the farthest get the largest)
    plus_order="official":  m_k = m_(r_k)      (fdbtrs/ElasticFace indexes the sorted draws
                                                with r; a permutation of the draws unrelated
                                                to sample k's own cosine)
"""

from __future__ import annotations

import torch

from ..margins import M3_MAX
from .eager import ARC_FALLBACKS, TargetLogitHead, arc_margin, check_choice, check_float

PLUS_ORDERS = ("paper", "official")


def plus_margins(draws: torch.Tensor, cos_target: torch.Tensor, order: str) -> torch.Tensor:
    """ElasticFace+'s assignment of the draws (N,) to the samples by their target cosines
    (N,): "paper" gives the k-th largest cosine the k-th smallest draw; "official" returns
    sorted_draws[r] with r the cosines' descending sort permutation. No gradient."""
    with torch.no_grad():
        rank = torch.argsort(cos_target, descending=True, stable=True)  # (N,) closest first
        ascending = torch.sort(draws).values  # (N,)
        if order == "official":
            return ascending[rank]
        out = torch.empty_like(ascending)
        out[rank] = ascending
        return out


class ElasticRule:
    """ElasticFace's per-sample draws and target logit, shared by the single-device heads and
    the class-sharded ones (distributed/target_heads.py): the generator (saved as extra
    state), the draws in training, the mean margin in eval and in ``logits``. The head sets
    ``scale``; subclasses define ``margin_target``."""

    MARGIN_MAX = torch.pi  # the mean margin lies in [0, MARGIN_MAX)

    def init_rule(self, margin: float, std: float, plus: bool, plus_order: str,
                  seed: int | None) -> None:
        self.margin = check_float("margin", margin, 0.0, self.MARGIN_MAX, high_open=True)
        self.std = check_float("std", std, 0.0)
        if not isinstance(plus, bool):
            raise TypeError(f"plus must be a bool, got {plus!r}")
        check_choice("plus_order", plus_order, PLUS_ORDERS)
        if plus_order != "paper" and not plus:
            raise ValueError(f"plus_order={plus_order!r} needs plus=True")
        self.plus = plus
        self.plus_order = plus_order
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()))
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        self.generator = torch.Generator().manual_seed(seed)

    def checked_margin(self) -> float:
        """``margin``, checked again at each forward (a MarginScheduler may change it)."""
        return check_float("margin", self.margin, 0.0, self.MARGIN_MAX, high_open=True)

    def draw_margins(self, n: int) -> torch.Tensor:
        """n margins from N(margin, std) (n,), float64 on the CPU; advances the generator."""
        return torch.empty(n, dtype=torch.float64).normal_(
            self.checked_margin(), self.std, generator=self.generator
        )

    def margin_target(self, cos_target: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """psi(cos_iy; m_i) (N,), before the scale."""
        raise NotImplementedError

    def target_logit(self, cos_target, embeddings):
        """Every sample gets the mean margin."""
        m = torch.full_like(cos_target, self.checked_margin())  # (N,)
        return self.scale * self.margin_target(cos_target, m)

    def training_target_logit(self, cos_target, embeddings):
        m = self.draw_margins(cos_target.shape[0]).to(cos_target.device, cos_target.dtype)
        if self.plus:
            m = plus_margins(m, cos_target.detach(), self.plus_order)  # (N,)
        return self.scale * self.margin_target(cos_target, m)

    KIND = ""  # the target's kind, saved with the generator: Arc and Cos states look alike

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state(), "kind": self.KIND}

    def set_extra_state(self, state: dict) -> None:
        kind = state.get("kind", self.KIND)  # states saved before 2026-11-30 have no kind
        if kind != self.KIND:
            raise ValueError(f"this state was saved by an {kind} head, and this is an "
                             f"{self.KIND} head: a checkpoint of another kind of head")
        self.generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        plus = f", plus=True, plus_order={self.plus_order!r}" if self.plus else ""
        return f"{super().extra_repr()}, margin={self.margin}, std={self.std}{plus}"


class ElasticArcRule(ElasticRule):
    """ElasticFace-Arc's target: cos(theta + m_i), with ArcFace's fallbacks."""

    KIND = "ElasticFace-Arc"

    def init_fallback(self, fallback: str) -> None:
        check_choice("fallback", fallback, ARC_FALLBACKS)
        self.fallback = fallback

    def margin_target(self, cos_target, m):
        return arc_margin(cos_target, m, self.fallback)


class ElasticCosRule(ElasticRule):
    """ElasticFace-Cos's target: cos - m_i; the mean margin in CosFace's [0, 2)."""

    KIND = "ElasticFace-Cos"
    MARGIN_MAX = M3_MAX

    def margin_target(self, cos_target, m):
        return cos_target - m


class ElasticArcFace(ElasticArcRule, TargetLogitHead):
    """ElasticFace-Arc: cos(theta + m_i). Defaults from the official config (s = 64,
    m = 0.5, std = 0.05; ElasticFace-Arc+ uses std = 0.0175). fallback: "none" (official:
    cos(theta + m) as it is) or one of ArcFace's ("seed", "continuous", "easy"). plus,
    plus_order: ElasticFace+ (module docstring)."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        margin: float = 0.5,
        std: float = 0.05,
        scale: float = 64.0,
        fallback: str = "none",
        plus: bool = False,
        plus_order: str = "paper",
        seed: int | None = None,
        impl: str = "auto",
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale=scale, impl=impl)
        self.init_rule(margin, std, plus, plus_order, seed)
        self.init_fallback(fallback)


class ElasticCosFace(ElasticCosRule, TargetLogitHead):
    """ElasticFace-Cos: cos - m_i. Defaults from the official config (s = 64, m = 0.35,
    std = 0.05; ElasticFace-Cos+ uses std = 0.02). plus, plus_order: ElasticFace+ (module
    docstring)."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        margin: float = 0.35,
        std: float = 0.05,
        scale: float = 64.0,
        plus: bool = False,
        plus_order: str = "paper",
        seed: int | None = None,
        impl: str = "auto",
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale=scale, impl=impl)
        self.init_rule(margin, std, plus, plus_order, seed)
