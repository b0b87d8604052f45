"""``margin-softmax eval``: verification metrics (EER, minDCF, TAR at FAR) from score files
or from embeddings plus a trial list (cosine scoring). See scoring.py for the formats.

    margin-softmax eval --trials trials.txt --scores scores.txt      # Kaldi / VoxCeleb
    margin-softmax eval --scores label_score.txt                     # two columns
    margin-softmax eval --embeddings emb.npy --trials trials.txt     # cosine scoring
"""

from __future__ import annotations

import argparse
import json

from .. import scoring
from .common import CliError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="EER, minDCF and TAR@FAR from score files or embeddings + trials",
        description="Verification metrics (EER, minDCF, TAR at FAR) from score files, or "
        "from embeddings plus a trial list scored by cosine.",
        epilog="Formats: trials 'enroll test target|nontarget' (or VoxCeleb '1|0 enroll "
        "test'); scores 'enroll test score'; two columns 'label score'; embeddings .npy "
        "(trials give row indices) or .npz with 'embeddings' and optional 'names'.",
    )
    p.add_argument("--trials", help="trial list: 'enroll test target|nontarget' per line")
    p.add_argument("--scores", help="scores: 'enroll test score' (with --trials) or 'label score'")
    p.add_argument("--embeddings", help=".npy/.npz embeddings to score by cosine (with --trials)")
    p.add_argument("--p-target", type=float, nargs="+", default=[0.01, 0.05], metavar="P",
                   help="prior(s) of the minDCF (default 0.01 0.05)")
    p.add_argument("--far", type=float, nargs="+", default=[1e-3], metavar="FAR",
                   help="false-accept rate(s) of the TAR (default 0.001)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(run=run)


def load(args: argparse.Namespace):
    """Scores (T,), labels (T,) and the file that gave the labels, from the chosen inputs."""
    if args.embeddings and args.scores:
        raise CliError("give --scores or --embeddings, not both")
    if args.embeddings:
        if not args.trials:
            raise CliError("--embeddings needs --trials (which pairs to score)")
        trials = scoring.read_trials(args.trials)
        embeddings, names = scoring.read_embeddings(args.embeddings)
        scores = scoring.cosine_scores(embeddings, names, trials, args.trials, args.embeddings)
        return scores, trials.labels, args.trials
    if not args.scores:
        raise CliError("nothing to evaluate: give --scores (with or without --trials) or "
                       "--embeddings with --trials")
    if args.trials:
        trials = scoring.read_trials(args.trials)
        table = scoring.read_scores(args.scores)
        return scoring.join_scores(trials, table, args.trials, args.scores), trials.labels, \
            args.trials
    scores, labels = scoring.read_label_scores(args.scores)
    return scores, labels, args.scores


def run(args: argparse.Namespace) -> int:
    for p in args.p_target:
        if not 0 < p < 1:
            raise CliError(f"--p-target must lie in (0, 1); got {p:g}")
    for far in args.far:
        if not 0 <= far <= 1:
            raise CliError(f"--far must lie in [0, 1]; got {far:g}")
    scores, labels, source = load(args)
    scoring.check_both_classes(labels, source)
    result = {"trials": int(labels.size), "targets": int(labels.sum()),
              "nontargets": int(labels.size - labels.sum())}
    result.update(scoring.summary(scores, labels, args.p_target, args.far))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'trials':<16}{result['trials']} ({result['targets']} targets, "
          f"{result['nontargets']} non-targets)")
    print(f"{'EER':<16}{100 * result['eer']:.2f}%")
    for p in args.p_target:
        print(f"{f'minDCF({p:g})':<16}{result[f'min_dcf_{p:g}']:.4f}")
    for far in args.far:
        print(f"{f'TAR@FAR={far:g}':<16}{100 * result[scoring.far_key(far)]:.2f}%")
    return 0
