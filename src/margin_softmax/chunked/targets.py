"""Where the target cells (row i, class t_i) lie inside a class-major (C, R) block of logits.

The sweeps keep logits class-major: a tile of classes [a, b) for R rows is a contiguous
(b - a, R) tensor, so cell (j, i) is at flat index j * R + i. Sorting the R target cells by
that index once per block lets each tile find its own with one slice.
"""

from __future__ import annotations

import torch


class TargetCells:
    """The target cells of one block of rows. target (R,): the target's class index in this
    shard, or -1 where another shard owns it."""

    def __init__(self, target: torch.Tensor, num_classes: int, tile: int) -> None:
        n = target.shape[0]
        self.width, self.tile = n, tile
        owned = (target >= 0).nonzero().squeeze(1)  # (M,)
        self.flat = (target[owned] * n + owned).sort().values  # (M,)
        self.rows, self.classes = self.flat % n, self.flat // n  # (M,) each, in cell order
        edges = torch.arange(0, num_classes + tile, tile, device=target.device).clamp_max(
            num_classes
        )
        self.bounds = torch.searchsorted(self.flat, edges * n).tolist()  # cells of tile k: [k, k+1)

    def _span(self, start: int) -> tuple[int, int]:
        index = start // self.tile
        return self.bounds[index], self.bounds[index + 1]

    def fill(self, tile: torch.Tensor, start: int, value: float) -> None:
        """Set the target cells of the tile of classes starting at start to value.
        tile: (T, R) contiguous, T = the tile size given to the constructor (or the rest)."""
        lo, hi = self._span(start)
        if hi > lo:
            tile.view(-1).index_fill_(0, self.flat[lo:hi] - start * self.width, value)

    def add_rows(self, grad: torch.Tensor, start: int, values: torch.Tensor) -> None:
        """grad (T, D), the tile's classes: add values (M, D), given in cell order, to the
        rows of the target classes in this tile (index_put_: one thread, where index_add_
        opens several parallel regions for a handful of rows)."""
        lo, hi = self._span(start)
        if hi > lo:
            grad.index_put_((self.classes[lo:hi] - start,), values[lo:hi], accumulate=True)
