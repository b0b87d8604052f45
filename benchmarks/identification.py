"""Memory and time of 1:N identification (margin_softmax.identification) at scale: P probes
against G single-row templates of width D (float32), in a fresh process so that its peak
resident memory (getrusage maxrss) is the search's alone.

    python -m benchmarks.identification                    # 100k probes x 100k templates
    python -m benchmarks.identification --probes 20000 --gallery 20000

Half the probes are of enrolled identities (a noisy copy of their template), half are not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def child(probes: int, gallery: int, dim: int) -> dict:
    from margin_softmax.identification import identification

    rng = np.random.default_rng(0)
    templates = rng.normal(size=(gallery, dim)).astype(np.float32)  # (G, D), one per identity
    labels = rng.integers(0, 2 * gallery, probes)  # half of them not enrolled
    centres = np.where((labels < gallery)[:, None], templates[labels % gallery], 0.0)
    searches = (centres + 2.0 * rng.normal(size=(probes, dim))).astype(np.float32)  # (P, D)
    del centres
    inputs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB so far
    start = time.perf_counter()
    result = identification(templates, np.arange(gallery), searches, labels)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mib": peak, "inputs_peak_mib": inputs,
            **{k: v for k, v in result.items() if k != "cmc"}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.identification",
                                     description=__doc__)
    parser.add_argument("--probes", type=int, default=100_000)
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.probes, args.gallery, args.dim)))
        return
    command = [sys.executable, "-m", "benchmarks.identification", "--child", "--probes",
               str(args.probes), "--gallery", str(args.gallery), "--dim", str(args.dim)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    out = json.loads(done.stdout)
    print(f"{args.probes} probes x {args.gallery} templates, D = {args.dim} float32; load "
          f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"time {out['seconds']:.1f} s; peak resident memory {out['peak_mib']:.0f} MiB "
          f"(process with its inputs, before the search: {out['inputs_peak_mib']:.0f} MiB)")
    print(f"rank-1 {100 * out['rank1']:.2f}%, TPIR@FPIR=0.01 {100 * out['tpir@0.01']:.2f}% "
          f"({out['mated']} mated, {out['non_mated']} non-mated probes)")


if __name__ == "__main__":
    main()
