"""Sub-center ArcFace (Deng et al., ECCV 2020), with WeSpeaker's optional inter-top-k penalty.

    cos_ij = max_k <x_i/|x_i|, w_{jK+k}/|w_{jK+k}|>              # (N, C), K sub-centres
    logit_iy = s * psi(cos_iy)                                  # ArcFace's cos(theta + m)
    logit_ij = s * cos(theta_ij - hard_margin)   for the top_k non-target j by cos_ij
    logit_ij = s * cos_ij                        otherwise

impl: "eager" builds the (N, C*K) cosines; "chunked" streams tiles of classes
(chunked/subcenters.py) and never holds (N, C); "auto" picks chunked where N * C * K passes
the core's threshold (functional.resolve_impl). The inter-top-k penalty selects over all
classes of a row, so it runs eager: "auto" falls back silently, "chunked" raises.
"""

from __future__ import annotations

import torch

from ..chunked.subcenters import chunked_subcenter_cross_entropy
from ..cleaning import SubCenterCleaning, dominant_centres, find_outliers
from ..functional import checked_loss, resolve_impl
from ..margins import Margin, apply_margin
from ..validation import check_positive_int
from .eager import (
    ARC_FALLBACKS,
    EagerHead,
    check_choice,
    check_float,
    cos_plus_angle,
    replace_target,
    target_of,
)


class SubCenterArcFace(EagerHead):
    """ArcFace over the best of K sub-centres per class.

    weight: (num_classes * sub_centers, embedding_dim), class c in rows c*K ... c*K + K - 1
    (PyTorch Metric Learning's and WeSpeaker's order). margin in radians (PML takes degrees).
    fallback / straight_through: as ArcFace ("seed" matches PML, "continuous" WeSpeaker).
    hard_margin, top_k: WeSpeaker's inter-top-k penalty (its ``mp``, ``k_top``; 0 = off):
    the top_k most similar non-target classes get cos(theta - hard_margin).
    impl: "auto", "eager" or "chunked" (penalty off only; see the module doc)."""

    IMPLS = ("auto", "eager", "chunked")

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        margin: float = 0.5,
        scale: float = 64.0,
        sub_centers: int = 3,
        fallback: str = "seed",
        straight_through: bool = False,
        hard_margin: float = 0.0,
        top_k: int = 0,
        impl: str = "auto",
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale=scale, impl=impl)
        sub_centers = check_positive_int("sub_centers", sub_centers)
        check_choice("fallback", fallback, ARC_FALLBACKS)
        self.hard_margin = check_float("hard_margin", hard_margin, 0.0, torch.pi, high_open=True)
        self.sub_centers, self.top_k = sub_centers, top_k
        self.margin, self.fallback, self.straight_through = margin, fallback, straight_through
        self.weight = torch.nn.Parameter(torch.empty(num_classes * sub_centers, embedding_dim))
        torch.nn.init.xavier_normal_(self.weight)
        self.margin_spec()
        self.path(None)  # rejects impl="chunked" with the penalty on

    def path(self, embeddings: torch.Tensor | None) -> str:
        """"eager" or "chunked" for this batch: functional.resolve_impl's size rule on the
        N x C*K cosines; the inter-top-k penalty needs eager (an explicit "chunked" raises)."""
        if self.top_k and self.hard_margin:
            if self.impl == "chunked":
                raise ValueError(
                    "impl='chunked' needs the inter-top-k penalty off (hard_margin == 0 or "
                    f"top_k == 0), got hard_margin={self.hard_margin!r}, top_k={self.top_k!r}"
                )
            return "eager"
        if embeddings is None:
            return self.impl
        return resolve_impl(self.impl, embeddings, self.num_classes * self.sub_centers,
                            plain=True)

    def margin_spec(self) -> Margin:
        """The target's Margin (validates ``margin``, ``hard_margin`` and ``top_k``, which a
        scheduler or a config may change)."""
        check_float("margin", self.margin, 0.0, torch.pi, high_open=True)
        check_float("hard_margin", self.hard_margin, 0.0, torch.pi, high_open=True)
        top_k, highest = self.top_k, self.num_classes - 1
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= highest:
            raise ValueError(
                f"top_k must be an int in [0, num_classes - 1 = {highest}], got {top_k!r}"
            )
        fallback = "none" if self.margin == 0 else self.fallback
        return Margin(m2=self.margin, fallback=fallback, straight_through=self.straight_through)

    def cosine(self, embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        cos = super().cosine(embeddings, weight)  # (N, C*K)
        cos = cos.view(cos.shape[0], self.num_classes, self.sub_centers)  # (N, C, K)
        return cos.max(dim=2).values  # (N, C); the gradient goes to the best sub-centre

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x, weight, y, out_dtype = self._inputs(embeddings, labels)  # validated
        if x.shape[0] == 0 or self.path(x) == "eager":
            return super().forward(embeddings, labels)
        loss = chunked_subcenter_cross_entropy(
            x, weight, y, self.scale, self.margin_spec(), self.sub_centers
        )
        return checked_loss(loss, weight).to(out_dtype)

    def training_logits(self, cos, labels, embeddings):
        psi = apply_margin(target_of(cos, labels), self.margin_spec())  # (N,)
        if self.top_k and self.hard_margin:
            with torch.no_grad():
                others = cos.scatter(1, labels[:, None], -torch.inf)  # (N, C), target excluded
                hard = others.topk(self.top_k, dim=1).indices  # (N, top_k)
            harder = cos_plus_angle(cos.gather(1, hard), -self.hard_margin)  # cos(theta - mp)
            cos = cos.scatter(1, hard, harder)
        return self.scale * replace_target(cos, labels, psi)

    @torch.no_grad()
    def predict(self, embeddings: torch.Tensor) -> torch.Tensor:
        """argmax over classes of the best sub-centre's cosine (N,)."""
        return super().predict(embeddings) // self.sub_centers

    @torch.no_grad()
    def find_outliers(
        self, embeddings: torch.Tensor, labels: torch.Tensor, threshold_degrees: float = 75.0
    ) -> SubCenterCleaning:
        """The paper's cleaning step: each class's dominant sub-centre and the samples more
        than ``threshold_degrees`` from it (see cleaning.py)."""
        return find_outliers(
            self.weight, embeddings, labels, sub_centers=self.sub_centers,
            threshold_degrees=threshold_degrees,
        )

    @torch.no_grad()
    def dominant_weight(self, dominant: torch.Tensor) -> torch.Tensor:
        """(num_classes, embedding_dim): one centre per class, for an ArcFace head after
        cleaning (the paper drops the non-dominant sub-centres)."""
        return dominant_centres(self.weight, dominant, self.sub_centers)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, margin={self.margin}, sub_centers={self.sub_centers}, "
            f"fallback={self.fallback!r}, hard_margin={self.hard_margin}, top_k={self.top_k}"
        )
