"""One variant at one size in this process: ``python -m benchmarks.child VARIANT N D C``.
Prints one JSON line: the median and all step times, the peak memory (CPU: peak resident
set of this process, which cannot be reset; CUDA: peak allocated over the timed steps), the
peak up to the end of the warm-up step (first_peak_mb: on CUDA it holds Triton's one-off
autotuning) and, for the floor, the memory floor (the process or device holding torch, the
embeddings, the weights and their gradients).

Then, with the peak already taken, the variant's step and the floor's (on inputs of their
own) alternate for up to --pairs pairs (at least two, then within --pair-seconds):
interleaved_ratio, the median step over the median floor of those pairs, is the time ratio
with the machine's drift between processes taken out (on a shared CPU it moves by 10-30%
from one process to the next)."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from .variants import BUILDERS, make_inputs


def peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def timed(step, device: str) -> float:
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000
    begin = time.perf_counter()
    step()
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variant", choices=sorted(BUILDERS))
    parser.add_argument("n", type=int)
    parser.add_argument("d", type=int)
    parser.add_argument("c", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--pair-seconds", type=float, default=30.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, w, y = make_inputs(args.n, args.d, args.c, args.device, getattr(torch, args.dtype))
    x.grad, w.grad = torch.zeros_like(x), torch.zeros_like(w)
    if args.device == "cuda":
        torch.cuda.synchronize()
    floor_mb = peak_mb(args.device)  # inputs and their gradients, nothing else yet
    x.grad = w.grad = None
    step = BUILDERS[args.variant](x, w, y)

    def clean_step():
        x.grad = w.grad = None  # each step starts like a training step after zero_grad()
        step()

    clean_step()  # warm-up (Triton autotunes here, with a 256 MiB L2-flush buffer)
    first_peak_mb = peak_mb(args.device)
    if args.device == "cuda":  # the steady state: the peak of the timed steps alone
        torch.cuda.reset_peak_memory_stats()
    times = [timed(clean_step, args.device) for _ in range(args.repeats)]
    record = {
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_mb": peak_mb(args.device),
        "first_peak_mb": first_peak_mb,
        "floor_mb": floor_mb,
    }
    if args.variant != "floor" and args.pairs > 0:
        record["interleaved_ratio"] = interleaved_ratio(clean_step, args)
    print(json.dumps(record))


def interleaved_ratio(step, args) -> float:
    """median(step) / median(floor) over alternating pairs (see the module doc)."""
    inputs = make_inputs(args.n, args.d, args.c, args.device, getattr(torch, args.dtype), seed=1)
    floor = BUILDERS["floor"](*inputs)
    floor()  # its warm-up
    floors, steps, begin = [], [], time.perf_counter()
    while len(steps) < max(2, args.pairs):
        if len(steps) >= 2 and time.perf_counter() - begin > args.pair_seconds:
            break
        floors.append(timed(floor, args.device))
        steps.append(timed(step, args.device))
    return statistics.median(steps) / statistics.median(floors)


if __name__ == "__main__":
    main()
