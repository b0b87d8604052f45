"""Launch settings: tile sizes, warps and pipeline stages (autotuned), dot precision.

Each program keeps one operand tile of all of D resident (the rows it owns: x in the
forward, W in the backward) and streams the other, so tiles are (BLOCK, DV) with DV = D
rounded up to a power of two, and the float32 accumulator is (resident BLOCK, DV).
Candidates are pruned before tuning so that the resident tile plus the pipelined streamed
tiles fit in shared memory and the accumulator takes at most ~128 registers per thread
(64 x 64 tiles and 8 warps for bfloat16 at D = 512: 192 KiB of shared memory, under
Hopper's 227 KiB). Both kernels only store their outputs, so benchmarking a config by
running it is harmless; the choice is cached on disk per D and dtype (cache_results).
Under the CPU interpreter there is one config, 16 wide (tl.dot's minimum), so tiny test
problems cross block edges.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
from triton import knobs

SHARED_MEMORY_BYTES = 200 * 1024  # leaves room for Triton's own scratch under 227 KiB
MAX_ACCUMULATOR_PER_THREAD = 128
MAX_ROW_BYTES = 4096  # DV * itemsize above this (D > 2048 at 16 bits) fits no config
ROWS_PER_BLOCK_FOR_SPLITS = 64
CANDIDATES = [  # (BLOCK_N, BLOCK_C, warps, stages)
    (128, 128, 8, 2), (128, 64, 8, 3), (64, 128, 8, 3), (64, 64, 8, 2), (64, 64, 4, 3),
    (32, 64, 4, 2), (64, 32, 4, 2), (32, 32, 8, 2), (32, 32, 4, 2), (16, 16, 8, 2),
    (16, 16, 4, 2),
]


def interpreted() -> bool:
    """True when the kernels run on the CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return bool(knobs.runtime.interpret)


def padded_dim(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def fits(dim: int, dtype: torch.dtype) -> bool:
    """Whether a row of D values fits the kernels' resident tiles (always, interpreted)."""
    return interpreted() or padded_dim(dim) * dtype.itemsize <= MAX_ROW_BYTES


QUICK_CANDIDATES = [(64, 64, 4, 2), (32, 32, 4, 2), (16, 16, 4, 2)]


def tuning_configs() -> list[triton.Config]:
    """The autotune candidates; MARGIN_SOFTMAX_QUICK_TUNE=1 keeps three (GPU test runs,
    where tuning every candidate for every tiny test shape would dominate the time)."""
    if interpreted():
        return [triton.Config({"BLOCK_N": 16, "BLOCK_C": 16}, num_warps=1, num_stages=1)]
    quick = os.environ.get("MARGIN_SOFTMAX_QUICK_TUNE") == "1"
    return [triton.Config({"BLOCK_N": n, "BLOCK_C": c}, num_warps=w, num_stages=s)
            for n, c, w, s in (QUICK_CANDIDATES if quick else CANDIDATES)]


def pruner(resident: str, streamed: str):
    """early_config_prune for a kernel whose `resident` block stays in shared memory and
    registers while `streamed` blocks are pipelined through it."""

    def prune(configs, named_args, **kwargs):
        dv, itemsize = kwargs["DV"], named_args["W"].element_size()
        keep = []
        for config in configs:
            held, passing = config.kwargs[resident], config.kwargs[streamed]
            shared = (held + config.num_stages * passing) * dv * itemsize
            per_thread = held * dv // (32 * config.num_warps)
            if shared <= SHARED_MEMORY_BYTES and per_thread <= MAX_ACCUMULATOR_PER_THREAD:
                keep.append(config)
        wide = [c for c in keep if min(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_C"]) > 16]
        return wide or keep or configs[-1:]  # 16-wide tiles only as the last resort

    return {"early_config_prune": prune}


def autotune(key: list[str], resident: str, streamed: str):
    """The autotune decorator of both kernels."""
    return triton.autotune(tuning_configs(), key=key, prune_configs_by=pruner(resident, streamed),
                           cache_results=True)


def dot_precision(dtype: torch.dtype) -> str:
    """float32 inputs use TF32 only where torch's own matmuls would."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"  # ignored by tl.dot for 16-bit inputs


def upcast_dots(dtype: torch.dtype) -> bool:
    """The interpreter's tl.dot mis-reads bfloat16 (see tiles.dot_acc)."""
    return interpreted() and dtype == torch.bfloat16


@functools.cache
def sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def class_splits(device: torch.device, rows: int, num_classes: int) -> int:
    """How many programs share the classes of one block of rows in the forward pass: about
    two per SM in all (one row block alone would leave most SMs idle). Independent of the
    tuned block sizes, so the partial buffers can be allocated before tuning."""
    row_blocks = -(-rows // ROWS_PER_BLOCK_FOR_SPLITS)
    class_blocks = -(-num_classes // (16 if interpreted() else ROWS_PER_BLOCK_FOR_SPLITS))
    wanted = 2 * sm_count(device.index or 0) if device.type == "cuda" else 4
    return max(1, min(class_blocks, -(-wanted // row_blocks)))
