"""Launch settings: tile sizes, warps, pipeline stages, dot precision. Fixed, not autotuned.

Each program keeps one operand tile of all of D resident (the rows it owns) and streams the
other, so a tile is (BLOCK, DV) with DV = D rounded up to a power of two. BLOCK is the
largest power of two in [16, 64] whose tile fits in 64 KiB (64 for bfloat16 at D = 512:
the resident tile plus two streamed stages take 192 KiB of shared memory, under Hopper's
227 KiB), and the warps are set so the float32 (BLOCK, DV) accumulator is ~128 registers
per thread. Under the CPU interpreter every tile is 16 wide (tl.dot's minimum) so tiny test
problems cross block edges.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
from triton import knobs

TILE_BYTES = 1 << 16
MAX_ROW_BYTES = 4096  # DV * itemsize above this (D > 2048 at 16 bits) does not fit


@dataclass(frozen=True)
class Blocks:
    n: int  # rows (embeddings) per tile
    c: int  # columns (classes) per tile
    dv: int  # D padded to a power of two
    warps: int = 4
    stages: int = 2


def interpreted() -> bool:
    """True when the kernels run on the CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return bool(knobs.runtime.interpret)


def padded_dim(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def fits(dim: int, dtype: torch.dtype) -> bool:
    """Whether a row of D values fits the kernels' resident tiles (always, interpreted)."""
    return interpreted() or padded_dim(dim) * dtype.itemsize <= MAX_ROW_BYTES


def blocks(dim: int, dtype: torch.dtype) -> Blocks:
    dv = padded_dim(dim)
    if interpreted():
        return Blocks(16, 16, dv, warps=1, stages=1)
    block = 64
    while block > 16 and block * dv * dtype.itemsize > TILE_BYTES:
        block //= 2
    warps = min(8, max(4, block * dv // 4096))  # accumulator values per thread ~128
    return Blocks(block, block, dv, warps=warps, stages=2)


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


def class_splits(device: torch.device, row_blocks: int, class_blocks: int) -> int:
    """How many programs share the classes of one block of rows in the forward pass: about
    two programs per SM in all (one row block alone would leave most SMs idle)."""
    wanted = 2 * sm_count(device.index or 0) if device.type == "cuda" else 4
    return max(1, min(class_blocks, -(-wanted // row_blocks)))
