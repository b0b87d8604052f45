"""Compile every pruned tuning candidate of the Triton kernels for an NVIDIA GPU (Hopper,
sm_90a, by default) without a GPU and print shared memory, registers per thread and spilled
bytes (ptxas -v). The candidates are pruned to that GPU's shared memory per block.

    .venv/bin/python scripts/kernel_resources.py [--dim 512] [--dtype bf16] [--arch 90|89|86|80]

Uses triton.compile with a GPUTarget and the ptxas bundled with triton; integer arguments
get the divisibility-by-16 hint the JIT would give them (as at D = 512, C = 1M), unit
strides are constants, so the pipeliner sees what it sees at run time.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from margin_softmax.kernels import backward, config, forward, gradient_tiles  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FLOAT_ARGS = ("INV", "R", "M", "S", "T", "V", "LSE", "GR", "TGT")
UNIT_STRIDES = ("stride_xd", "stride_wd")  # (gradient_tile_kernel's H has unit columns)


SHARED_MEMORY = {90: 227, 89: 99, 86: 99, 80: 163}  # KiB per block (opt-in maximum)


def compile_kernel(fn, dtype: str, constants: dict, warps: int, stages: int, arch: int):
    signature, constexprs, attrs = {}, {}, {}
    constants = dict(constants, **{name: 1 for name in UNIT_STRIDES})
    for index, name in enumerate(fn.arg_names):
        if name in constants:
            signature[name] = "constexpr"
            constexprs[(index,)] = constants[name]
            continue
        if name in ("X", "W", "DW", "H"):
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


def ptxas_report(ptx: str, arch: int) -> tuple[str, str]:
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas-blackwell")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    gpu = "sm_90a" if arch == 90 else f"sm_{arch}"
    done = subprocess.run([ptxas, f"--gpu-name={gpu}", "-v", f.name, "-o", os.devnull],
                          capture_output=True, text=True)
    text = done.stdout + done.stderr
    registers = re.findall(r"Used (\d+) registers", text)
    spilled = re.findall(r"(\d+) bytes spill stores", text)
    return (registers or ["?"])[0], (spilled or ["?"])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--arch", type=int, choices=sorted(SHARED_MEMORY), default=90)
    args = parser.parse_args()
    config.DEFAULT_SHARED_MEMORY = SHARED_MEMORY[args.arch] * 1024  # what the pruners see
    dv, weight = config.padded_dim(args.dim), torch.empty(1, 1, dtype=DTYPES[args.dtype])
    precision = "ieee" if args.dtype == "fp32" else "tf32"
    kernels = [  # (name, kernel, accumulator, operand, flag, constants)
        ("forward", forward.lse_kernel, "BLOCK_N", "BLOCK_C", "WITH_V",
         {"WITH_COS_MEAN": True, "WITH_V": False, "INV_CAP": 3.0e38}),
        ("forward+v", forward.lse_kernel, "BLOCK_N", "BLOCK_C", "WITH_V",
         {"WITH_COS_MEAN": True, "WITH_V": True, "INV_CAP": 3.0e38}),
        ("backward", backward.weight_grad_kernel, "BLOCK_C", "BLOCK_N", None, {"EPS": 1e-12}),
    ]
    kernels.append(("gradients", gradient_tiles.gradient_tile_kernel, None, None, None, {}))
    for name, kernel, accumulator, operand, flag, constants in kernels:
        if accumulator is None:  # a GEMM tile: config.gemm_prune
            candidates = config.gemm_prune(config.gemm_tuning_configs(), {"W": weight})
        else:
            prune = config.pruner(accumulator, operand, flag)["early_config_prune"]
            keys = {"DV": dv, **({flag: constants[flag]} if flag else {})}
            candidates = prune(config.tuning_configs(), {"W": weight}, **keys)
        for cfg in candidates:
            shape = tuple(cfg.kwargs[k] for k in ("BLOCK_N", "BLOCK_C", "BLOCK_K"))
            label = f"{name:10s} {shape} warps {cfg.num_warps} stages {cfg.num_stages} " \
                    f"resident {cfg.kwargs.get('RESIDENT', False)!s:5s}"
            values = dict(constants, **cfg.kwargs, UPCAST=False, PRECISION=precision)
            if accumulator is not None:
                values["DV"] = dv
            try:
                compiled = compile_kernel(kernel.fn, args.dtype, values, cfg.num_warps,
                                          cfg.num_stages, args.arch)
            except Exception as error:  # report and go on: the autotuner skips these too
                print(label, "FAILED", type(error).__name__, str(error)[:200].replace("\n", " "))
                continue
            registers, spilled = ptxas_report(compiled.asm["ptx"], args.arch)
            print(label, f"shared {compiled.metadata.shared // 1024} KiB, registers "
                         f"{registers}, spilled {spilled} B", flush=True)


if __name__ == "__main__":
    main()
