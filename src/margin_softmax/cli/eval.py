"""``margin-softmax eval``: verification metrics (EER, minDCF, TAR at FAR) from score files
or from embeddings plus a trial list (cosine scoring). See scoring.py for the formats.

    margin-softmax eval --trials trials.txt --scores scores.txt      # Kaldi / VoxCeleb
    margin-softmax eval --scores label_score.txt                     # two columns
    margin-softmax eval --embeddings emb.npy --trials trials.txt     # cosine scoring
    margin-softmax eval --embeddings emb.npy --trials trials.txt --cohort train.npz  # AS-norm
    margin-softmax eval --trials trials.txt --scores llr.txt --llr --ci    # LLRs, intervals
    margin-softmax eval --gallery gallery.npz --probes probes.npz          # identification
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from .. import metrics, scoring
from ..score_formats import read_key, read_label_scores
from ..score_norm import normalize_scores
from . import eval_ci, eval_identify, eval_llr
from .common import CliError, output_file, positive_int, writing


def top_k(text: str) -> int | None:
    """--top-k: an int >= 2, or 'all' (None: S-norm)."""
    if text.lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 2 or 'all', got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (one score has no spread), "
                                         f"got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="EER, minDCF and TAR@FAR from score files or embeddings + trials",
        description="Verification metrics (EER, minDCF, TAR at FAR) from score files, or "
        "from embeddings plus a trial list scored by cosine.",
        epilog="Formats: trials 'enroll test target|nontarget' (or VoxCeleb '1|0 enroll "
        "test', or SITW 'enroll test tgt|imp'); scores 'enroll test score'; two columns "
        "'label score' (or Kaldi compute-eer's 'score target|nontarget'); embeddings .npy "
        "(trials give row indices) or .npz with 'embeddings' and optional 'names'.",
    )
    p.add_argument("--trials", help="trial list: 'enroll test target|nontarget' per line")
    p.add_argument("--scores", help="scores: 'enroll test score' (with --trials) or 'label score'")
    p.add_argument("--embeddings", help=".npy/.npz embeddings to score by cosine (with --trials)")
    p.add_argument("--cohort", metavar="FILE",
                   help="normalise the cosine scores against this cohort (AS-norm): .npy, or "
                   ".npz 'embeddings' with optional 'labels' (then one mean per label)")
    p.add_argument("--top-k", type=top_k, default=300, metavar="K",
                   help="cohort scores per side of a trial (default 300; 'all': S-norm)")
    p.add_argument("--center", metavar="FILE",
                   help="subtract the mean of these embeddings (e.g. the training set's, "
                   ".npy/.npz) from the embeddings and the cohort before scoring")
    p.add_argument("--p-target", type=float, nargs="+", default=[0.01, 0.05], metavar="P",
                   help="prior(s) of the minDCF (default 0.01 0.05)")
    p.add_argument("--far", type=float, nargs="+", default=[1e-3], metavar="FAR",
                   help="false-accept rate(s) of the TAR (default 0.001)")
    p.add_argument("--folds", type=positive_int, metavar="K",
                   help="also the K-fold verification accuracy (LFW protocol, e.g. 10): "
                   "trials in file order, K consecutive folds")
    p.add_argument("--write-scores", metavar="FILE",
                   help="also write the scores used ('enroll test score' per trial, in the "
                   "trials' order), e.g. the AS-normed ones for fusion or calibration")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --write-scores or --plot file")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    for part in (eval_llr, eval_ci, eval_identify):
        part.add_options(p)
    p.set_defaults(run=run)


def _same_width(array: np.ndarray, option: str, path, width: int, emb_path) -> np.ndarray:
    if array.shape[1] != width:
        raise CliError(f"{option} {path} has {array.shape[1]} columns but --embeddings "
                       f"{emb_path} has {width}")
    return array


def embedding_scores(args: argparse.Namespace, trials: scoring.Trials):
    """Cosine scores (T,) of the trials from --embeddings, centred with --center and
    normalised against --cohort where given, and how they were made (a dict)."""
    embeddings, names = scoring.read_embeddings(args.embeddings)  # (N, D)
    width = embeddings.shape[1]
    center = np.zeros(width)  # (D,)
    if args.center:
        center = _same_width(scoring.read_embeddings(args.center)[0], "--center", args.center,
                             width, args.embeddings).mean(0)
    embeddings = embeddings - center
    i, j = scoring.trial_rows(len(embeddings), names, trials, args.trials, args.embeddings)
    zero = np.flatnonzero(~embeddings.any(axis=1))  # (Z,) rows with no direction
    used = zero[np.isin(zero, i) | np.isin(zero, j)]
    if used.size:
        row = int(used[0])
        name = f" ({names[row]})" if names is not None else ""
        after = " after --center" if args.center else ""
        raise CliError(f"--embeddings {args.embeddings}: row {row}{name} is all zeros{after}; "
                       f"a trial uses it and its cosine has no meaning")
    scores = scoring.pair_cosines(embeddings, i, j)  # (T,)
    how = {"scoring": "cosine", "center": args.center}
    if not args.cohort:
        return scores, how
    cohort = _same_width(scoring.read_cohort(args.cohort), "--cohort", args.cohort, width,
                         args.embeddings)
    if args.top_k is not None and args.top_k > len(cohort):
        raise CliError(f"--top-k {args.top_k} exceeds the cohort: "
                       f"{cohort_rows(args.cohort, len(cohort))}; pass --top-k "
                       f"{len(cohort)} or less, or --top-k all (S-norm)")
    how.update(score_norm="s-norm" if args.top_k is None else "as-norm", top_k=args.top_k,
               cohort=args.cohort, cohort_size=len(cohort))
    try:
        return normalize_scores(scores, i, j, embeddings, cohort - center, args.top_k), how
    except ValueError as error:  # an embedding whose top-k cohort scores are all equal
        raise CliError(f"--embeddings {args.embeddings}, --cohort {args.cohort}: {error}") from None


def cohort_rows(path, size: int) -> str:
    """What the ``size`` cohort rows of ``path`` are: its embeddings, or the mean of each
    label's embeddings where the file holds labels."""
    arrays = scoring.load_arrays(path)
    if "labels" not in arrays:
        return f"{path} holds {size} embeddings"
    return (f"{path} holds {len(arrays['labels'])} embeddings with labels, and the cohort is "
            f"the mean embedding of each label: {size} class means")


NAMES = {"as-norm": "AS-norm", "s-norm": "S-norm"}


def describe(how: dict) -> str:
    """'cosine, centred on train.npy, AS-norm (top 300 of 5994 in cohort.npz)'."""
    text = "cosine" + (f", centred on {how['center']}" if how["center"] else "")
    if "score_norm" in how:
        k = "all" if how["top_k"] is None else f"top {how['top_k']}"
        text += f", {NAMES[how['score_norm']]} ({k} of {how['cohort_size']} in {how['cohort']})"
    return text


def load(args: argparse.Namespace):
    """Scores (T,), labels (T,), the file that gave the labels, how the scores were made
    (a dict, empty for score files) and the Trials (None for a two-column file)."""
    if args.embeddings and args.scores:
        raise CliError("give --scores or --embeddings, not both")
    for option in ("cohort", "center"):
        if getattr(args, option) and not args.embeddings:
            raise CliError(f"--{option} needs --embeddings (score files hold no embeddings)")
    if args.embeddings:
        if not args.trials:
            raise CliError("--embeddings needs --trials (which pairs to score)")
        trials = read_key(args.trials)
        scores, how = embedding_scores(args, trials)
        return scores, trials.labels, args.trials, how, trials
    if not args.scores:
        raise CliError("nothing to evaluate: give --scores (with or without --trials) or "
                       "--embeddings with --trials")
    if args.trials:
        trials = read_key(args.trials)
        table = scoring.read_scores(args.scores)
        return scoring.join_scores(trials, table, args.trials, args.scores), trials.labels, \
            args.trials, {}, trials
    scores, labels = read_label_scores(args.scores)
    return scores, labels, args.scores, {}, None


def run(args: argparse.Namespace) -> int:
    if eval_identify.wanted(args):
        return eval_identify.run(args)
    for p in args.p_target:
        if not 0 < p < 1:
            raise CliError(f"--p-target must lie in (0, 1); got {p:g}")
    for far in args.far:
        if not 0 <= far <= 1:
            raise CliError(f"--far must lie in [0, 1]; got {far:g}")
    out = None
    if args.write_scores:
        if not args.trials:
            raise CliError("--write-scores needs --trials (the names of each trial)")
        out = output_file("--write-scores", args.write_scores, args.force)
    plot = eval_llr.plot_file(args)
    scores, labels, source, how, trials = load(args)
    scoring.check_both_classes(labels, source)
    result = {"trials": int(labels.size), "targets": int(labels.sum()),
              "nontargets": int(labels.size - labels.sum()), **how}
    result.update(scoring.summary(scores, labels, args.p_target, args.far))
    if args.folds:
        if not 2 <= args.folds <= labels.size:
            raise CliError(f"--folds must lie in [2, {labels.size}] (the trials); got "
                           f"{args.folds}")
        mean, std = metrics.kfold_accuracy(scores, labels, args.folds)
        result.update(folds=args.folds, kfold_accuracy=mean, kfold_accuracy_std=std)
    result.update(eval_ci.results(args, scores, labels, trials))
    result.update(eval_llr.results(args, scores, labels, plot, args.scores or args.embeddings))
    if out is not None:  # last: an input or option error leaves no file behind
        with writing("--write-scores", out):
            scoring.write_scores(out, trials, scores)
        result["scores_file"] = str(out)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'trials':<16}{result['trials']} ({result['targets']} targets, "
          f"{result['nontargets']} non-targets)")
    if "scoring" in how:
        print(f"{'scoring':<16}{describe(how)}")
    if out is not None:
        print(f"{'scores written':<16}{out}")
    print(f"{'EER':<16}{100 * result['eer']:.2f}%")
    for p in args.p_target:
        print(f"{f'minDCF({p:g})':<16}{result[f'min_dcf_{p:g}']:.4f}")
    for far in args.far:
        print(f"{f'TAR@FAR={far:g}':<16}{100 * result[scoring.far_key(far)]:.2f}%")
    if args.folds:
        print(f"{f'{args.folds}-fold acc':<16}{100 * result['kfold_accuracy']:.2f}% "
              f"± {100 * result['kfold_accuracy_std']:.2f}%")
    for line in eval_llr.lines(args, result) + eval_ci.lines(args, result):
        print(line)
    return 0
