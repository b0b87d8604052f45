"""The ATen ops of one training step, by op, and the OpenMP parallel regions they open.

An op on a large tensor runs as one parallel region of the intra-op threads, and a region
ends only when every thread has done its share: on a machine shared with other processes a
thread that is not running holds the region up for a scheduler time slice. The regions per
step, more than the flops, set how much a step slows down under load (issue 13, item 6).

Counting ops needs nothing; counting regions needs benchmarks/omp_regions.c preloaded:

    python -m benchmarks.under_load --count
    gcc -O2 -shared -fPIC -o /tmp/omp_regions.so benchmarks/omp_regions.c -ldl
    LD_PRELOAD=/tmp/omp_regions.so python -m benchmarks.under_load --count
"""

from __future__ import annotations

import collections
import ctypes
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

GRAIN_SIZE = 32768  # at::internal::GRAIN_SIZE: elementwise ops on fewer elements use one thread
ALLOCATIONS = ("empty", "new_empty", "empty_like", "empty_strided")  # compute nothing


def region_counter():
    """The preloaded omp_regions.so's count of parallel regions so far, or None."""
    try:
        return ctypes.CDLL(None).counted_parallel_regions
    except AttributeError:
        return None


def _largest(values) -> int:
    sizes = [v.numel() for v in values if isinstance(v, torch.Tensor)]
    return max(sizes, default=0)


@dataclass
class OpCounts:
    """Per ATen op name: calls, large calls (computing ops, not views or allocations, with
    an input or output of >= GRAIN_SIZE elements: those that may run in parallel), and the
    parallel regions opened (None where omp_regions.so is not preloaded)."""

    calls: collections.Counter = field(default_factory=collections.Counter)
    large: collections.Counter = field(default_factory=collections.Counter)
    regions: collections.Counter | None = None

    def total(self, what: str) -> int | None:
        counter = getattr(self, what)
        return None if counter is None else sum(counter.values())


class _Recorder(TorchDispatchMode):
    def __init__(self, counts: OpCounts, regions) -> None:
        super().__init__()
        self.counts, self.regions = counts, regions

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        before = self.regions() if self.regions else 0
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        self.counts.calls[name] += 1
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        computes = not func.is_view and name not in ALLOCATIONS
        if computes and _largest((*args, *kwargs.values(), *outputs)) >= GRAIN_SIZE:
            self.counts.large[name] += 1
        if self.regions:
            self.counts.regions[name] += self.regions() - before
        return out


def count_ops(step) -> OpCounts:
    """The ops of one call of step() (call it once before: a warm-up)."""
    regions = region_counter()
    counts = OpCounts(regions=collections.Counter() if regions else None)
    with _Recorder(counts, regions):
        step()
    return counts


def print_counts(steps: dict) -> dict:
    """steps: name -> a warmed-up step. Prints each step's ops (and regions) by op."""
    found = {name: count_ops(step) for name, step in steps.items()}
    for name, counts in found.items():
        regions = counts.total("regions")
        print(f"{name}: {counts.total('calls')} ATen ops, {counts.total('large')} large "
              f"(computing on >= {GRAIN_SIZE} elements), "
              + ("parallel regions not counted (omp_regions.so not preloaded)"
                 if regions is None else f"{regions} OpenMP parallel regions"))
        for op, calls in counts.calls.most_common():
            opened = "" if counts.regions is None else f" {counts.regions[op]:6d} regions"
            if counts.large[op] or (counts.regions and counts.regions[op]):
                print(f"  {op:24s} {calls:6d} calls {counts.large[op]:6d} large{opened}")
    return found
