"""``python -m benchmarks.under_load``: how much the default chunked step slows down when
other processes compete for the cores, against the three bare matmuls (the time floor).

In one process the floor's step and the chunked ArcFace step (``impl="auto"``) alternate:
--pairs pairs on the machine as it is, then --pairs pairs with --busy processes (default one
per core) spinning in a Python loop beside it. Per variant, slowdown = median loaded step /
median quiet step; issue 13 asks for slowdown(chunked) / slowdown(floor) <= 1.5.

    python -m benchmarks.under_load          # N = 512, D = 256, C = 100k, 2 threads (~1 min)
    python -m benchmarks.under_load --count  # ATen ops per step instead (no timing)

Run it on a machine with nothing else running: the quiet pairs are the baseline. It prints
the 1-minute load average taken before them, and a warning above 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time

import torch

from .op_counts import print_counts
from .variants import BUILDERS, make_inputs

TARGET = 1.5  # slowdown(chunked) / slowdown(floor), issue 13 item 6
VARIANTS = ("floor", "auto")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.under_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="512x256x100000", help="NxDxC")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1,
                        help="busy processes beside the loaded pairs (default: one per core)")
    parser.add_argument("--pairs", type=int, default=5, help="floor/chunked pairs per phase")
    parser.add_argument("--count", action="store_true",
                        help="print the ATen ops of one step of each variant and exit")
    args = parser.parse_args(argv)
    text = args.size
    try:
        args.size = tuple(int(v) for v in text.split("x"))
    except ValueError:
        args.size = ()
    if len(args.size) != 3 or min(args.size) < 1:
        parser.error(f"--size must be NxDxC with positive integers, got {text!r}")
    for name, least in (("pairs", 1), ("threads", 1), ("busy", 0)):
        if getattr(args, name) < least:
            parser.error(f"--{name} must be >= {least}, got {getattr(args, name)}")
    return args


def summarize(quiet: list[tuple[float, float]], loaded: list[tuple[float, float]]) -> dict:
    """quiet, loaded: (floor s, chunked s) per pair. Medians per phase and variant, each
    variant's slowdown (loaded / quiet) and their ratio, slowdown(chunked) / slowdown(floor)."""
    medians = {}
    for phase, pairs in (("quiet", quiet), ("loaded", loaded)):
        for k, variant in enumerate(VARIANTS):
            medians[phase, variant] = statistics.median(p[k] for p in pairs)
    slowdown = {v: medians["loaded", v] / medians["quiet", v] for v in VARIANTS}
    return {"medians": medians, "slowdown": slowdown,
            "ratio": slowdown["auto"] / slowdown["floor"]}


@contextlib.contextmanager
def busy_processes(count: int):
    """count Python processes spinning in a loop (one core each), killed on exit."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(count)]
    try:
        time.sleep(0.5)  # let them start spinning
        yield spinners
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def _timed(step) -> float:
    begin = time.perf_counter()
    step()
    return time.perf_counter() - begin


def _pairs(steps: dict, count: int) -> list[tuple[float, float]]:
    """One warm-up pair, then count pairs of (floor s, chunked s), alternating."""
    for step in steps.values():
        step()
    return [tuple(_timed(step) for step in steps.values()) for _ in range(count)]


def _steps(size) -> dict:
    """The floor's and the chunked step (VARIANTS), each on inputs of its own, gradients
    reset before each call."""
    steps = {}
    for variant in VARIANTS:
        x, w, y = make_inputs(*size, "cpu", torch.float32)
        step = BUILDERS[variant](x, w, y)

        def clean_step(x=x, w=w, step=step):
            x.grad = w.grad = None
            step()

        steps[variant] = clean_step
    return steps


def print_table(summary: dict, args, load: float) -> None:
    medians, slowdown = summary["medians"], summary["slowdown"]
    n, d, c = args.size
    print(f"N={n} D={d} C={c}, float32, {args.threads} threads, forward + backward, median of "
          f"{args.pairs} alternating pairs per phase; load average before: {load:.2f}")
    if load > 1:
        print("WARNING: other processes were running: the quiet phase was not quiet")
    print(f"{'phase':28s} {'floor s':>9s} {'chunked s':>10s} {'chunked/floor':>14s}")
    for phase, label in (("quiet", "quiet"), ("loaded", f"{args.busy} busy processes")):
        floor, chunked = medians[phase, "floor"], medians[phase, "auto"]
        print(f"{label:28s} {floor:9.3f} {chunked:10.3f} {chunked / floor:14.2f}")
    print(f"{'slowdown (loaded / quiet)':28s} {slowdown['floor']:9.2f} {slowdown['auto']:10.2f}")
    verdict = "met" if summary["ratio"] <= TARGET else "NOT met"
    print(f"slowdown(chunked) / slowdown(floor) = {summary['ratio']:.2f} "
          f"(target <= {TARGET}: {verdict})")


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = _steps(args.size)
    if args.count:
        for step in steps.values():
            step()  # warm-up
        print_counts(steps)
        return {}
    load = os.getloadavg()[0]
    quiet = _pairs(steps, args.pairs)
    with busy_processes(args.busy):
        loaded = _pairs(steps, args.pairs)
    summary = summarize(quiet, loaded)
    print_table(summary, args, load)
    return summary


if __name__ == "__main__":
    main()
