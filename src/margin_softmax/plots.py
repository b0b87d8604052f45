"""The figures of ``compare``, drawn with matplotlib's object API and the Agg canvas (no
pyplot, no display, no global backend switch). Each function writes one PNG (atomically:
``save``) and returns its Figure (tests read the plotted data from it).

- ``unit_circle``: 2-D embeddings normalised onto the unit circle, one colour per class,
  with the class-centre directions (the classic ArcFace figure), one panel per loss.
- ``target_logit_curves``: psi(theta) of each loss's target logit against the angle theta,
  with the no-margin curve cos(theta) for reference.
- ``score_histograms``: target and non-target cosine scores on a log density axis, one panel
  per loss, all panels on the same axes, with the threshold at each loss's EER.
- ``det_curves``: false-reject against false-accept rate on probit axes, all losses.

Losses keep one colour and line style in every figure (``loss_style``).
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.special import ndtri

from .atomic_files import atomic_open
from .margins import Margin
from .metrics import eer, roc_points
from .score_norm import unit_rows

DPI = 100
MIN_WIDTH = 6.8  # inches: a figure's one-line title fits at 12 points
LEGEND_ROOM = 30.0  # the score histograms' y axis reaches this factor above the highest bar

# Okabe and Ito's palette, which colour-blind readers can tell apart. Losses leave out black
# (the reference line's) and yellow (faint on white); each also gets its own line style, so
# the curves differ in print and for any reader.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000",
             "#F0E442")
LOSS_COLOURS = OKABE_ITO[:6]
LOSS_DASHES = ("solid", (0, (6, 2)), (0, (6, 2, 1.5, 2)), (0, (1.5, 1.5)), (0, (11, 3)),
               (0, (3, 2, 1.5, 2, 1.5, 2)))

DET_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95)
DET_LOW = 5e-4  # the lowest rate on the DET axes
PROBIT_OFF_AXES = 8.0  # rates 0 and 1 (probit -inf, inf) are drawn here, outside the axes
REPORTED_FAR = 1e-3  # the FAR of the table's TAR column


def loss_style(k: int) -> dict:
    """Colour and line style of the k-th loss: the first six differ in both."""
    return {"color": LOSS_COLOURS[k % 6], "linestyle": LOSS_DASHES[(k + k // 6) % 6]}


def _panels(count: int, width: float = 3.4, height: float = 3.2, shared: bool = False):
    """A figure with ``count`` axes in rows of at most 3 (at least MIN_WIDTH wide), and the
    axes as a flat list; ``shared``: every panel has the first one's x and y axes."""
    cols = min(3, max(count, 1))
    rows = math.ceil(max(count, 1) / cols)
    fig = Figure(figsize=(max(width * cols, MIN_WIDTH), height * rows), dpi=DPI,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes: list = []
    for k in range(count):
        first = axes[0] if shared and axes else None
        axes.append(fig.add_subplot(rows, cols, k + 1, sharex=first, sharey=first))
    return fig, axes


def save(fig: Figure, path: str | os.PathLike) -> None:
    """fig.savefig(path) through atomic_open, in the format the name's suffix says (PNG
    without one): a failure leaves the previous file whole."""
    with atomic_open(path) as handle:
        fig.savefig(handle, format=Path(path).suffix[1:].lower() or "png")


def _wrap(fig: Figure, text: str, size: float) -> str:
    """text in lines that fit the figure's width at font size ``size`` (points)."""
    per_line = int(fig.get_figwidth() * 72 / (0.62 * size))  # DejaVu Sans: ~0.6 em a letter
    return textwrap.fill(text, per_line)


def centre_classes(centres: np.ndarray, num_classes: int) -> np.ndarray:
    """(M,) the class of each centre row: K = M / num_classes rows per class, class c in rows
    c*K .. c*K + K - 1 (K = 1 for most heads, K sub-centres for sub-center ArcFace)."""
    rows = centres.shape[0]
    if rows == 0 or rows % num_classes:
        raise ValueError(f"{rows} centre rows do not split evenly into {num_classes} classes")
    return np.arange(rows) // (rows // num_classes)


def angles_to_centre(emb: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N,) degrees between each embedding (N, D) and the nearest centre row (M, D) of its
    class (labels (N,) in [0, C), rows as in ``centre_classes``)."""
    owner = centre_classes(centres, int(labels.max()) + 1)  # (M,)
    cos = unit_rows(emb) @ unit_rows(centres).T  # (N, M)
    own = np.where(owner[None, :] == labels[:, None], cos, -np.inf)  # (N, M)
    return np.degrees(np.arccos(np.clip(own.max(axis=1), -1.0, 1.0)))  # (N,)


def unit_circle(
    runs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: str | os.PathLike
) -> Figure:
    """runs: loss -> (embeddings (N, 2), labels (N,) in [0, C), centres (C*K, 2): the head's
    weight, K rows per class as in ``centre_classes``). Each panel's title gives the mean
    angle between a sample and its class centre."""
    fig, axes = _panels(len(runs), height=3.5)
    circle = np.linspace(0, 2 * math.pi, 200)
    for ax, (name, (emb, labels, centres)) in zip(axes, runs.items(), strict=True):
        unit = unit_rows(emb)  # (N, 2)
        ax.plot(np.cos(circle), np.sin(circle), color="0.85", lw=1, zorder=0)
        colours = [OKABE_ITO[k % 8] for k in labels]
        ax.scatter(unit[:, 0], unit[:, 1], c=colours, s=8, alpha=0.6, linewidths=0)
        owner = centre_classes(centres, int(labels.max()) + 1)  # (M,)
        for k, direction in zip(owner, unit_rows(centres), strict=True):
            ax.plot([0, 1.15 * direction[0]], [0, 1.15 * direction[1]], color=OKABE_ITO[k % 8],
                    lw=1.5)
        angle = float(np.mean(angles_to_centre(emb, labels, centres)))
        ax.set_title(f"{name}\nmean angle to own centre {angle:.1f}°", fontsize=10)
        ax.set_aspect("equal")
        ax.set_xlim(-1.25, 1.25)
        ax.set_ylim(-1.25, 1.25)
        ax.set_xticks([-1, 0, 1])
        ax.set_yticks([-1, 0, 1])
        ax.set_xlabel(r"$x_1\,/\,\|x\|$")
        ax.set_ylabel(r"$x_2\,/\,\|x\|$")
    fig.suptitle("Samples (dots) and class centres (lines) on the unit circle", fontsize=12)
    save(fig, path)
    return fig


def target_logit_curves(margins: dict[str, Margin | None], path: str | os.PathLike) -> Figure:
    """margins: label -> the loss's Margin, in the losses' order (the k-th takes
    ``loss_style(k)``). An identity Margin (no margin: the target logit is the plain cosine)
    joins the grey reference line cos(theta); None (a margin that varies per sample, e.g.
    with the feature norm) is listed under the plot, not drawn. x: theta in degrees."""
    theta = torch.linspace(0, math.pi, 721, dtype=torch.float64)  # (T,)
    degrees = theta.numpy() * 180 / math.pi
    fig = Figure(figsize=(6.8, 4.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    plain = [name for name, m in margins.items() if m is not None and m.is_identity]
    varying = [name for name, m in margins.items() if m is None]
    reference = "cos θ, no margin" + (f": {', '.join(plain)}" if plain else "")
    ax.plot(degrees, torch.cos(theta).numpy(), color="0.6", lw=3.5, label=reference)
    for k, (name, margin) in enumerate(margins.items()):
        if margin is not None and name not in plain:
            psi = margin.psi(torch.cos(theta))  # (T,)
            ax.plot(degrees, psi.numpy(), label=name, lw=1.8, **loss_style(k))
    ax.axhline(0, color="0.8", lw=0.8)
    ax.set_xlim(0, 180)
    ax.set_xticks(range(0, 181, 30))
    xlabel = "angle θ between the embedding and its class centre (degrees)"
    if varying:
        xlabel += "\n" + _wrap(fig, f"not drawn (margin varies per sample): {', '.join(varying)}",
                              10.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ψ(θ) = target logit / scale")
    ax.set_title("Target logit per loss: the further below cos θ, the larger the margin")
    ax.grid(color="0.93")
    ax.legend(fontsize=9)
    save(fig, path)
    return fig


def eer_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold at the equal error rate: the highest score threshold (accept score >= t)
    at which FAR >= FRR, as ``metrics.eer`` finds it. scores (T,), labels (T,) 1/0."""
    far, frr, thresholds = roc_points(scores, labels)
    return float(thresholds[np.argmax(far >= frr)])


def score_histograms(
    trials: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike
) -> Figure:
    """trials: loss -> (scores (T,), labels (T,) 1 target / 0 non-target). Densities on a log
    axis, so that the tails where the two classes overlap show; every panel on the same axes,
    down to the density of one trial in a bin; a dashed line at each loss's EER threshold."""
    fig, axes = _panels(len(trials), height=2.8, shared=True)
    bins = np.linspace(-1, 1, 81)
    lowest, highest = np.inf, 0.0  # the smallest non-zero and the largest density drawn
    for ax, (name, (scores, labels)) in zip(axes, trials.items(), strict=True):
        target = np.asarray(labels) == 1
        for kind, rows, colour in (("non-target", ~target, OKABE_ITO[0]),
                                   ("target", target, OKABE_ITO[1])):
            heights, _, _ = ax.hist(scores[rows], bins=bins, density=True, color=colour,
                                    alpha=0.45, label=kind)
            # the outline keeps each shape visible where the two overlap
            ax.hist(scores[rows], bins=bins, density=True, color=colour, histtype="step", lw=1)
            lowest = min(lowest, heights[heights > 0].min(initial=np.inf))
            highest = max(highest, heights.max())
        ax.axvline(eer_threshold(scores, labels), color="0.2", lw=1, ls="--",
                   label="EER threshold")
        ax.set_yscale("log")
        ax.set_title(f"{name} (EER {100 * eer(scores, labels):.2f}%)", fontsize=10)
        ax.set_xlabel("cosine score")
        ax.set_ylabel("density (log scale)")
    if axes:
        every = np.concatenate([scores for scores, _ in trials.values()])
        axes[0].set_xlim(max(every.min() - 0.05, -1.0), min(every.max() + 0.05, 1.0))
        axes[0].set_ylim(lowest / 2, highest * LEGEND_ROOM)
        axes[0].legend(fontsize=8, ncols=2, loc="upper left")
    fig.suptitle("Verification scores on identities unseen in training", fontsize=12)
    save(fig, path)
    return fig


def det_high(worst_eer: float) -> float:
    """The highest rate on the DET axes: 50 %, or 80 % / 95 % when twice the worst EER is
    beyond it, so that every curve's EER and its neighbourhood are on the plot."""
    return next((high for high in (0.5, 0.8) if high >= 2 * worst_eer), 0.95)


def det_curves(
    trials: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike
) -> Figure:
    """trials: loss -> (scores (T,), labels (T,)), the k-th in ``loss_style(k)``. Both axes are
    probit(rate), ticks in percent, as DET plots are drawn; each curve's EER is a dot on the
    diagonal, and the table's FAR of 0.1 % a vertical line."""
    eers = [eer(scores, labels) for scores, labels in trials.values()]
    lo, hi = DET_LOW, det_high(max(eers, default=0.0))
    fig = Figure(figsize=(5.8, 5.4), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, ((name, (scores, labels)), rate) in enumerate(zip(trials.items(), eers, strict=True)):
        far, frr, _ = roc_points(scores, labels)
        x = np.clip(ndtri(far), -PROBIT_OFF_AXES, PROBIT_OFF_AXES)  # (m + 1,)
        y = np.clip(ndtri(frr), -PROBIT_OFF_AXES, PROBIT_OFF_AXES)  # (m + 1,)
        style = loss_style(k)
        ax.plot(x, y, lw=1.6, label=f"{name} (EER {100 * rate:.2f}%)", **style)
        point = np.clip(ndtri(rate), -PROBIT_OFF_AXES, PROBIT_OFF_AXES)
        ax.plot([point], [point], "o", color=style["color"], ms=5)
    ax.plot(ndtri([lo, hi]), ndtri([lo, hi]), color="0.7", lw=0.8, label="FAR = FRR")
    ax.axvline(ndtri(REPORTED_FAR), color="0.5", lw=0.8, ls=":",
               label=f"FAR = {100 * REPORTED_FAR:g}% (TAR column)")
    ticks = np.array([t for t in DET_TICKS if lo <= t <= hi])
    labels_pct = [f"{100 * t:g}" for t in ticks]
    ax.set_xticks(ndtri(ticks), labels_pct)
    ax.set_yticks(ndtri(ticks), labels_pct)
    ax.set_xlim(ndtri(lo), ndtri(hi))
    ax.set_ylim(ndtri(lo), ndtri(hi))
    ax.set_xlabel("false-accept rate (%, probit scale)")
    ax.set_ylabel("false-reject rate (%, probit scale)")
    ax.set_title("DET curves (lower left is better)")
    ax.grid(color="0.9")
    ax.legend(fontsize=8)
    save(fig, path)
    return fig
