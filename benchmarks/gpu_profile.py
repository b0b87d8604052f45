"""Where a Triton training step spends its time on CUDA: the step against one cuBLAS x W^T,
the forward with and without gradients, and the per-kernel CUDA times (torch.profiler).

    python -m benchmarks.gpu_profile [--size 1024x512x1000000] [--schedule gemm|fused]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import margin_softmax as ms


def median_ms(fn, repeats: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1024x512x1000000", help="NxDxC")
    parser.add_argument("--schedule", default=None, help="gemm or fused (kernels/config.py)")
    args = parser.parse_args(argv)
    if args.schedule:
        from margin_softmax.kernels import config

        config.SCHEDULE = args.schedule
    n, d, c = (int(v) for v in args.size.split("x"))
    torch.manual_seed(0)
    w = torch.randn(c, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    x = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = torch.randint(0, c, (n,), device="cuda")

    def loss():
        return ms.margin_cross_entropy(x, w, y, scale=64.0, m2=0.5, impl="triton")

    def step():
        loss().backward()

    def forward_without_grad():
        with torch.no_grad():
            loss()

    from margin_softmax.kernels import config

    print(f"{torch.cuda.get_device_name()}, bf16, N={n} D={d} C={c}, {config.SCHEDULE} schedule")
    print(f"cuBLAS x W^T          {median_ms(lambda: x.detach() @ w.detach().t()):8.2f} ms")
    print(f"forward, no gradient  {median_ms(forward_without_grad):8.2f} ms")
    print(f"forward + backward    {median_ms(step):8.2f} ms")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8))


if __name__ == "__main__":
    main()
