"""``margin-softmax calibrate``: fit a linear calibration (one score file) or fusion (several)
on development trials by prior-weighted logistic regression (``margin_softmax.calibration``),
and apply it to evaluation scores, writing log-likelihood ratios.

    margin-softmax calibrate --trials dev_trials.txt --scores dev.txt \\
        --apply eval.txt --write-llr eval_llr.txt
    margin-softmax eval --trials eval_trials.txt --scores eval_llr.txt --llr
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from .. import scoring
from ..score_formats import read_key
from .common import CliError, output_file, writing


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="fit a linear calibration or fusion on development scores; write LLRs",
        description="Fit llr = w1 s1 + ... + wK sK + b on development trials by logistic "
        "regression weighted at an effective target prior (BOSARIS, NIST SRE practice), "
        "and apply it to evaluation scores. Several --scores files are fused (one weight "
        "each); a quality measure (e.g. a trial's duration) enters as one more file in the "
        "same format.",
    )
    p.add_argument("--trials", required=True,
                   help="development key: 'enroll test target|nontarget' (or tgt|imp, or "
                   "VoxCeleb '1|0 enroll test') per line")
    p.add_argument("--scores", required=True, nargs="+", metavar="FILE",
                   help="development scores, 'enroll test score' per line; several files "
                   "are fused")
    p.add_argument("--apply", nargs="+", metavar="FILE",
                   help="evaluation scores to calibrate, one file per --scores file in the "
                   "same order; the trials are those of the first file")
    p.add_argument("--write-llr", metavar="FILE",
                   help="with --apply: write 'enroll test llr' per trial")
    p.add_argument("--p-target", type=float, default=0.5, metavar="P",
                   help="effective target prior of the fit (default 0.5: minimise Cllr)")
    p.add_argument("--force", action="store_true", help="replace an existing --write-llr file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run)


def columns(trials: scoring.Trials, files: list[str], trials_path) -> np.ndarray:
    """The score of each trial in each file (T, K)."""
    return np.column_stack([scoring.join_scores(trials, scoring.read_scores(path),
                                                trials_path, path) for path in files])


def evaluation_trials(files: list[str]) -> scoring.Trials:
    """The trials (names only) of the first --apply file, in its order, each pair once."""
    table = scoring.read_scores(files[0])
    enroll, test = zip(*table, strict=True)
    lines = [line for _, line in table.values()]
    return scoring.Trials(list(enroll), list(test), np.zeros(len(table), np.int64), lines)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.p_target < 1:
        raise CliError(f"--p-target must lie in (0, 1); got {args.p_target:g}")
    if bool(args.apply) != bool(args.write_llr):
        raise CliError("--apply and --write-llr go together (what to calibrate, and where "
                       "the LLRs go)")
    if args.apply and len(args.apply) != len(args.scores):
        raise CliError(f"--apply needs one file per --scores file ({len(args.scores)}); got "
                       f"{len(args.apply)}")
    out = output_file("--write-llr", args.write_llr, args.force) if args.write_llr else None
    from .. import calibration

    trials = read_key(args.trials)
    scoring.check_both_classes(trials.labels, args.trials)
    dev = columns(trials, args.scores, args.trials)  # (T, K)
    for k, path in enumerate(args.scores):
        if np.ptp(dev[:, k]) == 0:
            raise CliError(f"--scores {path}: every development trial scores {dev[0, k]!r}; "
                           "a constant cannot be calibrated")
    fitted = calibration.fit(dev, trials.labels, p_target=args.p_target)
    result = {"trials": int(trials.labels.size), "targets": int(trials.labels.sum()),
              "inputs": args.scores, "p_target": args.p_target,
              "weights": fitted.weights.tolist(), "offset": fitted.offset,
              "dev": calibration.llr_summary(fitted.apply(dev), trials.labels, (0.01, 0.05))}
    if out is not None:
        applied = evaluation_trials(args.apply)
        llr = fitted.apply(columns(applied, args.apply, args.apply[0]))
        with writing("--write-llr", out):
            scoring.write_scores(out, applied, llr)
        result.update(applied=len(llr), llr_file=str(out))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    dev_metrics = result["dev"]
    print(f"{'development':<16}{result['trials']} trials ({result['targets']} targets)")
    for path, weight in zip(args.scores, fitted.weights, strict=True):
        print(f"{'weight':<16}{weight:.6g}  {path}")
    print(f"{'offset':<16}{fitted.offset:.6g}")
    print(f"{'dev Cllr':<16}{dev_metrics['cllr']:.4f} bits (min Cllr "
          f"{dev_metrics['min_cllr']:.4f})")
    print(f"{'dev actDCF':<16}{dev_metrics['act_dcf_0.01']:.4f} (p_target 0.01)")
    if out is not None:
        print(f"{'LLRs written':<16}{out} ({result['applied']} trials)")
    return 0
