"""The class side of the problem, one tile of classes at a time.

A tile is the weight rows [a, b): normalised on the fly (w_j / max(|w_j|, eps), from norms
computed once), never a normalised copy of the whole weight. ``normalized=False`` is plain
softmax: raw rows and an optional bias.
"""

from __future__ import annotations

import torch

from ..functional import NORM_EPS, compute_dtype


class ClassTiles:
    """weight (C, D) raw; tile: classes per tile; bias (C,) or None (plain softmax only)."""

    def __init__(
        self,
        weight: torch.Tensor,
        tile: int,
        normalized: bool = True,
        bias: torch.Tensor | None = None,
    ) -> None:
        self.weight, self.tile = weight, max(1, int(tile))
        self.num_classes = weight.shape[0]
        self.acc = compute_dtype(weight.dtype)
        self.bias = None if bias is None else bias.to(self.acc)
        self.norm = self.inv_norm = None
        if normalized:
            norm = torch.cat([w.to(self.acc).norm(dim=1) for w in weight.split(self.tile)])
            self.norm = norm  # (C,)
            self.inv_norm = 1 / norm.clamp_min(NORM_EPS)  # (C,)

    def ranges(self):
        """(index, a, b) of every tile."""
        for index, a in enumerate(range(0, self.num_classes, self.tile)):
            yield index, a, min(a + self.tile, self.num_classes)

    def weights(self, a: int, b: int) -> torch.Tensor:
        """The tile's class centres (b - a, D) in weight's dtype: w_hat_j, or w_j if plain."""
        w = self.weight[a:b]
        if self.inv_norm is None:
            return w
        return (w * self.inv_norm[a:b, None]).to(w.dtype)  # normalised in compute dtype

    def logits(self, w: torch.Tensor, rows_t: torch.Tensor, a: int, out: torch.Tensor):
        """out (b - a, R) = w @ rows_t (+ bias), in compute dtype; rows_t (D, R)."""
        if out.dtype == w.dtype:
            if self.bias is None:
                return torch.mm(w, rows_t, out=out)
            return torch.addmm(self.bias[a : a + w.shape[0], None], w, rows_t, out=out)
        out.copy_(w @ rows_t)  # half inputs: the matmul in their dtype, float32 after
        if self.bias is not None:
            out += self.bias[a : a + w.shape[0], None]
        return out

    def weight_grad(self, grad: torch.Tensor, a: int, b: int) -> torch.Tensor:
        """dL/dw (b - a, D) from dL/dw_hat for the tile's rows (identity if plain)."""
        if self.inv_norm is None:
            return grad
        w_hat = self.weight[a:b].to(self.acc) * self.inv_norm[a:b, None]  # (T, D)
        radial = (w_hat * grad).sum(1) * (self.norm[a:b] > NORM_EPS)  # (T,)
        return (grad - w_hat * radial[:, None]) * self.inv_norm[a:b, None]
