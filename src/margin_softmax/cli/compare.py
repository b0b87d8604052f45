"""``margin-softmax compare``: train the same network with each loss on embedded data and
compare closed-set accuracy, open-set verification and training time.

Data: identities are split (open_set_split) into training identities and held-out ones that
the network never sees. A fifth of each training identity's samples is held back for the
closed-set accuracy; verification trials (cosine scores) are drawn among the held-out
identities. Writes results.json, report.html and the PNGs into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__, data, metrics, scoring
from ..atomic_files import atomic_write_text
from ..registry import DEFAULT_LOSSES, build_head, head_parameters
from ..train_config import TrainConfig
from .common import loss_names, output_folder, positive_int, seed_int, set_threads, writing

HELD_OUT_FRACTION = 0.3  # of the identities, for open-set verification
TEST_FRACTION = 0.2  # of each training identity's samples, for closed-set accuracy
SYNTHETIC_DIM = 32
CLASSES_2D = 8  # classes in the unit-circle figure
SAMPLES_2D = 100  # samples per class of the synthetic 2-D run

if TYPE_CHECKING:  # torch, the heads and the plots are imported when the command runs
    import torch

    from ..margins import Margin


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="train one network per loss on embedded data and compare them",
        description="Train the same small network with each loss on embedded data (no "
        "download) and compare closed-set accuracy, open-set verification (EER, minDCF, "
        "TAR@FAR) and training time. Writes results.json, report.html and PNGs into --out.",
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
                   help="seed for data and training (default 0)")
    p.add_argument("--epochs", type=positive_int, default=20, help="epochs per loss (default 20)")
    p.add_argument("--epochs-2d", type=positive_int, default=60,
                   help="epochs of the 2-D run per loss (default 60)")
    p.add_argument("--identities", type=positive_int, default=1000,
                   help="synthetic identities, 30%% held out (default 1000)")
    p.add_argument("--samples-per-identity", type=positive_int, default=12,
                   help="synthetic samples per identity (default 12)")
    p.add_argument("--trials", type=positive_int, default=20000,
                   help="verification trials, half targets (default 20000)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def load_dataset(name: str, identities: int, per_identity: int, seed: int):
    """features (N, D) float32 and labels (N,) int64 of the chosen embedded dataset."""
    if name == "digits":
        return data.digits()
    return data.synthetic_identities(identities, per_identity, SYNTHETIC_DIM, seed=seed)


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


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import plots, report
    from ..training import embed

    start = time.perf_counter()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = output_folder(args.out or Path("runs") / f"compare-{stamp}", args.force)
    losses = list(dict.fromkeys(n for group in args.losses or [DEFAULT_LOSSES] for n in group))
    set_threads(args.threads)
    progress = not args.quiet

    x, y = load_dataset(args.dataset, args.identities, args.samples_per_identity, args.seed)
    split = data.open_set_split(x, y, HELD_OUT_FRACTION, seed=args.seed)
    test = closed_set_mask(split.train_labels, TEST_FRACTION, args.seed)
    x_train, y_train = split.train_features[~test], split.train_labels[~test]
    x_test, y_test = split.train_features[test], split.train_labels[test]
    num_classes = int(split.train_labels.max()) + 1
    ti, tj, target = data.verification_trials(split.held_out_labels, args.trials, seed=args.seed)

    # CPU: compare has no --device yet, and it reads the trained heads' weights on the CPU
    config = TrainConfig(epochs=args.epochs, seed=args.seed, device="cpu")
    config_2d = replace(config, embedding_dim=2, epochs=args.epochs_2d, batch_size=64)
    x_2d, y_2d = data_2d(args.dataset, x_train, y_train, args.seed)
    classes_2d = int(y_2d.max()) + 1

    results: dict = {"losses": {}}
    circle, curves, trials = {}, {}, {}
    for name in losses:
        model, head, trained = train_one(name, x_train, y_train, num_classes, config, progress,
                                         desc=name)
        with torch.no_grad():
            logits = head.logits(torch.as_tensor(embed(model, x_test)))  # (N_test, C)
        scores = scoring.pair_cosines(embed(model, split.held_out_features), ti, tj)  # (T,)
        results["losses"][name] = {
            "accuracy": metrics.accuracy(logits, y_test)[0],
            **scoring.summary(scores, target, p_targets=(0.01, 0.05), fars=(1e-3,)),
            "train_seconds": trained.seconds,
            "final_train_loss": trained.epoch_losses[-1],
        }
        margin = margin_of(head)
        curves[name if margin is None else curve_label(name, margin)] = margin
        trials[name] = (scores, target)

        model_2d, head_2d, _ = train_one(name, x_2d, y_2d, classes_2d, config_2d, progress,
                                         desc=f"{name} 2-D")
        centres = head_2d.weight.detach().numpy()  # (C*K, 2): K sub-centres per class, or 1
        circle[name] = (embed(model_2d, x_2d), y_2d, centres)

    results["settings"] = {
        "dataset": args.dataset,
        "seed": args.seed,
        "train": asdict(config),
        "train_2d": asdict(config_2d),
        "heads": {name: head_parameters(name) for name in losses},
        "train_identities": num_classes,
        "held_out_identities": int(np.unique(split.held_out_labels).size),
        "train_samples": int(y_train.size),
        "closed_set_test_samples": int(y_test.size),
        "held_out_samples": int(split.held_out_labels.size),
        "trials": int(target.size),
        "target_trials": int(target.sum()),
        "classes_2d": classes_2d,
        "samples_2d": int(y_2d.size),
        "threads": args.threads,
        "margin_softmax": __version__,
        "torch": torch.__version__,
    }
    if args.dataset == "synthetic":
        results["settings"].update(
            identities=args.identities, samples_per_identity=args.samples_per_identity,
            feature_dim=SYNTHETIC_DIM,
        )
    sub_centres = any(c.shape[0] > classes_2d for _, _, c in circle.values())
    figures = report.figure_texts(results["settings"], curves, sub_centres)
    with writing("--out", out):  # each file atomically: whole and new, or as it was
        plots.unit_circle(circle, out / "unit_circle.png")
        plots.target_logit_curves(curves, out / "target_logit.png")
        plots.score_histograms(trials, out / "scores.png")
        plots.det_curves(trials, out / "det.png")
        atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
        report.write_html(out / "report.html", results, [(a, c, out / f) for f, a, c in figures])

    print(report.format_table(results))
    seconds = time.perf_counter() - start
    count = f"{len(losses)} loss" + ("es" if len(losses) != 1 else "")
    print(f"\n{count} in {seconds:.0f} s; wrote {out}/: results.json, report.html, "
          + ", ".join(f for f, _, _ in figures))
    return 0
