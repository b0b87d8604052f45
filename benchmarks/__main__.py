"""``python -m benchmarks``: every variant at every size, each in its own process, as ratios
to the floor measured in the same run (time: the three bare matmuls; memory: the process
holding torch, the embeddings, the weights and their gradients). Prints a table, writes
results.csv and results.png to --out.

    python -m benchmarks                                   # CPU, C = 100k and 1M (~4 min)
    python -m benchmarks --device cuda --dtype bfloat16 --sizes 1024x512x1000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from .report import Row, print_table, write_csv, write_plot
from .variants import HOLDS_LOGITS, VARIANTS

DEFAULT_SIZES = {"cpu": "512x256x100000,512x256x1000000", "cuda": "1024x512x1000000"}
DEFAULT_IMPLS = {
    "cpu": "floor,auto,eager,insightface,pml,linear_ce",
    "cuda": "floor,auto,triton_fused,partial_fc,chunked,eager,insightface,linear_ce",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default=None, help="float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--sizes", default=None, help="NxDxC,... (default per device)")
    parser.add_argument("--impls", default=None, help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps after warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    parser.add_argument("--out", default="benchmarks/results", help="folder for CSV and PNG")
    parser.add_argument(
        "--max-logits-gb",
        type=float,
        default=1.0,
        help="skip variants that materialise float32 (N, C) logits bigger than this",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per variant")
    parser.add_argument("--pairs", type=int, default=5,
                        help="variant/floor step pairs alternated in each variant's process "
                        "for the same-process ratio (at most 30 s of them; 0: none)")
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    sizes = (args.sizes or DEFAULT_SIZES[args.device]).split(",")
    args.sizes = [tuple(int(v) for v in size.split("x")) for size in sizes]
    args.impls = (args.impls or DEFAULT_IMPLS[args.device]).split(",")
    args.repeats = args.repeats or (20 if args.device == "cuda" else 3)
    unknown = set(args.impls) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown --impls {sorted(unknown)}; choose from {VARIANTS}")
    return args


def run_child(variant: str, size, args) -> dict:
    """One variant in a fresh process; {} with a note when it failed or was skipped."""
    n, d, c = size
    logits_gb = n * c * 4 / 2**30
    if variant in HOLDS_LOGITS and logits_gb > args.max_logits_gb:
        return {"note": f"skipped: holds (N, C) logits of {logits_gb:.1f} GB"}
    if variant == "linear_ce" and c > 200_000 and args.device == "cpu":
        return {"note": "skipped: ~20x the floor, minutes per step at this size"}
    command = [sys.executable, "-m", "benchmarks.child", variant, str(n), str(d), str(c)]
    command += ["--device", args.device, "--dtype", args.dtype]
    command += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    command += ["--pairs", str(args.pairs)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"note": f"timed out after {args.timeout:.0f} s"}
    if done.returncode != 0:
        lines = (done.stderr.strip() or "no output").splitlines()
        return {"note": f"failed: {lines[-1][:120]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        floor = run_child("floor", size, args)
        for variant in args.impls:
            record = run_child(variant, size, args) if variant != "floor" else dict(floor)
            if variant == "floor":  # its own peak holds G (N, C) too: report the floor itself
                record["peak_mb"] = floor.get("floor_mb")
            row = Row(variant, size, record.get("median_s"), record.get("peak_mb"))
            row.floor_s, row.floor_mb = floor.get("median_s"), floor.get("floor_mb")
            row.note = record.get("note", "")
            row.interleaved_ratio = record.get("interleaved_ratio")
            first = record.get("first_peak_mb")  # CUDA: the warm-up's peak (autotuning)
            if variant != "floor" and first and row.peak_mb and first > 1.01 * row.peak_mb:
                row.note = f"first step {first:.0f} MiB"
            rows.append(row)
            print(f"  {variant} {row.size_text}: {row.note or 'done'}", file=sys.stderr)
            write_csv(rows, args, out / "results.csv")  # what is measured survives a kill
    print_table(rows, args)
    write_plot(rows, args, out / "results.png")
    print(f"\nwrote {out / 'results.csv'} and {out / 'results.png'}")


if __name__ == "__main__":
    main()
