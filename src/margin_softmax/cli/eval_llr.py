"""``eval --llr`` and ``--plot``: metrics of scores that are log-likelihood ratios (Cllr, min
Cllr, actual DCF; ``margin_softmax.calibration``) and the normalised Bayes error-rate plot."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .common import CliError, output_file, writing


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--llr", action="store_true",
                   help="the scores are log-likelihood ratios (natural log; calibrate writes "
                   "them): also Cllr, min Cllr and the actual DCF at each --p-target")
    p.add_argument("--plot", metavar="FILE",
                   help="with --llr: draw the normalised Bayes error-rate plot (actual and "
                   "minimum DCF against the prior log-odds) into FILE (.png)")


def plot_file(args: argparse.Namespace) -> Path | None:
    """The --plot file, checked before any work."""
    if not args.plot:
        return None
    if not args.llr:
        raise CliError("--plot needs --llr (it shows how well LLRs are calibrated)")
    return output_file("--plot", args.plot, args.force)


def results(args: argparse.Namespace, scores: np.ndarray, labels: np.ndarray,
            plot: Path | None, name: str) -> dict:
    """{"cllr", "min_cllr", "act_dcf", "act_dcf_<p>"..., "plot"} with --llr, else {}."""
    if not args.llr:
        return {}
    from ..calibration import llr_summary

    out = llr_summary(scores, labels, args.p_target)
    if plot is not None:
        from ..ape_plot import bayes_error_plot

        with writing("--plot", plot):
            bayes_error_plot({name: (scores, labels)}, plot, p_targets=args.p_target)
        out["plot"] = str(plot)
    return out


def lines(args: argparse.Namespace, result: dict) -> list[str]:
    """The table's rows for the LLR metrics."""
    if not args.llr:
        return []
    rows = [f"{'Cllr':<16}{result['cllr']:.4f} bits (min Cllr {result['min_cllr']:.4f})"]
    rows += [f"{f'actDCF({p:g})':<16}{result[f'act_dcf_{p:g}']:.4f}" for p in args.p_target]
    if "plot" in result:
        rows.append(f"{'plot written':<16}{result['plot']}")
    return rows
