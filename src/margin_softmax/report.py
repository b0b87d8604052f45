"""How compare's results are shown: a plain-text table for the terminal and a self-contained
HTML report (figures embedded as base64 PNG data URIs, so the one file can be mailed or
opened offline).

``results`` is the dict written to results.json:
{"losses": {name: {"accuracy": ..., "eer": ..., ...}}, "settings": {...}}. The captions are
written from the settings, so they describe the run they come with.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from .atomic_files import atomic_write_text
from .margins import Margin

# (key in results["losses"][name], column header, format of the value)
COLUMNS = (
    ("accuracy", "accuracy", lambda v: f"{100 * v:.1f}%"),
    ("eer", "EER", lambda v: f"{100 * v:.2f}%"),
    ("min_dcf_0.01", "minDCF(0.01)", lambda v: f"{v:.3f}"),
    ("min_dcf_0.05", "minDCF(0.05)", lambda v: f"{v:.3f}"),
    ("tar_at_far_1e-3", "TAR@FAR=1e-3", lambda v: f"{100 * v:.1f}%"),
    ("train_seconds", "train s", lambda v: f"{v:.1f}"),
)


def table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """The header and one row of formatted cells per loss."""
    header = ["loss", *(title for _, title, _ in COLUMNS)]
    rows = [
        [name, *(fmt(metrics[key]) for key, _, fmt in COLUMNS)]
        for name, metrics in results["losses"].items()
    ]
    return header, rows


def format_table(results: dict) -> str:
    """The results as aligned plain text: loss names left, numbers right."""
    header, rows = table_rows(results)
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [c.rjust(w) for c, w in zip(row, widths, strict=True)]
        cells[0] = row[0].ljust(widths[0])
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def data_summary(settings: dict) -> str:
    """One sentence on the data and the split, from results["settings"]."""
    if settings["dataset"] == "synthetic":
        data = (f"synthetic data, {settings['identities']} identities × "
                f"{settings['samples_per_identity']} samples of {settings['feature_dim']} "
                "features")
        kind = "identities"
    else:
        data, kind = "scikit-learn's 8×8 digits", "digits"
    return (f"{data}: trained on {settings['train_identities']} {kind} "
            f"({settings['train_samples']} samples, {settings['closed_set_test_samples']} more "
            f"held back for the accuracy); {settings['held_out_identities']} {kind} never seen "
            f"in training give the {settings['trials']} verification trials, "
            f"{settings['target_trials']} of them target")


def figure_texts(
    settings: dict, margins: dict[str, Margin | None], sub_centres: bool = False
) -> list[tuple[str, str, str]]:
    """(file name, alt text, caption) of each figure. margins: the target-logit figure's
    curves (label -> Margin, None where the margin varies per sample); sub_centres: whether
    some head of the 2-D run has several centres per class."""
    classes, samples = settings["classes_2d"], settings["samples_2d"]
    if settings["dataset"] == "synthetic":
        data_2d = f"{classes} other synthetic identities × {samples // classes} samples"
    else:
        data_2d = f"the {classes} training digits, {samples} samples"
    circle = (
        f"A second run per loss with 2-D embeddings ({data_2d}; "
        f"{settings['train_2d']['epochs']} epochs), small enough to draw; the table comes from "
        "the main run. Each sample is normalised onto the unit circle (dots, coloured by "
        "class); the lines are the directions of the class centres (the head's weight rows, "
        "in the colour of their class). Each panel's title gives the mean angle between a "
        "sample and its own class centre: the smaller, the more tightly the loss gathers each "
        "class around its centre, which is what a margin asks for. Softmax has a bias and "
        "unnormalised weights, so its classes need not sit on its lines."
    )
    if sub_centres:
        circle += " Heads with sub-centres draw a line per sub-centre; the angle is to the nearest."
    drawn = [m for m in margins.values() if m is not None]
    varying = [name for name, m in margins.items() if m is None]
    curves = (
        "ψ(θ), the target-class logit divided by the scale s, of each loss as trained here, "
        "against the angle θ between an embedding and its class centre. The thick grey line "
        "is cos θ, the target logit of a loss without a margin (NormFace, AdaCos; softmax has "
        "none either, though its logit |x||w|·cos θ + b has no fixed scale). A curve below it "
        "is a margin: the loss scores the sample as if it were further from its centre, so it "
        "keeps pulling it in. The labels give each margin in the combined form "
        "ψ = cos(m1·θ + m2) − m3, in radians: m3 (CosFace) lowers the curve by the same amount "
        "at every angle, m2 (ArcFace) shifts it by an angle, m1 (SphereFace) multiplies the "
        "angle."
    )
    if any(m.blend for m in drawn):
        curves += (" SphereFace is drawn with the annealing weight λ it ended training with: "
                   "ψ = (λ·cos θ + ψ_SphereFace) / (1 + λ).")
    if any(m.fallback == "seed" for m in drawn):
        curves += (" The small step near 180° − m2 is ArcFace's fallback: where θ + m2 would "
                   "pass 180°, ψ = cos θ − m2·sin m2.")
    if varying:
        curves += (f" Not drawn, because their margin varies from sample to sample: "
                   f"{', '.join(varying)}.")
    nontargets = settings["trials"] - settings["target_trials"]
    scores = (
        f"Histograms (density) of the cosine scores of the {settings['trials']} verification "
        f"trials, {settings['target_trials']} target (two samples of one identity) and "
        f"{nontargets} non-target, among the {settings['held_out_identities']} identities held "
        "out of training. The less the two overlap, the fewer errors any threshold makes; what "
        "matters is the overlap, not where either peak sits."
    )
    det = (
        "DET curves of the same trials: the false-reject rate against the false-accept rate as "
        "the threshold moves, both on a probit (normal-deviate) scale with ticks in percent, "
        "as in speaker verification; scores with roughly normal distributions give straight "
        "lines. Lower left is better. Each dot is a loss's EER, where its curve meets the "
        "diagonal (the table's EER, also in the legend); the dotted vertical line is "
        "FAR = 0.1%, where the table's TAR@FAR=1e-3 is 100% minus the curve's false-reject "
        f"rate. With {nontargets} non-target and {settings['target_trials']} target trials, "
        f"rates below {100 / max(min(nontargets, settings['target_trials']), 1):.2g}% "
        "cannot be measured."
    )
    return [
        ("unit_circle.png", "2-D embeddings on the unit circle, one panel per loss", circle),
        ("target_logit.png", "Target-logit curves psi(theta), one per loss", curves),
        ("scores.png", "Histograms of target and non-target scores, one panel per loss", scores),
        ("det.png", "DET curves of every loss on probit axes", det),
    ]


def _image(path: str | os.PathLike, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def render_html(results: dict, figures: list[tuple[str, str, str | os.PathLike]]) -> str:
    """The report page: the data, the table, each (alt text, caption, PNG path) figure
    inline, the settings."""
    header, rows = table_rows(results)
    head_html = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body_html = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    figures_html = "".join(
        f"<figure>{_image(path, alt)}<figcaption>{html.escape(caption)}</figcaption></figure>\n"
        for alt, caption, path in figures
    )
    settings = results.get("settings", {})
    data = f" on {html.escape(data_summary(settings))}" if "dataset" in settings else ""
    settings_json = html.escape(json.dumps(settings, indent=2))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>margin-softmax compare</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 0.3em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
figure {{ margin: 2em 0; }}
figcaption {{ max-width: 50em; }}
pre {{ background: #f6f6f6; padding: 1em; }}
</style></head><body>
<h1>margin-softmax compare</h1>
<p>The same network trained with each loss{data}.</p>
<p>Accuracy (higher is better): closed-set top-1 on the held-back samples of the training
identities. EER and minDCF (normalised, C_miss = C_fa = 1, at p_target 0.01 and 0.05; lower is
better) and TAR at FAR = 0.1% (higher is better): open-set verification by the cosine of two
embeddings, on identities never seen in training. train s: wall-clock seconds of the training
loop on the machine that ran it.</p>
<table><thead><tr>{head_html}</tr></thead><tbody>{body_html}</tbody></table>
{figures_html}<h2>Settings</h2>
<pre>{settings_json}</pre>
</body></html>
"""


def write_html(
    path: str | os.PathLike, results: dict, figures: list[tuple[str, str, str | os.PathLike]]
) -> None:
    """The report page into ``path``, atomically (UTF-8)."""
    atomic_write_text(path, render_html(results, figures))
