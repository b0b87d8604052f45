"""``eval --gallery G --probes P``: 1:N identification (``margin_softmax.identification``):
rank-k rates and the CMC curve, and TPIR at each FPIR when some probes are not enrolled."""

from __future__ import annotations

import argparse
import json

import numpy as np

from .. import scoring
from .common import CliError, positive_int

CMC_RANKS = 100  # the JSON's "cmc" holds the rates at ranks 1..100 (or all, if fewer)
VERIFICATION_OPTIONS = ("trials", "scores", "embeddings", "cohort", "center", "write_scores",
                        "folds", "llr", "plot", "ci")


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gallery", metavar="NPZ",
                   help="identification: enrolled identities, .npz with 'embeddings' (N, D) "
                   "and 'labels' (N,); each identity's template is the mean of its "
                   "embeddings scaled to unit length")
    p.add_argument("--probes", metavar="NPZ",
                   help="identification: the searches, .npz with 'embeddings' and 'labels'; "
                   "probes whose label is not in the gallery are non-mated")
    p.add_argument("--rank", type=positive_int, nargs="+", metavar="K",
                   help="identification rates at these ranks (default 1 5, those the gallery "
                   "has)")
    p.add_argument("--fpir", type=float, nargs="+", metavar="F",
                   help="TPIR at these false-positive identification rates (default 0.01 0.1 "
                   "when some probes are non-mated)")


def wanted(args: argparse.Namespace) -> bool:
    return bool(args.gallery or args.probes)


def read(option: str, path) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N, D) and labels (N,) of an .npz."""
    arrays = scoring.load_arrays(path)
    embeddings, _ = scoring.embeddings_in(arrays, path)
    labels = arrays.get("labels")
    if labels is None or labels.shape != (len(embeddings),):
        got = "none" if labels is None else f"shape {labels.shape}"
        raise CliError(f"{option} {path}: needs a 'labels' array of shape "
                       f"({len(embeddings)},), one identity per embedding; got {got}")
    return embeddings, labels


def run(args: argparse.Namespace) -> int:
    if not (args.gallery and args.probes):
        raise CliError("identification needs both --gallery and --probes")
    used = [o for o in VERIFICATION_OPTIONS if getattr(args, o)]
    if used:
        raise CliError(f"--gallery/--probes search identities; --{used[0].replace('_', '-')} "
                       "belongs to verification (leave it out)")
    for f in args.fpir or ():
        if not 0 <= f <= 1:
            raise CliError(f"--fpir must lie in [0, 1]; got {f:g}")
    gallery, gallery_labels = read("--gallery", args.gallery)
    probes, probe_labels = read("--probes", args.probes)
    if gallery.shape[1] != probes.shape[1]:
        raise CliError(f"--probes {args.probes} has {probes.shape[1]} columns but --gallery "
                       f"{args.gallery} has {gallery.shape[1]}")
    identities = np.unique(gallery_labels).size
    ranks = args.rank or [k for k in (1, 5) if k <= identities]
    for k in ranks:
        if k > identities:
            raise CliError(f"--rank {k} exceeds the {identities} identities of --gallery "
                           f"{args.gallery}")
    fpirs = args.fpir
    if fpirs is None:  # the default: open-set rates only where there are non-mated probes
        fpirs = [0.01, 0.1] if not np.isin(probe_labels, gallery_labels).all() else []
    from ..identification import identification

    try:
        found = identification(gallery, gallery_labels, probes, probe_labels, ranks, fpirs)
    except (TypeError, ValueError) as error:
        raise CliError(f"--gallery {args.gallery}, --probes {args.probes}: {error}") from None
    cmc = found.pop("cmc")
    result = {"gallery": args.gallery, "probes": args.probes, "gallery_rows": len(gallery),
              **found, "cmc": cmc[:CMC_RANKS].tolist()}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'gallery':<16}{found['templates']} identities (templates from {len(gallery)} "
          f"embeddings)")
    print(f"{'probes':<16}{len(probes)} ({found['mated']} mated, {found['non_mated']} "
          f"non-mated)")
    for k in ranks:
        print(f"{f'rank-{k}':<16}{100 * found[f'rank{k}']:.2f}%")
    for f in fpirs:
        print(f"{f'TPIR@FPIR={f:g}':<16}{100 * found[f'tpir@{f:g}']:.2f}%")
    return 0
