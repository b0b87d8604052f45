"""Where a Triton training step spends its time on CUDA: the step against one cuBLAS x W^T,
the forward with and without gradients, and the per-kernel CUDA times (torch.profiler).
With --device cpu (TRITON_INTERPRET=1, a tiny --size) the same steps run on the CPU, timed
with perf_counter and profiled for CPU time: a check of this script, not a measurement.

    python -m benchmarks.gpu_profile [--size 1024x512x1000000] [--schedule gemm|fused]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import margin_softmax as ms

from .child import timed


def median_ms(fn, device: str, repeats: int) -> float:
    fn()  # warm-up (Triton autotunes here)
    if device == "cuda":
        torch.cuda.synchronize()
    times = [timed(fn, device) * 1e3 for _ in range(repeats)]
    return sorted(times)[len(times) // 2]


def print_tuned_configs() -> None:
    """One line per autotuned kernel and tuning key: the config it runs. TRITON_PRINT_AUTOTUNING
    prints a pick only when this process tuned it, not when it came from Triton's disk cache
    (as after the benchmark at the same size); under the interpreter there is one config."""
    from margin_softmax.kernels import backward, forward, gradient_tiles

    for kernel in (forward.lse_kernel, gradient_tiles.gradient_tile_kernel,
                   backward.weight_grad_kernel):
        picks = dict(kernel.cache)
        if not picks and hasattr(kernel, "best_config"):  # one config: no cache
            picks["(only config)"] = kernel.best_config
        for key, config in picks.items():
            print(f"tuned {kernel.fn.__name__} {key}: {config}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1024x512x1000000", help="NxDxC")
    parser.add_argument("--schedule", default=None, help="gemm or fused (kernels/config.py)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = parser.parse_args(argv)
    if args.schedule:
        from margin_softmax.kernels import config

        config.SCHEDULE = args.schedule
    n, d, c = (int(v) for v in args.size.split("x"))
    device = args.device
    repeats, profiled_steps = (10, 3) if device == "cuda" else (2, 1)
    torch.manual_seed(0)
    w = torch.randn(c, d, device=device, dtype=torch.bfloat16, requires_grad=True)
    x = torch.randn(n, d, device=device, dtype=torch.bfloat16, requires_grad=True)
    y = torch.randint(0, c, (n,), device=device)

    def loss():
        return ms.margin_cross_entropy(x, w, y, scale=64.0, m2=0.5, impl="triton")

    def step():
        loss().backward()

    def forward_without_grad():
        with torch.no_grad():
            loss()

    from margin_softmax.kernels import config

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter)"
    print(f"{name}, bf16, N={n} D={d} C={c}, {config.SCHEDULE} schedule")
    matmul = lambda: x.detach() @ w.detach().t()
    print(f"cuBLAS x W^T          {median_ms(matmul, device, repeats):8.2f} ms")
    print(f"forward, no gradient  {median_ms(forward_without_grad, device, repeats):8.2f} ms")
    print(f"forward + backward    {median_ms(step, device, repeats):8.2f} ms")
    activity = ProfilerActivity.CUDA if device == "cuda" else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        for _ in range(profiled_steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by=f"{device}_time_total", row_limit=8))
    print_tuned_configs()


if __name__ == "__main__":
    main()
