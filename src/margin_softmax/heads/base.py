"""The base classes of every head: a ``weight`` (num_classes, embedding_dim) parameter, the
functional core in forward, and the evaluation helpers (logits, predict, accuracy)."""

from __future__ import annotations

import torch
from torch import nn

from ..functional import IMPLS, autocast_inputs, margin_cross_entropy, margin_logits, predict
from ..margins import Margin
from ..validation import check_embeddings, check_labels, check_positive_int, check_scale


class ClassCentresHead(nn.Module):
    """Base class: a (num_classes, embedding_dim) weight and the evaluation helpers."""

    def __init__(self, embedding_dim: int, num_classes: int, *, impl: str = "auto") -> None:
        super().__init__()
        embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        num_classes = check_positive_int("num_classes", num_classes)
        if impl not in IMPLS:  # now, not at the first forward
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.embedding_dim, self.num_classes, self.impl = embedding_dim, num_classes, impl
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_normal_(self.weight)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None):
        """(N, C) logits: with the margin on the target where labels are given."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Closed-set prediction argmax_j cos(x, w_j) (N,), without the (N, C) matrix."""
        embeddings, weight, _ = autocast_inputs(embeddings, self.weight)
        check_embeddings(embeddings, weight)
        return predict(embeddings, weight)

    @torch.no_grad()
    def accuracy(self, embeddings: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 accuracy in percent over the plain (margin-free) logits."""
        predicted = self.predict(embeddings)  # checks the embeddings first
        labels = check_labels(labels, embeddings.shape[0], self.num_classes, embeddings.device)
        return float((predicted == labels).float().mean() * 100)

    def loss_and_accuracy(self, embeddings: torch.Tensor, labels: torch.Tensor):
        """(loss, top-1 accuracy in percent): the seed's ``loss, prec1 = aam(x, label)``.
        The seed measured accuracy on the logits *with* the margin; this measures the plain
        cosine, which is what evaluation uses (the margin only makes training harder)."""
        loss = self(embeddings, labels)
        return loss, self.accuracy(embeddings.detach(), labels)

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}"


class MarginHead(ClassCentresHead):
    """Scaled-cosine head whose target logit goes through a margin.Margin."""

    scale_by_norm = False

    def __init__(self, embedding_dim: int, num_classes: int, *, scale: float, impl: str = "auto"):
        super().__init__(embedding_dim, num_classes, impl=impl)
        self.scale = check_scale(scale)

    def margin_spec(self) -> Margin:
        """The Margin for the next forward (subclasses map their parameters to m1, m2, m3)."""
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return margin_cross_entropy(
            embeddings,
            self.weight,
            labels,
            scale=self.scale,
            margin=self.margin_spec(),
            scale_by_norm=self.scale_by_norm,
            impl=self.impl,
        )

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None):
        margin = self.margin_spec() if labels is not None else None
        out = margin_logits(embeddings, self.weight, labels, scale=self.scale, margin=margin)
        if self.scale_by_norm:
            out = out * embeddings.norm(dim=1, keepdim=True).to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}, margin={self.margin_spec()}"
