"""How the single-device path splits the work (constants measured on a 2-core AVX-512 CPU, see
docs/scale.md): blocks of rows that keep their exp values (3 GEMMs, at most KEEP_BYTES) when
the classes are few enough, else two sweeps (4 GEMMs); and the classes per tile."""

from __future__ import annotations

import math

KEEP_BYTES = 32 << 20  # the most the kept (C, rows) float32 store may take
MIN_KEEP_ROWS = 64  # narrower blocks re-read the weight too often: two sweeps win
ROW_ALIGN = 16  # CPU GEMMs slow down by up to 2x for widths that are not a multiple of 16
TILE_BYTES = 4 << 20  # a (classes, N) float32 tile in two sweeps (and the shard primitives)
FUSED_TILE_BYTES = 8 << 20  # a (classes, rows) tile of the kept store: a view, no memory;
# few tiles, few parallel regions per step (sweeps.py): ~4 tiles a sweep at R = 80, C = 100k
MIN_TILE_CLASSES = 64
GPU_TILE_FACTOR = 16  # GPUs want fewer, larger tiles (each op is a kernel launch); not tuned


def tile_bytes(fused: bool, device_type: str) -> int:
    """The target bytes of one float32 tile for this schedule and device."""
    size = FUSED_TILE_BYTES if fused else TILE_BYTES
    return size if device_type == "cpu" else size * GPU_TILE_FACTOR


def tile_classes(n_rows: int, tile_bytes: int | None = None, num_classes: int = 0) -> int:
    """Classes per tile so that a (classes, n_rows) float32 tile takes about tile_bytes; with
    num_classes, as many tiles but of even sizes (a short last tile costs as many parallel
    regions as a full one)."""
    most = max(MIN_TILE_CLASSES, (tile_bytes or TILE_BYTES) // (4 * max(n_rows, 1)))
    if num_classes <= most:
        return most
    return math.ceil(num_classes / math.ceil(num_classes / most))


def plan_blocks(n_rows: int, n_classes: int, accumulator_bytes: int = 0) -> list[int] | None:
    """Widths of the row blocks for fused_sweeps (multiples of ROW_ALIGN, non-increasing,
    as even as possible), or None when the store would hold too few rows: two sweeps.
    accumulator_bytes: what else the fused schedule keeps, from the same KEEP_BYTES (half
    inputs: the float32 (C, D) gradient that the blocks of rows accumulate into)."""
    widest = (KEEP_BYTES - accumulator_bytes) // (4 * max(n_classes, 1))
    if widest >= n_rows:
        return [n_rows]
    units, widest_units = math.ceil(n_rows / ROW_ALIGN), widest // ROW_ALIGN
    if widest_units * ROW_ALIGN < MIN_KEEP_ROWS:
        return None
    blocks = math.ceil(units / widest_units)
    share, extra = divmod(units, blocks)
    widths = [(share + (i < extra)) * ROW_ALIGN for i in range(blocks)]
    widths[-1] -= sum(widths) - n_rows
    return widths
