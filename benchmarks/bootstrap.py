"""Speed of the bootstrap intervals (margin_softmax.bootstrap): R resamples of n trials,
resampling identities and resampling trials, each timed from the scores to the intervals.

    python -m benchmarks.bootstrap                        # 1000 resamples of 1M trials
    python -m benchmarks.bootstrap --trials 100000 --resamples 200

The trials: ``--identities`` enrollment identities, a fraction ``--targets`` of target
trials, scores N(2, 1) for targets and N(0, 1) for non-targets plus a shift per identity.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from margin_softmax import bootstrap


def trials(n: int, identities: int, targets: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, identities, n)
    labels = rng.random(n) < targets
    scores = rng.normal(size=n) + 2.0 * labels + 0.5 * rng.normal(size=identities)[groups]
    return scores, labels, groups


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bootstrap", description=__doc__)
    parser.add_argument("--trials", type=int, default=1_000_000)
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--targets", type=float, default=0.1, help="target fraction")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="threads (default 2)")
    args = parser.parse_args(argv)
    scores, labels, groups = trials(args.trials, args.identities, args.targets)
    print(f"{args.trials} trials ({int(labels.sum())} targets), {args.identities} identities, "
          f"{args.resamples} resamples, {args.workers} threads; EER, minDCF at 0.01 and 0.05, "
          f"TAR at FAR 1e-3; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for by, g in (("identities", groups), ("trials", None)):
        start = time.perf_counter()
        values = bootstrap.replicates(scores, labels, g, (0.01, 0.05), (1e-3,),
                                      args.resamples, seed=0, workers=args.workers)
        seconds = time.perf_counter() - start
        low, high = bootstrap.percentile_interval(values["eer"])
        print(f"resampling {by:<10}  {seconds:7.1f} s  ({1000 * seconds / args.resamples:.1f} "
              f"ms per resample)  EER 95% interval [{100 * low:.3f}%, {100 * high:.3f}%]")


if __name__ == "__main__":
    main()
