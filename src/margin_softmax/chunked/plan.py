"""How the single-device path splits the work: blocks of rows that keep their exp values
(3 GEMMs, memory KEEP_BYTES) when the classes are few enough, else two sweeps (4 GEMMs)."""

from __future__ import annotations

import math

KEEP_BYTES = 48 << 20  # the most the kept (C, rows) float32 store may take
MIN_KEEP_ROWS = 64  # narrower blocks re-read the weight too often: two sweeps win


def plan_blocks(n_rows: int, n_classes: int) -> int | None:
    """Rows per block for fused_sweeps (blocks of equal width), or None for two sweeps."""
    widest = KEEP_BYTES // (4 * max(n_classes, 1))
    if widest >= n_rows:
        return n_rows
    if widest < MIN_KEEP_ROWS:
        return None
    blocks = math.ceil(n_rows / widest)
    return math.ceil(n_rows / blocks)
