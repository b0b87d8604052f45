"""Weak scaling of the class-sharded head: W ranks, a fixed number of classes and samples per
rank, so the model grows with W. One step = forward, backward and an SGD step of the head.

    python -m benchmarks.distributed_scaling                       # CPU, gloo, W = 1, 2, 4
    python -m benchmarks.distributed_scaling --device cuda --worlds 1 2 4 8   # NCCL, 1 GPU/rank
    python -m benchmarks.distributed_scaling --head adaface        # a per-sample sharded head

``--head``: PartialFC (ArcFace, m = 0.5, s = 64) or AdaFacePartialFC (its defaults); the
one-process baselines run the same loss (margin_cross_entropy, or ms.AdaFace).

Per W it reports the median step time (the slowest rank's median) and the memory per rank
(CPU: the peak resident memory of the timed steps above the resident memory before them,
i.e. what a step allocates on top of weights, data, gradients and optimizer state; GPU:
peak allocated, all of those included). Baselines in the same run, each in its own
process: one process holding all W * C_r classes and the whole global batch, eager (logits
materialised) and chunked.
Every rank sees the global batch (W * B rows), so the work per rank grows with W even at
fixed classes per rank; the ideal weak-scaling step time therefore grows like W * B * C_r.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rss_mib(field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS) or its peak since the last reset (VmHWM), Linux only."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def _step_fn(mode: str, config: dict, world: int, device: torch.device):
    """A closure running one training step of the head, and its (weight, data) MiB."""
    import margin_softmax as ms
    from margin_softmax import margin_cross_entropy
    from margin_softmax.distributed import AdaFacePartialFC, PartialFC

    dim, batch, per_rank = config["dim"], config["batch"], config["classes_per_rank"]
    torch.manual_seed(dist.get_rank() if dist.is_initialized() else 0)
    if mode == "sharded":
        if config["head"] == "adaface":
            head = AdaFacePartialFC(dim, per_rank * world, sample_rate=config["sample_rate"])
        else:
            head = PartialFC(dim, per_rank * world, m2=0.5, scale=64.0,
                             sample_rate=config["sample_rate"])
        head = head.to(device)
        n, params = batch, [head.weight]
        loss_fn = head
    elif config["head"] == "adaface":  # one process, every class, the global batch
        head = ms.AdaFace(dim, per_rank * world, impl=mode).to(device)
        n, params, loss_fn = batch * world, [head.weight], head
    else:
        weight = torch.nn.Parameter(torch.randn(per_rank * world, dim, device=device) * 0.01)
        n, params = batch * world, [weight]
        loss_fn = lambda x, y: margin_cross_entropy(x, weight, y, scale=64.0, m2=0.5, impl=mode)
    x = torch.randn(n, dim, device=device, requires_grad=True)
    labels = torch.randint(0, per_rank * world, (n,), device=device)
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(x, labels).backward()
        optimizer.step()

    return step, (params[0].numel() + x.numel()) * 4 / 2**20


def _worker(rank: int, world: int, port: int, mode: str, config: dict, out: str) -> None:
    device = torch.device(config["device"])
    torch.set_num_threads(config["threads"])
    if device.type == "cuda":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    if world > 1:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=timedelta(seconds=300))
    step, static_mib = _step_fn(mode, config, world if mode == "sharded" else config["world"],
                                device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(config["warmup"]):
        step()
    sync()
    before = _rss_mib()  # weights, data, gradients, momentum; libraries loaded
    _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(config["steps"]):
        if world > 1:
            dist.barrier()
        sync()
        begin = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - begin)
    memory = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
              else _rss_mib("VmHWM") - before)
    record = {"median_s": statistics.median(times), "memory_mib": memory,
              "static_mib": static_mib}
    Path(out, f"{mode}-{world}-{rank}.json").write_text(json.dumps(record))
    if world > 1:
        dist.barrier()  # every rank has written its results before any tears down
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, mode: str, config: dict, out: str) -> list[dict]:
    """Every rank's record. gloo's teardown (destroy_process_group, or the exit after it)
    aborts a process now and then (~1 run in 12 here, either head): after the barrier every
    record is written, so such an exit costs a warning, not the measurement."""
    paths = [Path(out, f"{mode}-{world}-{r}.json") for r in range(world)]
    try:
        mp.start_processes(_worker, args=(world, _free_port(), mode, config, out),
                           nprocs=world, start_method="spawn")
    except mp.ProcessExitedException as error:
        if not all(path.exists() for path in paths):
            raise
        print(f"warning: {mode} x{world}: {error} after every rank wrote its results",
              file=sys.stderr)
    return [json.loads(path.read_text()) for path in paths]


def run(worlds=(1, 2, 4), classes_per_rank=20000, dim=128, batch=64, steps=5, warmup=1,
        sample_rate=1.0, device="cpu", threads=1, baselines=True,
        head="partialfc") -> list[dict]:
    """One row per (variant, W): step time and memory per rank."""
    config = {"classes_per_rank": classes_per_rank, "dim": dim, "batch": batch, "steps": steps,
              "warmup": warmup, "sample_rate": sample_rate, "device": device,
              "threads": threads, "head": head}
    name = {"partialfc": "PartialFC", "adaface": "AdaFacePartialFC"}[head]
    rows = []
    # large blocks straight from mmap, so that freed memory leaves the resident set at once
    # and the peak resident memory of a step measures what the step allocates
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    with tempfile.TemporaryDirectory() as out:
        for world in worlds:
            config["world"] = world
            variants = [("sharded", world)]
            if baselines:
                variants += [("eager", 1), ("chunked", 1)]
            for mode, processes in variants:
                ranks = _launch(processes, mode, config, out)
                rows.append({
                    "variant": f"{name} x{world}" if mode == "sharded" else f"1 process {mode}",
                    "W": world, "classes": classes_per_rank * world, "global_batch": batch * world,
                    "step_ms": 1000 * max(r["median_s"] for r in ranks),
                    "memory_mib_per_rank": max(r["memory_mib"] for r in ranks),
                    "weight_and_data_mib_per_rank": max(r["static_mib"] for r in ranks),
                })
    base = {row["W"]: row["step_ms"] for row in rows if row["variant"].startswith(name)}
    for row in rows:
        row["step_vs_W1"] = row["step_ms"] / base[min(base)]
    return rows


def table(rows: list[dict]) -> str:
    head = ("| variant | W | classes | global batch | step ms | x W=1 step | memory MiB/rank "
            "| weight+data MiB/rank |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [
        f"| {r['variant']} | {r['W']} | {r['classes']} | {r['global_batch']} | "
        f"{r['step_ms']:.1f} | {r['step_vs_W1']:.2f} | {r['memory_mib_per_rank']:.1f} | "
        f"{r['weight_and_data_mib_per_rank']:.1f} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.distributed_scaling",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--classes-per-rank", type=int, default=20000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=64, help="samples per rank")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--sample-rate", type=float, default=1.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--head", choices=["partialfc", "adaface"], default="partialfc")
    p.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    args = p.parse_args(argv)
    rows = run(args.worlds, args.classes_per_rank, args.dim, args.batch, args.steps,
               args.warmup, args.sample_rate, args.device, args.threads, not args.no_baselines,
               args.head)
    print(f"{os.cpu_count()} CPU cores, torch {torch.__version__}, device {args.device}",
          file=sys.stderr)
    print(table(rows))
    if args.csv:
        import csv

        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
