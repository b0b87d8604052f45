"""Compile every Triton kernel and every pruned tuning candidate for an NVIDIA GPU without
one, with Triton's compiler and the ptxas it bundles, and print shared memory, registers per
thread and spilled bytes (ptxas -v). The candidates are pruned to that GPU's shared memory.

    .venv/bin/python scripts/kernel_resources.py [--dim 512] [--dtype bf16] [--arch 90|89|86|80]
    .venv/bin/python scripts/kernel_resources.py --check   # CI: make kernels
    .venv/bin/python scripts/kernel_resources.py --record  # after a deliberate change

--check compiles for sm_80 and sm_90a at the D and dtype of docs/kernel_spills.json and exits
1, naming the GPU, kernel and candidate, where one does not compile or spills more bytes
than that file records for it (or it records nothing). --record rewrites the file from what
it measures. Any compile failure exits 1.

Uses triton.compile with a GPUTarget; integer arguments get the divisibility-by-16 hint the
JIT would give them (as at D = 512, C = 1M), unit strides are constants, so the pipeliner
sees what it sees at run time. ptxas runs as Triton runs it (same binary, same allocator
option); the compiles are spread over the CPU cores and cached by Triton.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, said aloud

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from margin_softmax.atomic_files import atomic_write_text  # noqa: E402
from margin_softmax.kernels import (  # noqa: E402
    backward,
    config,
    forward,
    gradient_tiles,
    gradients,
    norms,
)
from margin_softmax.kernels.self_check import describe  # noqa: E402
from margin_softmax.numerics import NORM_EPS  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FLOAT_ARGS = ("INV", "R", "M", "S", "T", "V", "LSE", "GR", "TGT")
DTYPE_ARGS = ("X", "W", "DW", "H", "OUT")
UNIT_STRIDES = ("stride_xd", "stride_wd")  # (gradient_tile_kernel's H has unit columns)
SHARED_MEMORY = {90: 227, 89: 99, 86: 99, 80: 163}  # KiB per block (opt-in maximum)
CHECKED_ARCHS = (80, 90)
SPILLS = Path(__file__).resolve().parent.parent / "docs" / "kernel_spills.json"
FUNCTIONS = {  # the kernels, by the name a job carries to its worker process
    "lse_kernel": forward.lse_kernel.fn,
    "weight_grad_kernel": backward.weight_grad_kernel.fn,
    "gradient_tile_kernel": gradient_tiles.gradient_tile_kernel.fn,
    "row_inv_norm_kernel": norms.row_inv_norm_kernel,
    "unit_rows_grad_kernel": gradients.unit_rows_grad_kernel,
}


class Job(NamedTuple):
    """One compile: a kernel (a FUNCTIONS key) with its constexpr values and launch options;
    `types` overrides the argument types read from the names."""

    arch: int
    dtype: str
    kernel: str
    label: str
    values: dict
    warps: int
    stages: int
    types: dict


def compile_kernel(fn, dtype: str, constants: dict, warps: int, stages: int, arch: int,
                   types: dict | None = None):
    signature, constexprs, attrs = {}, {}, {}
    constants = dict(constants, **{name: 1 for name in UNIT_STRIDES})
    for index, name in enumerate(fn.arg_names):
        if name in constants:
            signature[name] = "constexpr"
            constexprs[(index,)] = constants[name]
            continue
        if types and name in types:
            signature[name] = types[name]
        elif name in DTYPE_ARGS:
            signature[name] = f"*{dtype}"
        elif name == "Y":
            signature[name] = "*i64"
        elif name in FLOAT_ARGS:
            signature[name] = "*fp32"
        else:
            signature[name] = "i32"
        if name != "R":
            attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": warps, "num_stages": stages})


def ptxas_report(ptx: str, arch: int) -> tuple[int, int]:
    """(registers per thread, spilled bytes) of a kernel, as Triton's ptxas run reports."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        done = subprocess.run([get_ptxas(arch).path, "-v", "--regAllocOptLevel=2",
                               f"--gpu-name={sm_arch_from_capability(arch)}", f.name,
                               "-o", os.devnull], capture_output=True, text=True, check=True)
    finally:
        os.remove(f.name)
    text = done.stdout + done.stderr
    return (int(re.search(r"Used (\d+) registers", text).group(1)),
            int(re.search(r"(\d+) bytes spill stores", text).group(1)))


def jobs(arch: int, dim: int, dtype: str) -> list[Job]:
    """Every kernel with every candidate the pruners keep for that GPU at embedding size
    `dim`."""
    config.DEFAULT_SHARED_MEMORY = SHARED_MEMORY[arch] * 1024  # what the pruners see
    dv, weight = config.padded_dim(dim), torch.empty(1, 1, dtype=DTYPES[dtype])
    precision = "ieee" if dtype == "fp32" else "tf32"
    tuned = [  # (label, kernel, accumulator, operand, flag, constants)
        ("forward", "lse_kernel", "BLOCK_N", "BLOCK_C", "WITH_V",
         {"WITH_COS_MEAN": True, "WITH_V": False, "INV_CAP": 3.0e38}),
        ("forward+v", "lse_kernel", "BLOCK_N", "BLOCK_C", "WITH_V",
         {"WITH_COS_MEAN": True, "WITH_V": True, "INV_CAP": 3.0e38}),
        ("backward", "weight_grad_kernel", "BLOCK_C", "BLOCK_N", None, {"EPS": NORM_EPS}),
        ("gradients", "gradient_tile_kernel", None, None, None, {}),
    ]
    found = []
    for name, kernel, accumulator, operand, flag, constants in tuned:
        if accumulator is None:  # a GEMM tile: config.gemm_prune
            candidates = config.gemm_prune(config.gemm_tuning_configs(), {"W": weight})
        else:
            prune = config.pruner(accumulator, operand, flag)["early_config_prune"]
            keys = {"DV": dv, **({flag: constants[flag]} if flag else {})}
            candidates = prune(config.tuning_configs(), {"W": weight}, **keys)
        for cfg in candidates:
            block = "x".join(str(cfg.kwargs[k]) for k in ("BLOCK_N", "BLOCK_C", "BLOCK_K"))
            resident = " resident" if cfg.kwargs.get("RESIDENT") else ""
            label = f"{name} {block} warps {cfg.num_warps} stages {cfg.num_stages}{resident}"
            values = dict(constants, **cfg.kwargs, UPCAST=False, PRECISION=precision)
            if accumulator is not None:
                values["DV"] = dv
            found.append(Job(arch, dtype, kernel, label, values, cfg.num_warps, cfg.num_stages,
                             {}))
    plain = [  # launched with fixed blocks and Triton's default 4 warps, 3 stages
        ("norms", "row_inv_norm_kernel",
         {"EPS": NORM_EPS, "BLOCK_R": norms.BLOCK_R, "BLOCK_D": norms.BLOCK_D}, {}),
        ("unit rows", "unit_rows_grad_kernel",
         {"EPS": NORM_EPS, "BLOCK": gradients.ROWS_PER_PROGRAM,
          "DV": triton.next_power_of_2(dim)}, {"A": "*fp32", "T": "i32"}),
    ]
    found += [Job(arch, dtype, kernel, name, values, 4, 3, types)
              for name, kernel, values, types in plain]
    return found


def measure(job: Job) -> tuple[dict | None, str | None]:
    """({"shared": KiB, "registers": n, "spilled": bytes}, None), or (None, why it does not
    compile)."""
    try:
        compiled = compile_kernel(FUNCTIONS[job.kernel], job.dtype, job.values, job.warps,
                                  job.stages, job.arch, job.types)
        registers, spilled = ptxas_report(compiled.asm["ptx"], job.arch)
    except Exception as error:  # any failure is the finding, not a crash of the check
        return None, describe(error)
    return {"shared": compiled.metadata.shared // 1024, "registers": registers,
            "spilled": spilled}, None


def measure_all(archs, dim: int, dtype: str) -> list[tuple[str, str, dict | None, str | None]]:
    """(GPU, label, resources or None, failure or None) for every job, compiled in parallel."""
    work = [job for arch in archs for job in jobs(arch, dim, dtype)]
    context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=context) as pool:
        results = list(pool.map(measure, work))
    return [(f"sm_{job.arch}", job.label, *result)
            for job, result in zip(work, results, strict=True)]


def spill_problems(measured, recorded: dict) -> list[str]:
    """A line per candidate that spills more than recorded, or has no record; a line per
    record of a candidate that no longer exists."""
    problems, seen = [], set()
    for gpu, label, resources, _ in measured:
        if resources is None:
            continue
        seen.add((gpu, label))
        limit = recorded.get(gpu, {}).get(label)
        if limit is None:
            problems.append(f"{gpu} {label}: spills {resources['spilled']} B and "
                            f"{SPILLS.name} records no bound for it (--record)")
        elif resources["spilled"] > limit:
            problems.append(f"{gpu} {label}: spills {resources['spilled']} B, more than the "
                            f"{limit} B {SPILLS.name} records")
    problems += [f"{gpu} {label}: recorded in {SPILLS.name} but no longer a candidate"
                 for gpu, labels in recorded.items() for label in labels
                 if (gpu, label) not in seen]
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--arch", type=int, choices=sorted(SHARED_MEMORY), default=90)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail on spills over the record")
    mode.add_argument("--record", action="store_true", help="rewrite the record")
    args = parser.parse_args()
    archs, dim, dtype = (args.arch,), args.dim, args.dtype
    if args.check or args.record:
        archs = CHECKED_ARCHS
        saved = json.loads(SPILLS.read_text())
        dim, dtype = saved["dim"], saved["dtype"]
    measured = measure_all(archs, dim, dtype)
    problems = []
    for gpu, label, resources, failure in measured:
        if failure is not None:
            problems.append(f"{gpu} {label}: does not compile: {failure}")
            continue
        print(f"{gpu:6s} {label:42s} shared {resources['shared']:3d} KiB, registers "
              f"{resources['registers']:3d}, spilled {resources['spilled']:4d} B")
    if args.record and not problems:
        spilled = {}
        for gpu, label, resources, _ in measured:
            spilled.setdefault(gpu, {})[label] = resources["spilled"]
        saved["spilled_bytes"] = spilled
        atomic_write_text(SPILLS, json.dumps(saved, indent=1) + "\n")
    elif args.check:
        problems += spill_problems(measured, saved["spilled_bytes"])
    for line in problems:
        print("FAILED", line, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
