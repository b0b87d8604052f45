"""Launch settings: the schedule, tile sizes, warps and pipeline stages (autotuned), dot
precision.

SCHEDULE picks how the training step is split into kernels (function.py): "gemm" (the
default) keeps no (BLOCK, D) accumulator in any kernel and leaves two of the four products to
cuBLAS (gradients.py); "fused" computes v in the forward kernel and dL/dW in one kernel. The
GEMM-tile kernels (gradient_tiles.py) have their own candidates (GEMM_CANDIDATES,
gemm_autotune); the rest of this docstring is about the kernels of forward.py and
backward.py.

Every logit tile is a K-loop over D in BLOCK_K chunks of both operands, pipelined over
num_stages (tiles.cosine_tile). Where a program also accumulates a product over all of D
(v in the forward, G^T x_hat in the backward) it keeps a float32 (BLOCK, DV) accumulator,
DV = D rounded up to a power of two, and reads the other operand's whole (BLOCK, DV) tile
(from L2: it has just streamed it). Candidates are pruned before tuning so that the
pipelined chunks (plus that tile) fit in shared memory and the accumulator takes at most
~128 registers per thread (fits_on_chip). Both kernels only store their outputs, so
benchmarking a config by running it is harmless; the choice is cached on disk per D and
dtype (cache_results). Under the CPU interpreter there is one config, 16 wide (tl.dot's
minimum), so tiny test problems cross block edges.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
from triton import knobs

SCHEDULE = "gemm"  # or "fused" (forward.py's v + backward.py); docs/triton.md compares them
SHARED_MEMORY_FRACTION = 0.875  # of a block's shared memory; the rest is Triton's scratch
DEFAULT_SHARED_MEMORY = 227 * 1024  # an H100's or H200's per block: for CPU tensors, below
MAX_ACCUMULATOR_PER_THREAD = 128
MAX_ROW_BYTES = 4096  # DV * itemsize above this (D > 2048 at 16 bits) fits no config
ROWS_PER_BLOCK_FOR_SPLITS = 64
CANDIDATES = [  # (BLOCK_N, BLOCK_C, BLOCK_K, warps, stages, resident)
    (128, 256, 64, 8, 3, False), (256, 128, 64, 8, 3, False),  # no accumulator only
    (128, 128, 64, 8, 3, False), (128, 128, 64, 8, 4, False), (64, 128, 64, 4, 4, False),
    (128, 64, 64, 4, 4, False), (64, 64, 64, 8, 3, False), (64, 64, 64, 4, 3, False),
    (64, 128, 64, 8, 2, False), (128, 64, 64, 8, 2, False), (32, 64, 64, 4, 3, False),
    (64, 32, 64, 4, 3, False), (32, 32, 32, 8, 2, False), (32, 32, 32, 4, 2, False),
    (64, 64, 64, 8, 2, True), (32, 64, 64, 4, 2, True), (64, 32, 64, 4, 2, True),
    (16, 16, 16, 4, 2, False),
]
QUICK_CANDIDATES = [(64, 64, 64, 8, 3, False), (64, 64, 64, 8, 2, True),
                    (16, 16, 16, 4, 2, False)]
GEMM_CANDIDATES = [  # (BLOCK_N, BLOCK_C, BLOCK_K, warps, stages): kernels with no accumulator
    (128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 64, 4, 4),
    (128, 128, 32, 4, 4), (64, 256, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
    (64, 64, 64, 4, 3), (32, 64, 32, 4, 3), (16, 16, 16, 4, 2),
]
QUICK_GEMM_CANDIDATES = [(128, 128, 64, 8, 3), (64, 64, 64, 4, 3), (16, 16, 16, 4, 2)]


def interpreted() -> bool:
    """True when the kernels run on the CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return bool(knobs.runtime.interpret)


def padded_dim(dim: int) -> int:
    """D rounded up to a power of two, at least 32 (halves of 16: tl.dot's minimum)."""
    return max(32, triton.next_power_of_2(dim))


def fits(dim: int, dtype: torch.dtype) -> bool:
    """Whether a row of D values fits the kernels' (BLOCK, DV) tiles (always, interpreted)."""
    return interpreted() or padded_dim(dim) * dtype.itemsize <= MAX_ROW_BYTES


def tuning_configs() -> list[triton.Config]:
    """The autotune candidates; MARGIN_SOFTMAX_QUICK_TUNE=1 keeps three (GPU test runs,
    where tuning every candidate for every tiny test shape would dominate the time)."""
    if interpreted():
        return [interpreter_config(resident=False)]
    quick = os.environ.get("MARGIN_SOFTMAX_QUICK_TUNE") == "1"
    return [triton.Config({"BLOCK_N": n, "BLOCK_C": c, "BLOCK_K": k, "RESIDENT": resident},
                          num_warps=w, num_stages=s)
            for n, c, k, w, s, resident in (QUICK_CANDIDATES if quick else CANDIDATES)]


def gemm_tuning_configs() -> list[triton.Config]:
    """The candidates of the kernels that keep no (BLOCK, D) accumulator: GEMM tiles."""
    if interpreted():
        return [triton.Config({"BLOCK_N": 16, "BLOCK_C": 16, "BLOCK_K": 16}, num_warps=1,
                              num_stages=1)]
    quick = os.environ.get("MARGIN_SOFTMAX_QUICK_TUNE") == "1"
    return [triton.Config({"BLOCK_N": n, "BLOCK_C": c, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for n, c, k, w, s in (QUICK_GEMM_CANDIDATES if quick else GEMM_CANDIDATES)]


def interpreter_config(resident: bool) -> triton.Config:
    """16-wide tiles (tl.dot's minimum) and 16-wide K-chunks, so tiny test problems cross
    every block edge; `resident` picks the whole-D variant (tests set it on the kernels)."""
    return triton.Config({"BLOCK_N": 16, "BLOCK_C": 16, "BLOCK_K": 16, "RESIDENT": resident},
                         num_warps=1, num_stages=1)


@functools.cache
def shared_memory_bytes(device_index: int) -> int:
    """What the candidates may plan to use of one block's shared memory on this GPU (199 KiB
    of an H100's or H200's 227, 143 of an A100's 163, 87 of an RTX 4090's 99)."""
    from triton.runtime import driver

    limit = driver.active.utils.get_device_properties(device_index)["max_shared_mem"]
    return int(limit * SHARED_MEMORY_FRACTION)


def _shared_limit(named_args) -> int:
    """shared_memory_bytes of the GPU holding the kernel's weight; for CPU tensors (the
    interpreter's one config, scripts/kernel_resources.py compiling for a chosen GPU)
    DEFAULT_SHARED_MEMORY's share."""
    device = named_args["W"].device
    if device.type == "cuda":
        return shared_memory_bytes(device.index or 0)
    return int(DEFAULT_SHARED_MEMORY * SHARED_MEMORY_FRACTION)


def fits_on_chip(config, dv: int, itemsize: int, accumulator: str | None, operand: str,
                 shared_limit: int) -> bool:
    """Whether a config fits in shared memory and (its float32 accumulator, where it keeps
    one: `accumulator` names the block size of its rows) in ~128 registers per thread.

    K-looped (RESIDENT False): the pipelined K-chunks of both logit operands,
    stages x (BLOCK_N + BLOCK_C) x BLOCK_K, plus, with an accumulator, the whole
    (operand block, DV) tile its product reads and the (BLOCK_N, BLOCK_C) left operand.
    Resident: the whole (accumulator block, DV) tile plus stages whole (operand block, DV)
    tiles (in the forward without v, x is still the resident operand)."""
    n, c, k = (config.kwargs[key] for key in ("BLOCK_N", "BLOCK_C", "BLOCK_K"))
    stages = config.num_stages
    if config.kwargs["RESIDENT"]:
        held, passing = config.kwargs[accumulator or "BLOCK_N"], config.kwargs[operand]
        shared = (held + stages * passing) * dv * itemsize
    else:
        shared = stages * (n + c) * k * itemsize
        if accumulator is not None:
            shared += config.kwargs[operand] * dv * itemsize + n * c * itemsize
    if accumulator is None:
        return shared <= shared_limit
    per_thread = config.kwargs[accumulator] * dv // (32 * config.num_warps)
    return shared <= shared_limit and per_thread <= MAX_ACCUMULATOR_PER_THREAD


def pruner(accumulator: str, operand: str, flag: str | None):
    """early_config_prune for a kernel that may keep an (accumulator block, DV) float32
    accumulator fed by whole (operand block, DV) tiles; `flag` names the constexpr that
    turns the accumulator on (None: always on)."""

    def prune(configs, named_args, **kwargs):
        dv, itemsize = kwargs["DV"], named_args["W"].element_size()
        held = accumulator if flag is None or kwargs[flag] else None
        limit = _shared_limit(named_args)
        keep = [c for c in configs if fits_on_chip(c, dv, itemsize, held, operand, limit)]
        for narrowest in (64, 32):  # narrow tiles only where no wider one fits
            wide = [c for c in keep if min(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_C"]) >= narrowest]
            if wide:
                return wide
        return keep or configs[-1:]

    return {"early_config_prune": prune}


def autotune(key: list[str], accumulator: str, operand: str, flag: str | None = None):
    """The autotune decorator of both kernels."""
    return triton.autotune(tuning_configs(), key=key,
                           prune_configs_by=pruner(accumulator, operand, flag),
                           cache_results=True)


def gemm_prune(configs, named_args, **kwargs):
    """The GEMM-tile candidates whose pipelined K-chunks, stages x (BLOCK_N + BLOCK_C) x
    BLOCK_K operands, fit in shared memory."""
    itemsize, limit = named_args["W"].element_size(), _shared_limit(named_args)
    keep = [c for c in configs
            if c.num_stages * (c.kwargs["BLOCK_N"] + c.kwargs["BLOCK_C"]) * c.kwargs["BLOCK_K"]
            * itemsize <= limit]
    return keep or configs[-1:]


def gemm_autotune(key: list[str]):
    """The autotune decorator of a GEMM-tile kernel (no (BLOCK, D) accumulator)."""
    return triton.autotune(gemm_tuning_configs(), key=key,
                           prune_configs_by={"early_config_prune": gemm_prune},
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


def class_splits(device: torch.device, rows: int, num_classes: int, with_v: bool) -> int:
    """How many programs share the classes of one block of rows in the forward pass (one row
    block alone would leave most SMs idle): about two per SM in all where each program keeps
    a (BLOCK_N, DV) accumulator (and writes it per split), four where it only keeps row
    statistics (two or more programs fit an SM then). Independent of the tuned block sizes,
    so the partial buffers can be allocated before tuning."""
    rows_per_block = ROWS_PER_BLOCK_FOR_SPLITS * (1 if with_v else 2)
    row_blocks = -(-rows // rows_per_block)
    class_blocks = -(-num_classes // (16 if interpreted() else ROWS_PER_BLOCK_FOR_SPLITS))
    per_sm = 2 if with_v else 4
    wanted = per_sm * sm_count(device.index or 0) if device.type == "cuda" else 4
    return max(1, min(class_blocks, -(-wanted // row_blocks)))
