"""Launch settings: tile sizes, warps, pipeline stages, dot precision. Fixed, not autotuned:
the sizes are the usual tensor-core GEMM tiles for Hopper/Ampere (128 x 128 output tiles,
64-wide K steps for 16-bit inputs, 32 for float32 so three pipeline stages fit in shared
memory). Under the CPU interpreter every tile is 16 wide (tl.dot's minimum) so tiny test
problems cross block edges."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from triton import knobs


@dataclass(frozen=True)
class Blocks:
    n: int  # rows (embeddings) per tile
    c: int  # columns (classes) per tile
    k: int  # step over the embedding dimension D
    warps: int = 8
    stages: int = 3


INTERPRETER_BLOCKS = Blocks(16, 16, 16, warps=1, stages=1)
BACKWARD_CHUNK_ELEMENTS = 1 << 24  # float32 buffer for dL/dw_hat: 64 MiB, whatever C is


def interpreted() -> bool:
    """True when the kernels run on the CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return bool(knobs.runtime.interpret)


def forward_blocks(dtype: torch.dtype) -> Blocks:
    if interpreted():
        return INTERPRETER_BLOCKS
    return Blocks(128, 128, 32 if dtype == torch.float32 else 64, warps=8, stages=3)


def backward_blocks(dtype: torch.dtype) -> Blocks:
    """The backward tile holds the logits (n x c) plus two (n or c) x k partial gradients."""
    if interpreted():
        return INTERPRETER_BLOCKS
    return Blocks(128, 128, 32, warps=8, stages=2)


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
    """How many programs share the classes of one block of rows in the forward pass: enough
    for about four programs per SM (one row block alone would leave most SMs idle)."""
    wanted = 4 * sm_count(device.index or 0) if device.type == "cuda" else 4
    return max(1, min(class_blocks, -(-wanted // row_blocks)))
