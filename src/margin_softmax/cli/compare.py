"""``margin-softmax compare``: train the same network with each loss on embedded data and
compare closed-set accuracy, open-set verification, calibration, identification and training
time.

Data: identities are split (open_set_split) into training identities and held-out ones that
the network never sees. A fifth of each training identity's samples is held back for the
closed-set accuracy; verification trials (cosine scores) are drawn among the held-out
identities, which also give the calibration and the identification (compare_held_out). Each
of ``--num-seeds`` seeds draws its own data, split, trials and initial weights, and trains
every loss on them; the tables give each metric's mean ± sample std over the seeds and mark
the differences from softmax larger than the seed-to-seed spread, and those whose bootstrap
interval over the held-out identities excludes 0 (seed_spread). The figures show the first
seed. Writes results.json, report.html and the PNGs into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__, data, metrics, scoring
from ..atomic_files import atomic_write_text
from ..registry import DEFAULT_LOSSES, build_head, head_parameters
from ..train_config import TrainConfig
from . import compare_held_out as held_out
from .common import (
    SEED_MAX,
    CliError,
    loss_names,
    output_folder,
    positive_int,
    seed_int,
    set_threads,
    writing,
)

HELD_OUT_FRACTION = 0.3  # of the identities, for open-set verification
TEST_FRACTION = 0.2  # of each training identity's samples, for closed-set accuracy
SYNTHETIC_DIM = 32
CLASSES_2D = 8  # classes in the unit-circle figure
SAMPLES_2D = 100  # samples per class of the synthetic 2-D run
NUM_SEEDS = 3  # a default run: enough seeds for a spread, within 3 minutes on 2 cores

if TYPE_CHECKING:  # torch, the heads and the plots are imported when the command runs
    import torch

    from ..margins import Margin


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="train one network per loss on embedded data and compare them",
        description="Train the same small network with each loss on embedded data (no "
        "download) and compare closed-set accuracy, open-set verification (EER, minDCF, "
        "TAR@FAR, with bootstrap intervals), calibration (Cllr, actDCF), identification "
        "(rank-1, TPIR) and training time. Writes results.json, report.html and PNGs into "
        "--out.",
    )
    p.add_argument("--out", help="output folder (default: runs/compare-<date>-<time>)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument(
        "--losses", type=loss_names, nargs="+", metavar="LOSS",
        help=f"losses to train, space- or comma-separated (default: {' '.join(DEFAULT_LOSSES)})",
    )
    p.add_argument("--dataset", choices=("synthetic", "digits"), default="synthetic",
                   help="synthetic identities (default) or scikit-learn's 8x8 digits")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="the first seed for data and training; the figures show it (default 0)")
    p.add_argument("--num-seeds", type=positive_int, default=NUM_SEEDS,
                   help="seeds --seed, --seed + 1, ...: the table gives mean ± std over them "
                   f"(default {NUM_SEEDS})")
    p.add_argument("--epochs", type=positive_int, default=20, help="epochs per loss (default 20)")
    p.add_argument("--epochs-2d", type=positive_int, default=60,
                   help="epochs of the 2-D run per loss (default 60)")
    p.add_argument("--identities", type=positive_int, default=1000,
                   help="synthetic identities, 30%% held out (default 1000)")
    p.add_argument("--samples-per-identity", type=positive_int, default=12,
                   help="synthetic samples per identity (default 12)")
    p.add_argument("--trials", type=positive_int, default=20000,
                   help="verification trials, half targets (default 20000)")
    p.add_argument("--resamples", type=positive_int, default=held_out.RESAMPLES, metavar="R",
                   help="bootstrap resamples per loss and seed for the intervals (default "
                   f"{held_out.RESAMPLES})")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="threads of torch and of the bootstrap (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def seed_list(first: int, count: int) -> list[int]:
    """[first, first + 1, ..., first + count - 1], all valid torch seeds."""
    if first + count - 1 > SEED_MAX:
        raise CliError(f"--seed {first} with --num-seeds {count}: the last seed, "
                       f"{first + count - 1}, is above {SEED_MAX}")
    return list(range(first, first + count))


@dataclass(frozen=True)
class Split:
    """One seed's draw: training rows, the closed-set test rows (classes of the training
    set), and the held-out identities with their verification trials, the trials that fit
    and judge the calibration, and the gallery rows (compare_held_out)."""

    x_train: np.ndarray  # (N_train, D)
    y_train: np.ndarray  # (N_train,) in [0, K)
    x_test: np.ndarray  # (N_test, D)
    y_test: np.ndarray  # (N_test,) in [0, K)
    held_out: np.ndarray  # (N_held, D)
    held_out_labels: np.ndarray  # (N_held,) identities never trained on
    trials: tuple[np.ndarray, np.ndarray, np.ndarray]  # i (T,), j (T,) rows of held_out; target
    num_classes: int  # K
    dev_trials: np.ndarray  # (T,) bool: both sides development identities
    eval_trials: np.ndarray  # (T,) bool: both sides evaluation identities
    gallery: np.ndarray  # (N_held,) bool: enrolled rows; the others are probes


def draw_split(x: np.ndarray, y: np.ndarray, trials: int, seed: int) -> Split:
    """Split features x (N, D) and labels y (N,) by identity (HELD_OUT_FRACTION held out),
    hold back TEST_FRACTION of each training identity, draw the trials, the calibration's
    halves and the gallery."""
    split = data.open_set_split(x, y, HELD_OUT_FRACTION, seed=seed)
    test = closed_set_mask(split.train_labels, TEST_FRACTION, seed)
    held = split.held_out_labels
    i, j, target = data.verification_trials(held, trials, seed=seed)
    return Split(
        split.train_features[~test], split.train_labels[~test],
        split.train_features[test], split.train_labels[test],
        split.held_out_features, held, (i, j, target),
        int(split.train_labels.max()) + 1,
        *held_out.calibration_trials(held, i, j, seed), held_out.gallery_rows(held, seed),
    )


def data_2d(dataset: str, x_train: np.ndarray, y_train: np.ndarray, seed: int):
    """Features and labels 0..K-1 for the 2-D run: CLASSES_2D fresh synthetic identities with
    SAMPLES_2D samples each, or for digits the training digits (about 140 samples each)."""
    if dataset == "digits":
        return x_train, y_train
    return data.synthetic_identities(CLASSES_2D, SAMPLES_2D, SYNTHETIC_DIM, seed=seed + 1)


def closed_set_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """(N,) bool: round(fraction * n_k) samples of each class k with n_k >= 2 (at least 1)."""
    rng = np.random.default_rng([seed, 3])
    test = np.zeros(labels.size, dtype=bool)
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        if rows.size >= 2:
            test[rng.choice(rows, max(1, round(fraction * rows.size)), replace=False)] = True
    return test


def margin_of(head: torch.nn.Module) -> Margin | None:
    """The head's current Margin when it has one fixed margin for all samples (no margin for
    plain softmax), else None."""
    from ..heads import SoftmaxLoss
    from ..margins import Margin

    if isinstance(head, SoftmaxLoss):
        return Margin()
    spec = getattr(head, "margin_spec", None)
    try:
        margin = spec() if callable(spec) else None
    except TypeError:  # a head whose margin depends on the batch
        return None
    return margin if isinstance(margin, Margin) else None


def curve_label(name: str, margin: Margin) -> str:
    """'arcface (m2=0.3)': the name and the margin's non-trivial parameters."""
    parts = [f"m{k}={v:g}" for k, v, plain in
             ((1, margin.m1, 1), (2, margin.m2, 0), (3, margin.m3, 0)) if v != plain]
    if margin.blend:
        parts.append(f"λ={margin.blend:g}")
    return f"{name} ({', '.join(parts)})" if parts else name


def train_one(name: str, x: np.ndarray, y: np.ndarray, num_classes: int, config: TrainConfig,
              progress: bool, desc: str):
    """The network and the head of loss ``name`` trained on x (N, D), y (N,); and fit's result."""
    from ..training import build_model, fit

    model = build_model(x.shape[1], config)
    model.set_input_scaling(x)
    head = build_head(name, config.embedding_dim, num_classes)
    return model, head, fit(model, head, x, y, config, progress=progress, desc=desc)


def score_loss(name: str, split: Split, config: TrainConfig, progress: bool, desc: str):
    """Train loss ``name`` on the split and measure it: (metrics, the trials' cosine scores
    (T,), the evaluation trials' calibrated LLRs (T_eval,) or None, the trained head)."""
    import torch

    from ..training import embed

    model, head, trained = train_one(name, split.x_train, split.y_train, split.num_classes,
                                     config, progress, desc)
    with torch.no_grad():
        logits = head.logits(torch.as_tensor(embed(model, split.x_test)))  # (N_test, K)
    i, j, target = split.trials
    emb = embed(model, split.held_out)  # (N_held, D)
    scores = scoring.pair_cosines(emb, i, j)  # (T,)
    calibrated, llr = held_out.calibrate(scores, target, split.dev_trials, split.eval_trials)
    measured = {
        "accuracy": metrics.accuracy(logits, split.y_test)[0],
        **scoring.summary(scores, target, p_targets=held_out.P_TARGETS, fars=(1e-3,)),
        **calibrated,
        **held_out.identify(emb, split.held_out_labels, split.gallery),
        "train_seconds": trained.seconds,
        "final_train_loss": trained.epoch_losses[-1],
    }
    return measured, scores, llr, head


def bootstrap(scores: np.ndarray, split: Split, seed: int, args: argparse.Namespace) -> dict:
    """held_out.replicates of the split's trials, resampling the identity of their first side;
    too few trials for that is an error naming --trials."""
    i, _, target = split.trials
    groups = split.held_out_labels[i]  # (T,)
    try:
        return held_out.replicates(scores, target, groups, seed, args.resamples, args.threads)
    except ValueError:
        raise CliError(f"--trials {args.trials}: too few for the bootstrap intervals; at seed "
                       f"{seed} a resample of the trials' {np.unique(groups).size} first-side "
                       "identities has no target or no non-target trial") from None


def calibration_settings(split: Split) -> dict:
    """The sizes of the calibration's halves, for results["settings"]."""
    i, j, target = split.trials
    labels = split.held_out_labels

    def identities(trials: np.ndarray) -> int:
        return int(np.unique(np.concatenate([labels[i[trials]], labels[j[trials]]])).size)

    return {
        "dev_identities": identities(split.dev_trials),
        "eval_identities": identities(split.eval_trials),
        "dev_trials": int(split.dev_trials.sum()),
        "eval_trials": int(split.eval_trials.sum()),
        "eval_target_trials": int(target[split.eval_trials].sum()),
        "fit_prior": held_out.FIT_PRIOR,
    }


def identification_settings(split: Split) -> dict:
    """The gallery's and the probes' sizes, for results["settings"]."""
    labels, gallery = split.held_out_labels, split.gallery
    enrolled = np.unique(labels[gallery])
    mated = np.isin(labels[~gallery], enrolled)
    return {"enrolled_identities": int(enrolled.size),
            "identities": int(np.unique(labels).size), "gallery_samples": int(gallery.sum()),
            "mated_probes": int(mated.sum()), "non_mated_probes": int((~mated).sum()),
            "fpir": held_out.FPIR}


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import ape_plot, captions, plots, report, seed_spread
    from ..training import embed

    start = time.perf_counter()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    seeds = seed_list(args.seed, args.num_seeds)
    out = output_folder(args.out or Path("runs") / f"compare-{stamp}", args.force)
    losses = list(dict.fromkeys(n for group in args.losses or [DEFAULT_LOSSES] for n in group))
    set_threads(args.threads)
    progress = not args.quiet

    digits = data.digits() if args.dataset == "digits" else None  # loaded once, split per seed
    per_seed: dict[str, list[dict]] = {name: [] for name in losses}
    replicates: seed_spread.Replicates = {name: [] for name in losses}
    curves, trials, llrs = {}, {}, {}  # of the first seed, for the figures
    for seed in seeds:
        x, y = digits if digits is not None else data.synthetic_identities(
            args.identities, args.samples_per_identity, SYNTHETIC_DIM, seed=seed)
        split = draw_split(x, y, args.trials, seed)
        # CPU: compare has no --device yet, and it reads the trained heads' weights on the CPU
        config = TrainConfig(epochs=args.epochs, seed=seed, device="cpu")
        target = split.trials[2]
        for name in losses:
            measured, scores, llr, head = score_loss(name, split, config, progress,
                                                     desc=f"{name} seed {seed}")
            per_seed[name].append({"seed": seed, **measured})
            replicates[name].append(bootstrap(scores, split, seed, args))
            if seed == seeds[0]:
                margin = margin_of(head)
                curves[name if margin is None else curve_label(name, margin)] = margin
                trials[name] = (scores, target)
                if llr is not None:
                    llrs[name] = (llr, target[split.eval_trials])
        if seed == seeds[0]:
            first = split

    config_2d = TrainConfig(epochs=args.epochs_2d, batch_size=64, embedding_dim=2,
                            seed=seeds[0], device="cpu")
    x_2d, y_2d = data_2d(args.dataset, first.x_train, first.y_train, seeds[0])
    classes_2d = int(y_2d.max()) + 1
    circle = {}
    for name in losses:
        model_2d, head_2d, _ = train_one(name, x_2d, y_2d, classes_2d, config_2d, progress,
                                         desc=f"{name} 2-D seed {seeds[0]}")
        centres = head_2d.weight.detach().numpy()  # (C*K, 2): K sub-centres per class, or 1
        circle[name] = (embed(model_2d, x_2d), y_2d, centres)

    baseline = "softmax" if "softmax" in losses else losses[0]
    i, _, target = first.trials
    results: dict = {
        "losses": {name: seed_spread.summarise(runs, replicates[name])
                   for name, runs in per_seed.items()},
        "differences": {
            "baseline": baseline,
            "test": seed_spread.RULE,
            "ci_test": seed_spread.CI_RULE,
            "losses": seed_spread.differences(per_seed, baseline, report.COMPARED, replicates),
        },
        "settings": {
            "dataset": args.dataset,
            "seeds": seeds,
            "figure_seed": seeds[0],
            "train": {k: v for k, v in asdict(config).items() if k != "seed"},
            "train_2d": asdict(config_2d),
            "heads": {name: head_parameters(name) for name in losses},
            # the sizes of the first seed's split (every seed's, for synthetic data)
            "train_identities": first.num_classes,
            "held_out_identities": int(np.unique(first.held_out_labels).size),
            "train_samples": int(first.y_train.size),
            "closed_set_test_samples": int(first.y_test.size),
            "held_out_samples": int(first.held_out_labels.size),
            "trials": int(target.size),
            "target_trials": int(target.sum()),
            "calibration": calibration_settings(first) if llrs else None,
            "identification": identification_settings(first),
            "bootstrap": {"resamples": args.resamples, "level": seed_spread.CI_LEVEL,
                          "by": "identity of the trial's first side",
                          "identities": int(np.unique(first.held_out_labels[i]).size)},
            "classes_2d": classes_2d,
            "samples_2d": int(y_2d.size),
            "threads": args.threads,
            "margin_softmax": __version__,
            "torch": torch.__version__,
        },
    }
    if args.dataset == "synthetic":
        results["settings"].update(
            identities=args.identities, samples_per_identity=args.samples_per_identity,
            feature_dim=SYNTHETIC_DIM,
        )
    sub_centres = any(c.shape[0] > classes_2d for _, _, c in circle.values())
    figures = captions.figure_texts(results["settings"], curves, sub_centres)
    with writing("--out", out):  # each file atomically: whole and new, or as it was
        plots.unit_circle(circle, out / "unit_circle.png")
        plots.target_logit_curves(curves, out / "target_logit.png")
        plots.score_histograms(trials, out / "scores.png")
        plots.det_curves(trials, out / "det.png")
        if llrs:
            ape_plot.bayes_error_plot(
                llrs, out / "calibration.png", p_targets=held_out.P_TARGETS,
                styles=[plots.loss_style(losses.index(name)) for name in llrs],
                title="Normalised Bayes error rate after calibration (lower is better)")
        atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
        report.write_html(out / "report.html", results, [(a, c, out / f) for f, a, c in figures])

    table = report.format_table(results) + "\n\n" + report.format_table(results,
                                                                         report.HELD_OUT)
    print(table)
    print(textwrap.fill(report.table_note(results), max(map(len, table.splitlines())),
                        break_on_hyphens=False))  # "held-out" stays whole
    seconds = time.perf_counter() - start
    count = f"{len(losses)} loss" + ("es" if len(losses) != 1 else "")
    count += f" × {len(seeds)} seed" + ("s" if len(seeds) != 1 else "")
    print(f"\n{count} in {seconds:.0f} s; wrote {out}/: results.json, report.html, "
          + ", ".join(f for f, _, _ in figures))
    return 0
