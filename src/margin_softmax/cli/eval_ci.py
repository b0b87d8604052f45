"""``eval --ci``: 95% bootstrap intervals for EER, minDCF and TAR@FAR
(``margin_softmax.bootstrap``), resampling speakers or trials."""

from __future__ import annotations

import argparse

import numpy as np

from .. import bootstrap, scoring
from .common import CliError, positive_int

LEVEL = 0.95


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ci", action="store_true",
                   help="95%% bootstrap intervals for EER, minDCF and TAR@FAR")
    p.add_argument("--ci-by", choices=("speaker", "trial"),
                   help="with --ci, resample speakers (a trial's speaker is its enroll name "
                   "up to the first '/': the speaker of VoxCeleb lists, the model elsewhere; "
                   "the default with trial names) or trials within each class (the default "
                   "for a two-column file)")
    p.add_argument("--resamples", type=positive_int, default=1000, metavar="R",
                   help="with --ci, the bootstrap resamples (default 1000)")


def results(args: argparse.Namespace, scores: np.ndarray, labels: np.ndarray,
            trials: scoring.Trials | None) -> dict:
    """{"ci": {"level", "by", "units", "resamples", metric: [low, high]...}} with --ci."""
    if not args.ci:
        if args.ci_by:
            raise CliError("--ci-by needs --ci")
        return {}
    by = args.ci_by or ("speaker" if trials is not None else "trial")
    if by == "speaker" and trials is None:
        raise CliError("--ci-by speaker needs trial names (--trials); a two-column file has "
                       "none: use --ci-by trial")
    groups = [name.split("/", 1)[0] for name in trials.enroll] if by == "speaker" else None
    units = len(set(groups)) if groups is not None else int(labels.size)
    try:
        intervals = bootstrap.intervals(scores, labels, groups, args.p_target, args.far,
                                        args.resamples, LEVEL)
    except ValueError as error:  # a resample of speakers without targets or non-targets
        raise CliError(f"--ci-by {by}: {error}".replace("(groups=None)", "(--ci-by trial)")
                       ) from None
    return {"ci": {"level": LEVEL, "by": by, "units": units, "resamples": args.resamples,
                   **{name: list(bounds) for name, bounds in intervals.items()}}}


def lines(args: argparse.Namespace, result: dict) -> list[str]:
    """The table's rows: one per metric, '[low, high]'."""
    if not args.ci:
        return []
    ci = result["ci"]
    units = f"{ci['units']} {'speakers' if ci['by'] == 'speaker' else 'trials'}"
    rows = [f"{'95% intervals':<16}bootstrap, {ci['resamples']} resamples of the {units}"]
    rows.append(f"{'  EER':<16}[{100 * ci['eer'][0]:.2f}%, {100 * ci['eer'][1]:.2f}%]")
    for p in args.p_target:
        low, high = ci[f"min_dcf_{p:g}"]
        rows.append(f"{f'  minDCF({p:g})':<16}[{low:.4f}, {high:.4f}]")
    for far in args.far:
        low, high = ci[scoring.far_key(far)]
        rows.append(f"{f'  TAR@FAR={far:g}':<16}[{100 * low:.2f}%, {100 * high:.2f}%]")
    return rows
