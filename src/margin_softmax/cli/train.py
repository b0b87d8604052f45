"""``margin-softmax train``: train the small embedding network with any registered head on
your data, with an optional margin schedule, checkpoints to resume from, and exported
embeddings.

    margin-softmax train feats.npz --loss arcface --margin 0.2 --scale 30 --epochs 20 \\
        --checkpoint-dir ckpt --export-embeddings emb.npy
"""

from __future__ import annotations

import argparse
import contextlib
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..atomic_files import atomic_open
from ..registry import build_head, head_parameters, loss_names
from ..train_config import CHECKPOINT_NAME, TrainConfig
from .common import (
    CliError,
    check_folder,
    key_value,
    nonnegative_float,
    number,
    output_file,
    positive_float,
    positive_int,
    seed_int,
    set_threads,
    writing,
)
from .inputs import read_features, read_train_data

if TYPE_CHECKING:  # torch and the trainer are imported when the command runs
    import torch


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train an embedding network with any head on your features or images",
        description="Train the small embedding network with any registered head on your "
        "data (.npz/.npy features or a folder of image folders), with an optional margin "
        "warm-up, checkpoints to resume from, and exported embeddings.",
        epilog="DATA: an .npz with 'features' and 'labels', an .npy of features with "
        "--labels, or a folder with one sub-folder of images per identity.",
    )
    p.add_argument("data", help=".npz, .npy (with --labels) or a folder of image folders")
    p.add_argument("--labels", help="labels for an .npy: a .npy array or one label per line")
    p.add_argument("--image-size", type=positive_int, metavar="PIXELS",
                   help="resize images to PIXELS x PIXELS (default: all must share one size)")
    p.add_argument("--loss", default="arcface", help=f"one of {', '.join(loss_names())}")
    p.add_argument("--margin", type=number, help="the head's margin (radians; an integer "
                   "for sphereface)")
    p.add_argument("--scale", type=positive_float, help="the head's scale s")
    p.add_argument("--param", type=key_value, action="append", default=[], metavar="NAME=VALUE",
                   help="any other head parameter, e.g. --param m3=0.1 (repeatable)")
    p.add_argument("--margin-schedule", type=positive_int, nargs=2, metavar=("START", "END"),
                   help="raise the margin from 0 at epoch START to --margin at epoch END "
                   "(1-based, WeSpeaker's warm-up)")
    p.add_argument("--margin-ramp", choices=("exp", "linear"), default="exp",
                   help="shape of the margin warm-up (default exp, as WeSpeaker)")
    defaults = TrainConfig()
    p.add_argument("--epochs", type=positive_int, default=defaults.epochs,
                   help="epochs (default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                   help="samples per step (default %(default)s)")
    p.add_argument("--lr", type=positive_float, default=defaults.lr,
                   help=f"peak learning rate, cosine decay (default {defaults.lr})")
    p.add_argument("--weight-decay", type=nonnegative_float, default=defaults.weight_decay,
                   help="AdamW weight decay (default %(default)s)")
    p.add_argument("--embedding-dim", type=positive_int, default=defaults.embedding_dim,
                   help="embedding size (default %(default)s)")
    p.add_argument("--hidden-dim", type=positive_int, default=defaults.hidden_dim,
                   help="width of the two hidden layers (default %(default)s)")
    p.add_argument("--seed", type=seed_int, default=defaults.seed,
                   help="seed of the weights and the shuffling (default %(default)s)")
    p.add_argument("--device", default=defaults.device, metavar="{auto,cpu,cuda,cuda:N}",
                   help="where to train and embed (default auto: cuda when available, else cpu)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (default 1, as compare: fastest for this small network; "
                   "torch's default of one per core was 3-6x slower on a busy 2-core machine)")
    p.add_argument("--checkpoint-dir", help=f"write {CHECKPOINT_NAME} here after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    p.add_argument("--stop-after", type=positive_int, metavar="EPOCH",
                   help="stop after this epoch (continue later with --resume)")
    p.add_argument("--export-embeddings", metavar="FILE",
                   help="save embeddings: .npy (N, D), or .npz with embeddings, labels, names")
    p.add_argument("--embed", metavar="DATA", help="what to embed for --export-embeddings "
                   "(.npz, .npy or image folder; default: the training data)")
    p.add_argument("--force", action="store_true", help="replace an existing export file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def check_resume(path: Path, meta: dict, config: TrainConfig) -> None:
    """The checkpoint must come from the same settings, or the resumed run is another run."""
    from ..training import load_checkpoint

    state = load_checkpoint(path)
    saved = {**state.get("meta", {}), **state.get("config", {})}
    wanted = {**meta, **asdict(config)}
    wanted.pop("device")  # a run may move between machines, e.g. from a GPU to a CPU
    diffs = [f"{k}={saved.get(k)!r} there, {v!r} here" for k, v in wanted.items()
             if saved.get(k) != v]
    if diffs:
        raise CliError(f"--resume: {path} was written with other settings: {'; '.join(diffs)}")


def margin_scheduler(args: argparse.Namespace, head: torch.nn.Module, steps_per_epoch: int):
    if args.margin_schedule is None:
        return None
    from ..scheduler import MarginScheduler

    start, end = args.margin_schedule
    if end < start:
        raise CliError(f"--margin-schedule {start} {end}: END must be >= START")
    if end > args.epochs:
        raise CliError(f"--margin-schedule {start} {end}: END is past --epochs {args.epochs}, "
                       f"so the margin would never reach its value")
    if not hasattr(head, "margin"):
        raise CliError(f"--margin-schedule: loss {args.loss!r} has no single 'margin' to warm up")
    scheduler = MarginScheduler(
        head, iterations_per_epoch=steps_per_epoch, increase_start_epoch=start,
        fix_start_epoch=end, initial_margin=0.0, final_margin=float(head.margin),
        increase_type=args.margin_ramp,
    )
    try:  # fail now, not mid-training, where margin 0 is invalid (SphereFace's multiplier)
        if hasattr(head, "margin_spec"):
            head.margin_spec()
    except ValueError as error:
        raise CliError(f"--margin-schedule: loss {args.loss!r} cannot start at margin 0 "
                       f"({error})") from None
    return scheduler


def run(args: argparse.Namespace) -> int:
    import torch

    from ..training import build_model, embed, fit, resolve_device

    if args.resume and not args.checkpoint_dir:
        raise CliError("--resume needs --checkpoint-dir")
    if args.embed and not args.export_embeddings:
        raise CliError("--embed needs --export-embeddings (where to write them)")
    export = Path(args.export_embeddings) if args.export_embeddings else None
    if export is not None:
        if export.suffix not in (".npy", ".npz"):
            raise CliError(f"--export-embeddings {export}: name must end in .npy or .npz")
        output_file("--export-embeddings", export, args.force)
    if args.checkpoint_dir:
        check_folder("--checkpoint-dir", args.checkpoint_dir, Path(args.checkpoint_dir))
    device = resolve_device(args.device, name="--device")  # ValueError: one line, status 2
    set_threads(args.threads)

    data = read_train_data(args.data, args.labels, args.image_size)
    to_embed = read_features(args.embed, args.image_size) if args.embed else data.features
    params = dict(args.param)
    for name in ("margin", "scale"):
        if getattr(args, name) is not None:
            if name in params:
                raise CliError(f"--{name} {getattr(args, name)} and --param {name}="
                               f"{params[name]}: give the {name} once")
            params[name] = getattr(args, name)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, hidden_dim=args.hidden_dim,
        embedding_dim=args.embedding_dim, seed=args.seed, device=str(device),
    )
    input_dim = int(np.prod(data.features.shape[1:]))
    if int(np.prod(to_embed.shape[1:])) != input_dim:
        raise CliError(f"{args.embed}: rows have {int(np.prod(to_embed.shape[1:]))} values; "
                       f"the training data has {input_dim}")
    model = build_model(input_dim, config)
    model.set_input_scaling(data.features)
    try:
        head = build_head(args.loss, config.embedding_dim, len(data.classes), **params)
    except TypeError as error:  # a parameter of the wrong type, e.g. --margin abc
        raise CliError(f"--loss {args.loss}: {error}") from None
    scheduler = margin_scheduler(args, head, math.ceil(len(data.labels) / config.batch_size))
    meta = {"loss": args.loss, "params": {**head_parameters(args.loss), **params},
            "input_dim": input_dim, "classes": data.classes,
            "margin_schedule": list(args.margin_schedule or []), "margin_ramp": args.margin_ramp}

    checkpoint = Path(args.checkpoint_dir) / CHECKPOINT_NAME if args.checkpoint_dir else None
    if checkpoint is not None and args.resume:
        check_resume(checkpoint, meta, config)
    elif checkpoint is not None and checkpoint.exists():
        raise CliError(f"--checkpoint-dir: {checkpoint} exists; pass --resume to continue it "
                       "or choose another folder")
    with writing("--checkpoint-dir", checkpoint) if checkpoint else contextlib.nullcontext():
        result = fit(
            model, head, data.features, data.labels, config, margin_scheduler=scheduler,
            checkpoint_dir=args.checkpoint_dir, resume=args.resume, stop_after=args.stop_after,
            meta=meta, progress=not args.quiet, desc=args.loss,
        )
    with torch.no_grad():
        trained = torch.as_tensor(embed(model, data.features), device=device)  # (N, D)
        predicted = head.predict(trained).cpu().numpy()
    accuracy = float(np.mean(predicted == data.labels))
    loss = f"{result.epoch_losses[-1]:.4f}" if result.epoch_losses else "n/a"
    print(f"{args.loss}: {len(data.labels)} samples, {len(data.classes)} classes, "
          f"{result.epochs_done}/{config.epochs} epochs ({result.seconds:.1f} s this run "
          f"on {device}); "
          f"final loss {loss}, training accuracy {100 * accuracy:.1f}%")
    if checkpoint is not None:
        print(f"checkpoint: {checkpoint}")

    if export is not None:
        embeddings = embed(model, to_embed)  # (N, embedding_dim)
        extra = {} if args.embed else {"labels": data.labels, "names": np.asarray(data.names)}
        with writing("--export-embeddings", export):
            export.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(export) as handle:  # np.save on a handle adds no .npy
                if export.suffix == ".npz":
                    np.savez(handle, embeddings=embeddings, **extra)
                else:
                    np.save(handle, embeddings)
        print(f"embeddings: {export} {embeddings.shape}")
    return 0
