"""``margin-softmax data``: write a small dataset of synthetic identities in the formats
``train`` and ``eval`` read, so the README's train -> embed -> eval path runs without data
of one's own.

    margin-softmax data data      # data/train.npz, data/test.npz, data/trials.txt

Identities are split as ``compare`` splits them: 30 % are held out. ``train.npz`` holds the
features (N, 32) and labels (N,) of the training identities, ``test.npz`` those of the
held-out ones, and ``trials.txt`` Kaldi trials ``enroll test target|nontarget`` among the
held-out samples, named by their row in ``test.npz`` (the rows of ``train --embed``'s export).
Labels are the identities' numbers in 0..identities-1, so the two sets share none.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .. import data
from ..atomic_files import atomic_open, atomic_write_text
from .common import CliError, output_file, positive_int, seed_int, writing
from .compare import HELD_OUT_FRACTION, SYNTHETIC_DIM

FILES = ("train.npz", "test.npz", "trials.txt")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "data",
        help="write synthetic training data, a test set and trials to try train and eval on",
        description="Write a small dataset of synthetic identities (the one compare uses): "
        "OUTDIR/train.npz (features, labels) of the training identities, OUTDIR/test.npz of "
        "30%% held-out identities, and OUTDIR/trials.txt, Kaldi trials among the held-out "
        "samples named by their row in test.npz.",
    )
    p.add_argument("outdir", metavar="OUTDIR", help="folder for the three files (made if needed)")
    p.add_argument("--identities", type=positive_int, default=500,
                   help="identities, 30%% held out (default %(default)s)")
    p.add_argument("--samples-per-identity", type=positive_int, default=10,
                   help="samples per identity (default %(default)s)")
    p.add_argument("--trials", type=positive_int, default=5000,
                   help="trials, half targets (default %(default)s)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed (default %(default)s)")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.set_defaults(run=run)


def trial_lines(i: np.ndarray, j: np.ndarray, target: np.ndarray) -> str:
    """'enroll test target|nontarget' per trial, rows i (T,) and j (T,) as names."""
    kinds = np.where(target == 1, "target", "nontarget")
    return "".join(f"{a} {b} {kind}\n" for a, b, kind in zip(i, j, kinds, strict=True))


def run(args: argparse.Namespace) -> int:
    if args.identities < 5:  # 30 % held out must be 2 identities, for non-target trials
        raise CliError(f"--identities must be at least 5; got {args.identities}")
    if args.samples_per_identity < 2:
        raise CliError(f"--samples-per-identity must be at least 2 (a target trial needs a "
                       f"pair); got {args.samples_per_identity}")
    out = Path(args.outdir)
    if out.exists() and not out.is_dir():
        raise CliError(f"OUTDIR {out}: exists and is not a folder")
    train_path, test_path, trials_path = (output_file("OUTDIR", out / name, args.force)
                                          for name in FILES)

    x, y = data.synthetic_identities(args.identities, args.samples_per_identity,
                                     SYNTHETIC_DIM, seed=args.seed)
    split = data.open_set_split(x, y, HELD_OUT_FRACTION, seed=args.seed)
    i, j, target = data.verification_trials(split.held_out_labels, args.trials, seed=args.seed)
    with writing("OUTDIR", out):
        out.mkdir(parents=True, exist_ok=True)
        for path, features, labels in (
            (train_path, split.train_features, split.train_identities[split.train_labels]),
            (test_path, split.held_out_features, split.held_out_labels),
        ):
            with atomic_open(path) as handle:
                np.savez(handle, features=features, labels=labels)
        atomic_write_text(trials_path, trial_lines(i, j, target))
    train_ids = len(split.train_identities)
    print(f"{train_path}: {len(split.train_labels)} samples of {train_ids} identities")
    print(f"{test_path}: {len(split.held_out_labels)} samples of "
          f"{args.identities - train_ids} other identities")
    print(f"{trials_path}: {target.size} trials ({int(target.sum())} targets) among the rows "
          f"of {test_path}")
    return 0
