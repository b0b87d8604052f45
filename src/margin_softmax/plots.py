"""The figures of ``compare``, drawn with matplotlib's object API and the Agg canvas (no
pyplot, no display, no global backend switch). Each function writes one PNG and returns its
Figure (tests read the plotted data from it).

- ``unit_circle``: 2-D embeddings normalised onto the unit circle, one colour per class,
  with the class-centre directions (the classic ArcFace figure), one panel per loss.
- ``target_logit_curves``: psi(theta) of each loss's target logit against cos(theta).
- ``score_histograms``: target and non-target cosine scores, one panel per loss.
- ``det_curves``: false-reject against false-accept rate on probit axes, all losses.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.special import ndtri

from .margins import Margin
from .metrics import roc_points

DPI = 100


def _panels(count: int, width: float = 3.4, height: float = 3.2):
    """A figure with ``count`` axes in rows of at most 3, and the axes as a flat list."""
    cols = min(3, max(count, 1))
    rows = math.ceil(max(count, 1) / cols)
    fig = Figure(figsize=(width * cols, height * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, k + 1) for k in range(count)]
    return fig, axes


def unit_circle(
    runs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: str | os.PathLike
) -> Figure:
    """runs: loss -> (embeddings (N, 2), labels (N,) in [0, C), centres (C, 2) or empty)."""
    fig, axes = _panels(len(runs))
    circle = np.linspace(0, 2 * math.pi, 200)
    for ax, (name, (emb, labels, centres)) in zip(axes, runs.items(), strict=True):
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)  # (N, 2)
        ax.plot(np.cos(circle), np.sin(circle), color="0.85", lw=1, zorder=0)
        colours = [f"C{k % 10}" for k in labels]
        ax.scatter(unit[:, 0], unit[:, 1], c=colours, s=8, alpha=0.5, linewidths=0)
        for k, centre in enumerate(centres):
            direction = centre / max(float(np.linalg.norm(centre)), 1e-12)
            ax.plot([0, 1.15 * direction[0]], [0, 1.15 * direction[1]], color=f"C{k % 10}", lw=1.5)
        ax.set_title(name)
        ax.set_aspect("equal")
        ax.set_xlim(-1.25, 1.25)
        ax.set_ylim(-1.25, 1.25)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("2-D embeddings on the unit circle; lines: class-centre directions")
    fig.savefig(path)
    return fig


def target_logit_curves(margins: dict[str, Margin | None], path: str | os.PathLike) -> Figure:
    """margins: label -> the loss's Margin. An identity Margin (no margin: the target logit is
    the plain cosine) joins the dotted reference line cos(theta); None (a margin that varies
    per sample, e.g. with the feature norm) is listed under the plot, not drawn."""
    theta = torch.linspace(0, math.pi, 721, dtype=torch.float64)  # (T,)
    degrees = theta.numpy() * 180 / math.pi
    fig = Figure(figsize=(6.4, 4.4), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    plain = [name for name, m in margins.items() if m is not None and m.is_identity]
    varying = [name for name, m in margins.items() if m is None]
    reference = "cos theta" + (f": {', '.join(plain)}" if plain else "")
    ax.plot(degrees, torch.cos(theta).numpy(), ":", color="0.3", lw=1.8, label=reference)
    for k, (name, margin) in enumerate(margins.items()):
        if margin is not None and name not in plain:
            psi = margin.psi(torch.cos(theta))  # (T,)
            ax.plot(degrees, psi.numpy(), color=f"C{k % 10}", label=name, lw=1.8)
    ax.axhline(0, color="0.8", lw=0.8)
    ax.set_xlim(0, 180)
    xlabel = "angle to the class centre, theta (degrees)"
    if varying:
        xlabel += f"\nnot drawn (margin varies per sample): {', '.join(varying)}"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("target logit / scale, psi(theta)")
    ax.set_title("Target-logit curves: margins push the target logit down")
    ax.legend(fontsize=8)
    fig.savefig(path)
    return fig


def score_histograms(
    trials: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike
) -> Figure:
    """trials: loss -> (scores (T,), labels (T,) 1 target / 0 non-target)."""
    fig, axes = _panels(len(trials), height=2.8)
    bins = np.linspace(-1, 1, 81)
    for ax, (name, (scores, labels)) in zip(axes, trials.items(), strict=True):
        target = np.asarray(labels) == 1
        ax.hist(scores[~target], bins=bins, alpha=0.6, density=True, label="non-target")
        ax.hist(scores[target], bins=bins, alpha=0.6, density=True, label="target")
        ax.set_title(name)
        ax.set_xlabel("cosine score")
        ax.set_yticks([])
    if axes:
        axes[0].legend(fontsize=8)
    fig.suptitle("Verification scores on identities unseen in training")
    fig.savefig(path)
    return fig


def det_curves(
    trials: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike
) -> Figure:
    """trials: loss -> (scores (T,), labels (T,)). Axes are probit(rate), as DET plots are."""
    ticks = np.array([0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4])
    lo, hi = 5e-4, 0.5
    fig = Figure(figsize=(5.6, 5.2), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, (name, (scores, labels)) in enumerate(trials.items()):
        far, frr, _ = roc_points(scores, labels)
        x, y = ndtri(np.clip(far, lo, hi)), ndtri(np.clip(frr, lo, hi))
        ax.plot(x, y, color=f"C{k % 10}", label=name)
    ax.plot(ndtri([lo, hi]), ndtri([lo, hi]), color="0.8", lw=0.8)  # the EER line
    labels_pct = [f"{100 * t:g}" for t in ticks]
    ax.set_xticks(ndtri(ticks), labels_pct)
    ax.set_yticks(ndtri(ticks), labels_pct)
    ax.set_xlim(ndtri(lo), ndtri(hi))
    ax.set_ylim(ndtri(lo), ndtri(hi))
    ax.set_xlabel("false-accept rate (%)")
    ax.set_ylabel("false-reject rate (%)")
    ax.set_title("DET curves (lower left is better)")
    ax.grid(color="0.9")
    ax.legend(fontsize=8)
    fig.savefig(path)
    return fig
