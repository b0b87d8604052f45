"""Where the target cells (row i, class t_i) lie inside a class-major (C, R) block of logits.

The sweeps keep logits class-major: a tile of classes [a, b) for R rows is a contiguous
(b - a, R) tensor, so cell (j, i) is at flat index j * R + i. Sorting the R target cells by
that index once per block lets each tile find its own with one slice.
"""

from __future__ import annotations

import torch


class TargetCells:
    """The target cells of one block of rows. target (R,): the target's class index in this
    shard, or -1 where another shard owns it. ``rows`` lists the owning rows in cell order."""

    def __init__(self, target: torch.Tensor, num_classes: int, tile: int) -> None:
        n = target.shape[0]
        self.width = n
        owned = (target >= 0).nonzero().squeeze(1)  # (M,)
        flat, order = (target[owned] * n + owned).sort()  # (M,), cell order
        self.flat, self.rows = flat, owned[order]
        edges = torch.arange(0, num_classes + tile, tile, device=target.device).clamp_max(
            num_classes
        )
        self.bounds = torch.searchsorted(flat, edges * n).tolist()  # cells of tile k: [k, k+1)

    def _cells(self, tile_index: int, start: int):
        lo, hi = self.bounds[tile_index], self.bounds[tile_index + 1]
        return lo, hi, self.flat[lo:hi] - start * self.width

    def fill(self, tile: torch.Tensor, tile_index: int, start: int, value: float) -> None:
        """Set this tile's target cells to value. tile: (b - start, R) contiguous."""
        lo, hi, cells = self._cells(tile_index, start)
        if hi > lo:
            tile.view(-1).index_fill_(0, cells, value)

    def put(self, tile: torch.Tensor, tile_index: int, start: int, values: torch.Tensor) -> None:
        """Write values (M,), given in cell order, into this tile's target cells."""
        lo, hi, cells = self._cells(tile_index, start)
        if hi > lo:
            tile.view(-1).index_copy_(0, cells, values[lo:hi])
