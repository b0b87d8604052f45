"""The normalised Bayes error-rate plot (BOSARIS; the applied-probability-of-error family of
plots): normalised DCF against the prior log-odds eta = log(p / (1 - p)), one colour per
system, its actual DCF (deciding at the Bayes threshold -eta) solid and its minimum DCF
dashed; the gap between them is what calibration loses at that prior. The dotted line at 1
is a system that ignores the trials and always takes the cheaper decision. Drawn with the
object API on the Agg canvas (no pyplot); written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .atomic_files import atomic_open
from .calibration import bayes_error_rates

PRIOR_LOG_ODDS = np.linspace(-7.0, 7.0, 141)  # p from 0.0009 to 0.9991
Y_TOP = 1.2  # curves above this (bad calibration far from the fitted prior) are cut off


def bayes_error_plot(
    systems: Mapping[str, tuple[Any, Any]],
    path: str | os.PathLike,
    prior_log_odds: Any = PRIOR_LOG_ODDS,
    p_targets: Sequence[float] = (0.01, 0.05),
    styles: Sequence[dict] | None = None,
    title: str = "Normalised Bayes error rate",
) -> Figure:
    """Write the plot of ``systems`` (name -> (llr (n,), labels (n,))) to ``path`` (PNG, or
    the format its suffix names) and return the Figure. Vertical lines mark the log-odds of
    ``p_targets``; ``styles`` (one dict of matplotlib line properties per system, e.g.
    ``plots.loss_style(k)``) sets the colours."""
    eta = np.asarray(prior_log_odds, dtype=np.float64)
    fig = Figure(figsize=(9.0, 4.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, (name, (llr, labels)) in enumerate(systems.items()):
        actual, minimum = bayes_error_rates(llr, labels, eta)
        style = dict(styles[k]) if styles else {"color": f"C{k}"}
        style.pop("linestyle", None)  # solid is actual, dashed minimum, for every system
        ax.plot(eta, actual, linestyle="solid", label=f"{name}: actual", **style)
        ax.plot(eta, minimum, linestyle="dashed", label=f"{name}: minimum", **style)
    ax.axhline(1.0, color="black", linestyle="dotted", linewidth=1.0,
               label="no information (always the cheaper decision)")
    for p in p_targets:
        ax.axvline(math.log(p / (1 - p)), color="grey", linewidth=0.8)
        ax.annotate(f"p = {p:g}", (math.log(p / (1 - p)), Y_TOP), xytext=(3, -12),
                    textcoords="offset points", fontsize=8, color="grey")
    ax.set_xlim(eta.min(), eta.max())
    ax.set_ylim(0.0, Y_TOP)
    ax.set_xlabel("prior log-odds  log(p / (1 - p))")
    ax.set_ylabel("normalised DCF")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the axes
    with atomic_open(path) as handle:
        fig.savefig(handle, format=Path(path).suffix[1:].lower() or "png")
    return fig
