"""One variant at one size in this process: ``python -m benchmarks.child VARIANT N D C``.
Prints one JSON line: the median and all step times, the peak memory (CPU: peak resident
set of this process, which cannot be reset; CUDA: peak allocated over the timed steps), the
peak up to the end of the warm-up step (first_peak_mb: on CUDA it holds Triton's one-off
autotuning) and, for the floor, the memory floor (the process or device holding torch, the
embeddings, the weights and their gradients)."""

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
    print(json.dumps(record))


if __name__ == "__main__":
    main()
