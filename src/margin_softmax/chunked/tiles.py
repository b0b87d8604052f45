"""The class side of the problem, one tile of classes [a, b) at a time.

The GEMMs read the raw weight rows w_j; the norms n_j = max(|w_j|, eps), computed once, are
applied to the (T, R) tiles of logits and gradients instead of writing normalised weight
rows (T x D floats per tile and sweep, more than T x R for R < D). ``normalized=False`` is
plain softmax: no norms, and an optional bias.
"""

from __future__ import annotations

import math

import torch

from ..numerics import NORM_EPS, compute_dtype

FINISH_BYTES = 4 << 20  # half weights: the float32 copy of weight rows that finish makes


def matmul_dtype(dtype: torch.dtype) -> torch.dtype:
    """The tiles' matmul dtype: the input's, except float16 -> float32: the raw weight rows
    times r_i (up to |w| * s) can pass float16's 65504 (bfloat16 has float32's range)."""
    return torch.float32 if dtype == torch.float16 else dtype


class ClassTiles:
    """weight (C, D) raw; tile: classes per tile; bias (C,) or None (plain softmax only);
    mm: the matmul dtype, matmul_dtype(weight.dtype) unless given (float32: each tile is
    cast, never the whole weight)."""

    def __init__(
        self,
        weight: torch.Tensor,
        tile: int,
        normalized: bool = True,
        bias: torch.Tensor | None = None,
        mm: torch.dtype | None = None,
    ) -> None:
        self.weight, self.tile = weight, max(1, int(tile))
        self.num_classes = weight.shape[0]
        self.acc, self.mm = compute_dtype(weight.dtype), mm or matmul_dtype(weight.dtype)
        self.bias = None if bias is None else bias.to(self.acc)
        self.norm = self.inv_norm = None
        if normalized:
            # tile by tile into one buffer: a cast of all of W (vector_norm's dtype= does one)
            # would take C x D x 4 bytes for half weights, and per-tile results allocated
            # between the casts fragment the CPU heap to the same size
            self.norm = weight.new_empty(self.num_classes, dtype=self.acc)  # (C,)
            for a, b in self.ranges():
                torch.linalg.vector_norm(weight[a:b].to(self.acc), dim=1, out=self.norm[a:b])
            self.inv_norm = 1 / self.norm.clamp_min(NORM_EPS)  # (C,)

    @property
    def num_tiles(self) -> int:
        """How many tiles ranges() gives."""
        return math.ceil(self.num_classes / self.tile)

    def ranges(self):
        """(a, b) of every tile."""
        for a in range(0, self.num_classes, self.tile):
            yield a, min(a + self.tile, self.num_classes)

    def weights(self, a: int, b: int) -> torch.Tensor:
        """The raw weight rows [a, b) (T, D) in the matmul dtype."""
        return self.weight[a:b].to(self.mm)

    def logits(self, rows_t, a: int, b: int, out: torch.Tensor, minus=None) -> torch.Tensor:
        """out (T, R) <- w[a:b] @ rows_t / n[a:b] (+ bias) (- minus) in compute dtype;
        rows_t (D, R), minus (R,) or None (normalised: fused into the norm pass)."""
        w = self.weights(a, b)
        if out.dtype == w.dtype:
            torch.mm(w, rows_t, out=out)
        else:
            out.copy_(w @ rows_t)  # half inputs: the matmul in their dtype, float32 after
        if self.inv_norm is not None:
            if minus is None:
                out.mul_(self.inv_norm[a:b, None])
            else:
                torch.addcmul(-minus[None, :], out, self.inv_norm[a:b, None], out=out)
        if self.bias is not None:
            out.add_(self.bias[a:b, None])
        if minus is not None and self.inv_norm is None:
            out.sub_(minus)
        return out

    def divide_by_norm(self, tile: torch.Tensor, a: int, b: int) -> torch.Tensor:
        """tile (T, R) / n[a:b] per class, in place (plain: unchanged)."""
        return tile if self.inv_norm is None else tile.mul_(self.inv_norm[a:b, None])

    def centres(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w_hat[index] (M, D), 1 / n[index] (M,)) in compute dtype (plain: w, ones)."""
        w = self.weight.index_select(0, index).to(self.acc)  # [index] opens a parallel region
        if self.inv_norm is None:
            return w, torch.ones_like(w[:, 0])
        inv = self.inv_norm[index]
        return w * inv[:, None], inv

    def finish(self, grad: torch.Tensor, a: int, b: int) -> None:
        """grad (T, D) in place: A_j = dL/dw_hat_j / n_j  ->  dL/dw_j = A_j - w_hat_j <w_hat_j,
        A_j> (the radial part only where |w_j| > eps, as F.normalize's clamp has it). Half
        weights: in pieces of FINISH_BYTES, each cast to the gradient's dtype."""
        if self.inv_norm is None:
            return
        if self.weight.dtype == grad.dtype:
            piece = max(1, b - a)
        else:
            piece = max(1, FINISH_BYTES // (4 * max(1, grad.shape[1])))
        for start in range(a, b, piece):
            stop = min(start + piece, b)
            w, g = self.weight[start:stop].to(grad.dtype), grad[start - a : stop - a]  # (P, D)
            inv = self.inv_norm[start:stop] * (self.norm[start:stop] > NORM_EPS)  # (P,)
            dot = torch.bmm(g[:, None, :], w[:, :, None]).view(-1)  # <w, A> (P,), no (P, D)
            g.addcmul_(w, (dot * inv * inv)[:, None], value=-1)  # <w_hat, A> w_hat
