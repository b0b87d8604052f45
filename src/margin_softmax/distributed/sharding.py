"""Which classes each rank owns.

The C classes are split into W contiguous blocks, in class order; the first C mod W ranks
get one class more:

    size_r  = C // W + (1 if r < C % W else 0)
    start_r = r * (C // W) + min(r, C % W)

so class j lives on the rank r with start_r <= j < start_r + size_r, as row j - start_r.
"""

from __future__ import annotations

from ..validation import check_positive_int


def _check(num_classes: int, world_size: int) -> None:
    check_positive_int("num_classes", num_classes)
    check_positive_int("world_size", world_size)


def class_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """(start, stop): the classes [start, stop) owned by ``rank`` of ``world_size``."""
    _check(num_classes, world_size)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def class_ranges(num_classes: int, world_size: int) -> list[tuple[int, int]]:
    """[(start, stop)] for every rank, in rank order."""
    return [class_range(num_classes, world_size, r) for r in range(world_size)]
