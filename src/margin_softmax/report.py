"""How compare's results are shown: two plain-text tables for the terminal (verification,
then calibration and identification) and a self-contained HTML report (figures embedded as
base64 PNG data URIs, so the one file can be mailed or opened offline).

``results`` is the dict written to results.json: {"losses": {name: {"accuracy": mean over
the seeds, ..., "std": {...}, "ci": {metric: [low, high]}, "per_seed": [...]}},
"differences": {"baseline": name, "test", "ci_test", "losses": {name: {metric: {"mean",
"std", "marked"} and, for the bootstrapped metrics, "ci", "ci_marked"}}}, "settings": {...}}
(see seed_spread and cli.compare_held_out). The captions are written from the settings, so
they describe the run they come with.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from .atomic_files import atomic_write_text
from .margins import Margin

# (key in results["losses"][name], column header, scale, decimals, unit): 0.0159 -> "1.59%"
COLUMNS = (
    ("accuracy", "accuracy", 100, 1, "%"),
    ("eer", "EER", 100, 2, "%"),
    ("min_dcf_0.01", "minDCF(0.01)", 1, 3, ""),
    ("min_dcf_0.05", "minDCF(0.05)", 1, 3, ""),
    ("tar_at_far_1e-3", "TAR@FAR=1e-3", 100, 1, "%"),
    ("train_seconds", "train s", 1, 1, ""),
)
HELD_OUT = (  # the second table: calibration (on the evaluation half) and identification
    ("cllr", "Cllr", 1, 3, ""),
    ("min_cllr", "min Cllr", 1, 3, ""),
    ("act_dcf_0.01", "actDCF(0.01)", 1, 3, ""),
    ("eval_min_dcf_0.01", "minDCF(0.01)", 1, 3, ""),
    ("rank1", "rank-1", 100, 1, "%"),
    ("tpir@0.01", "TPIR@FPIR=1%", 100, 1, "%"),
)
FORMATS = {key: (scale, decimals, unit) for key, _, scale, decimals, unit in COLUMNS + HELD_OUT}
COMPARED = tuple(key for key in FORMATS if key != "train_seconds")  # tested against the baseline
MARK = "*"  # a difference from the baseline larger than the seed-to-seed spread
CI_MARK = "†"  # a difference whose bootstrap interval over the held-out identities excludes 0


def number(key: str, value: float | None, std: float | None = None, signed: bool = False) -> str:
    """The value of column ``key`` as shown, with "± std" when there is one: "1.59 ± 0.21%";
    "n/a" for None (not measured)."""
    if value is None:
        return "n/a"
    scale, decimals, unit = FORMATS[key]
    text = f"{scale * value:{'+' if signed else ''}.{decimals}f}"
    if std is not None:
        text += f" ± {scale * std:.{decimals}f}"
    return text + unit


def _marked(results: dict, name: str, key: str) -> str:
    """MARK where loss ``name`` differs from the baseline in ``key`` beyond the seed-to-seed
    spread, CI_MARK where the bootstrap interval of the difference excludes 0."""
    difference = results["differences"]["losses"].get(name, {}).get(key, {})  # none for the
    # baseline and train_seconds; "ci_marked" only for the bootstrapped metrics
    return (MARK if difference.get("marked") else "") + (
        CI_MARK if difference.get("ci_marked") else "")


def table_rows(results: dict, columns=COLUMNS) -> tuple[list[str], list[list[str]]]:
    """The header and one row per loss: each of ``columns``' mean ± std over the seeds, with
    its marks (``_marked``)."""
    header = ["loss", *(title for _, title, *_ in columns)]
    rows = [
        [name, *(number(key, m[key], m["std"][key]) + _marked(results, name, key)
                 for key, *_ in columns)]
        for name, m in results["losses"].items()
    ]
    return header, rows


def difference_rows(results: dict, columns=COLUMNS) -> tuple[list[str], list[list[str]]]:
    """The header and one row per loss but the baseline: the mean ± std over the seeds of
    (loss - baseline) in each of ``columns`` that is COMPARED, with its marks."""
    keys = [(key, title) for key, title, *_ in columns if key in COMPARED]
    header = ["loss", *(f"Δ {title}" for _, title in keys)]
    rows = [
        [name, *(number(key, d[key]["mean"], d[key]["std"], signed=True)
                 + _marked(results, name, key) for key, _ in keys)]
        for name, d in results["differences"]["losses"].items()
    ]
    return header, rows


def interval_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """The header and one row per loss: the bootstrap interval of each bootstrapped metric
    (of its mean over the seeds), then of its difference from the baseline, with CI_MARK."""
    keys = [(key, title) for key, title, *_ in COLUMNS
            if key in next(iter(results["losses"].values()))["ci"]]
    header = ["loss", *(title for _, title in keys), *(f"Δ {title}" for _, title in keys)]
    differences = results["differences"]["losses"]

    def span(key: str, low_high: list[float], signed: bool = False) -> str:
        low, high = (number(key, v, signed=signed) for v in low_high)
        return f"{low} to {high}"

    def difference(name: str, key: str) -> str:
        if name not in differences:  # the baseline
            return ""
        d = differences[name][key]
        return span(key, d["ci"], signed=True) + (CI_MARK if d["ci_marked"] else "")

    rows = [
        [name, *(span(key, m["ci"][key]) for key, _ in keys),
         *(difference(name, key) for key, _ in keys)]
        for name, m in results["losses"].items()
    ]
    return header, rows


def per_seed_rows(results: dict, columns=COLUMNS) -> tuple[list[str], list[list[str]]]:
    """The header and one row per loss and seed: that seed's value of each of ``columns``."""
    header = ["loss", "seed", *(title for _, title, *_ in columns)]
    rows = [
        [name, str(run["seed"]), *(number(key, run[key]) for key, *_ in columns)]
        for name, m in results["losses"].items() for run in m["per_seed"]
    ]
    return header, rows


def table_note(results: dict) -> str:
    """What the tables' ±, MARK and CI_MARK mean, where the second table's numbers come from,
    and which seed the figures show."""
    settings, differences = results["settings"], results["differences"]
    seeds = ", ".join(map(str, settings["seeds"]))
    baseline = differences["baseline"]
    if len(settings["seeds"]) == 1:
        spread = f"One seed ({seeds}): no spread, so no {MARK}."
    else:
        spread = (f"Mean ± sample standard deviation (ddof=1) over {len(settings['seeds'])} "
                  f"seeds ({seeds}). {MARK} differs from {baseline} by more than the "
                  f"seed-to-seed spread ({differences['test']}).")
    bootstrap = (f"{CI_MARK} (EER, minDCF): against {baseline}, {differences['ci_test']}; it "
                 f"holds the trained networks fixed, so only {MARK} covers what changes between "
                 "seeds.")
    calibration = settings["calibration"]
    if calibration is None:
        second = "Calibration n/a: a half of the held-out identities had no target or no " \
                 "non-target trials."
    else:
        second = (f"Cllr, actDCF and the minima beside them: on the {calibration['eval_trials']}"
                  f" trials among {calibration['eval_identities']} held-out identities, "
                  f"calibrated on the {calibration['dev_trials']} among "
                  f"{calibration['dev_identities']} others.")
    enrolled = settings["identification"]
    second += (f" Identification: {enrolled['enrolled_identities']} of the "
               f"{enrolled['identities']} held-out identities enrolled with half their "
               "samples; the other samples are probes.")
    figures = f"The figures show seed {settings['figure_seed']}."
    return " ".join([spread, bootstrap, second, figures])


def format_table(results: dict, columns=COLUMNS) -> str:
    """The ``columns`` of the results as aligned plain text: loss names left, numbers right
    (in a column with marks each cell leaves blanks for the marks it lacks, so the numbers
    line up)."""
    header, rows = table_rows(results, columns)
    for k in range(1, len(header)):
        slots = [mark for mark in (MARK, CI_MARK) if any(mark in row[k] for row in rows)]
        for row in rows:
            text = row[k].rstrip(MARK + CI_MARK)
            row[k] = text + "".join(mark if mark in row[k][len(text):] else " "
                                    for mark in slots)
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [c.rjust(w) for c, w in zip(row, widths, strict=True)]
        cells[0] = row[0].ljust(widths[0])
        lines.append("  ".join(cells).rstrip())
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


def margin_terms(margins: list[Margin]) -> str:
    """What each margin parameter in use does to psi, e.g. "m3 lowers the curve by the same
    amount at every angle"; "" when no margin uses any."""
    terms = [text for used, text in (
        (any(m.m3 for m in margins), "m3 lowers the curve by the same amount at every angle"),
        (any(m.m2 for m in margins), "m2 shifts it by an angle"),
        (any(m.m1 != 1 for m in margins), "m1 multiplies the angle"),
    ) if used]
    return ", ".join(terms)


def figure_texts(
    settings: dict, margins: dict[str, Margin | None], sub_centres: bool = False
) -> list[tuple[str, str, str]]:
    """(file name, alt text, caption) of each figure. margins: the target-logit figure's
    curves (label -> Margin, None where the margin varies per sample); sub_centres: whether
    some head of the 2-D run has several centres per class. A caption names only losses of
    this run (settings["heads"])."""
    seed = settings["figure_seed"]
    classes, samples = settings["classes_2d"], settings["samples_2d"]
    if settings["dataset"] == "synthetic":
        data_2d = f"{classes} other synthetic identities × {samples // classes} samples"
    else:
        data_2d = f"the {classes} training digits, {samples} samples"
    circle = (
        f"A second run per loss with 2-D embeddings, at seed {seed} ({data_2d}; "
        f"{settings['train_2d']['epochs']} epochs), small enough to draw; the table comes from "
        "the main runs. Each sample is normalised onto the unit circle (dots, coloured by "
        "class); the lines are the directions of the class centres (the head's weight rows, "
        "in the colour of their class). Each panel's title gives the mean angle between a "
        "sample and its own class centre: the smaller, the more tightly the loss gathers each "
        "class around its centre, which is what a margin asks for."
    )
    if "softmax" in settings["heads"]:
        circle += (" Softmax has a bias and unnormalised weights, so its classes need not sit "
                   "on its lines.")
    if sub_centres:
        circle += " Heads with sub-centres draw a line per sub-centre; the angle is to the nearest."
    drawn = [m for m in margins.values() if m is not None and not m.is_identity]
    plain = [name for name, m in margins.items() if m is not None and m.is_identity]
    varying = [name for name, m in margins.items() if m is None]
    curves = (
        f"ψ(θ), the target-class logit divided by the scale s, of each loss as trained at seed "
        f"{seed}, against the angle θ between an embedding and its class centre. The thick "
        "grey line is cos θ, the target logit without a margin"
        + (f" ({', '.join(plain)})." if plain else ".")
    )
    if "softmax" in plain:
        curves += (" Softmax has no margin either, though its logit |x||w|·cos θ + b has no "
                   "fixed scale.")
    if drawn:
        curves += (" A curve below the grey line is a margin: the loss scores the sample as if "
                   "it were further from its centre, so it keeps pulling it in. The labels give "
                   "each margin as ψ = cos(m1·θ + m2) − m3, in radians: "
                   f"{margin_terms(drawn)}.")
    if any(m.blend for m in drawn):
        curves += (" SphereFace is drawn with the annealing weight λ it ended training with: "
                   "ψ = (λ·cos θ + ψ_SphereFace) / (1 + λ).")
    if any(m.fallback == "seed" for m in drawn):
        curves += (" The small step near 180° − m2 is a fallback: where θ + m2 would pass "
                   "180°, ψ = cos θ − m2·sin m2.")
    if varying:
        curves += (f" Not drawn, because their margin varies from sample to sample: "
                   f"{', '.join(varying)}.")
    nontargets = settings["trials"] - settings["target_trials"]
    scores = (
        f"Histograms of the cosine scores of seed {seed}'s {settings['trials']} verification "
        f"trials, {settings['target_trials']} target (two samples of one identity) and "
        f"{nontargets} non-target, among the {settings['held_out_identities']} identities held "
        "out of training. The density axis is logarithmic, so the tails, where the two "
        "overlap, show; all panels share both axes. The dashed line is the threshold at the "
        "loss's EER (in the panel's title): non-target scores right of it are false accepts, "
        "target scores left of it false rejects. The less the two overlap, the fewer errors "
        "any threshold makes; what matters is the overlap, not where either peak sits."
    )
    det = (
        f"DET curves of the same trials (seed {seed}): the false-reject rate against the "
        "false-accept rate as the threshold moves, both on a probit (normal-deviate) scale "
        "with ticks in percent, as in speaker verification; scores with roughly normal "
        "distributions give straight lines. Lower left is better. Each dot is a loss's EER at "
        "this seed, where its curve meets the diagonal (also in the legend; the table gives "
        "the mean over the seeds); the dotted vertical line is FAR = 0.1%, where "
        "TAR@FAR=1e-3 is 100% minus the curve's false-reject rate. With "
        f"{nontargets} non-target and {settings['target_trials']} target trials, "
        f"rates below {100 / max(min(nontargets, settings['target_trials']), 1):.2g}% "
        "cannot be measured."
    )
    texts = [
        ("unit_circle.png", "2-D embeddings on the unit circle, one panel per loss", circle),
        ("target_logit.png", "Target-logit curves psi(theta), one per loss", curves),
        ("scores.png", "Histograms of target and non-target scores, one panel per loss", scores),
        ("det.png", "DET curves of every loss on probit axes", det),
    ]
    calibration = settings["calibration"]
    if calibration is not None:
        texts.append(("calibration.png", "Normalised Bayes error rate of every loss after "
                      "calibration", calibration_caption(calibration, seed)))
    return texts


def calibration_caption(calibration: dict, seed: int) -> str:
    """The caption of the Bayes error-rate plot, from results["settings"]["calibration"]."""
    return (
        f"The calibration at seed {seed}: each loss's cosine scores mapped to log-likelihood "
        "ratios by a linear calibration (llr = a·score + b, least Cllr) fitted on the "
        f"{calibration['dev_trials']} trials among {calibration['dev_identities']} of the "
        "held-out identities, drawn on the "
        f"{calibration['eval_trials']} trials ({calibration['eval_target_trials']} target) "
        f"among the other {calibration['eval_identities']}. For each prior log-odds "
        "log(p / (1 − p)) on the x axis, the solid line is the actual DCF, deciding at the "
        "Bayes threshold the LLRs give, and the dashed line the minimum DCF over all "
        "thresholds, both normalised as minDCF; the gap between a loss's two lines is what "
        "its calibration loses at that prior. The dotted line at 1 is a system that ignores "
        "the trials; the grey verticals are the table's p_target 0.01 and 0.05."
    )


def _image(path: str | os.PathLike, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """A <table> of text cells."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _intervals_html(results: dict) -> str:
    """The report's section on the bootstrap intervals: how, why, and ``interval_rows``."""
    settings = results["settings"]
    resamples = settings["bootstrap"]["resamples"]
    return f"""<h2>Bootstrap intervals</h2>
<p>95% percentile intervals from {resamples} bootstrap resamples per seed of the held-out
identities ({settings["bootstrap"]["identities"]} at seed {settings["figure_seed"]}): each
resample draws that many identities with replacement and takes every trial whose first side
is a drawn identity, as often as it was drawn, since the trials of one identity are not
independent. Replicate r of a mean over the seeds is the mean of the seeds' replicates r, so
the interval is that of the mean in the table. The Δ intervals resample each seed's losses
alike (a paired bootstrap); {CI_MARK} marks those that exclude 0. The two marks answer two
questions: {MARK} whether a difference repeats from seed to seed, where each seed draws other
data, identities and initial weights (with few seeds, a weak test); {CI_MARK} whether it is
larger than the choice of held-out identities alone would make it, for the networks as trained
(it can mark with one seed, but it does not see the training's randomness).</p>
{html_table(*interval_rows(results))}
"""


def _held_out_html(settings: dict) -> str:
    """The report's paragraphs on how the calibration and the identification were done."""
    calibration = settings["calibration"]
    if calibration is None:
        calibrated = ("Calibration is n/a: one half of the held-out identities had no target "
                      "or no non-target trials (it needs at least 4 held-out identities).")
    else:
        calibrated = (
            "Calibration: the held-out identities are split in two halves. A linear "
            "calibration of each loss's cosine scores (llr = a·score + b, fitted to the least "
            f"Cllr) is fitted on the {calibration['dev_trials']} trials whose two sides are "
            f"among {calibration['dev_identities']} development identities and judged on the "
            f"{calibration['eval_trials']} trials among the other "
            f"{calibration['eval_identities']} (trials across the halves are not used). Cllr "
            "(bits) and actDCF (at the Bayes threshold of the LLRs) judge the calibrated "
            "scores; min Cllr and minDCF, on the same trials, are what the best calibration "
            "could give. Lower is better; the gap is what the calibration loses.")
    enrolled = settings["identification"]
    identified = (
        f"Identification: {enrolled['enrolled_identities']} of the {enrolled['identities']} "
        "held-out identities are enrolled with half of their samples "
        f"({enrolled['gallery_samples']} gallery samples, each identity's template their "
        f"mean); the {enrolled['mated_probes']} other samples of the enrolled identities are "
        f"mated probes and the {enrolled['non_mated_probes']} samples of the rest non-mated "
        "probes. rank-1: the fraction of mated probes whose own identity scores highest. "
        "TPIR@FPIR=1%: the fraction of mated probes found at rank 1 above the threshold that "
        "lets 1% of the non-mated probes through. Higher is better.")
    return f"<p>{html.escape(calibrated)}</p>\n<p>{html.escape(identified)}</p>"


def render_html(results: dict, figures: list[tuple[str, str, str | os.PathLike]]) -> str:
    """The report page: the data, the two tables of means ± std, the differences from the
    baseline, the bootstrap intervals, each (alt text, caption, PNG path) figure inline,
    every seed's numbers, the settings."""
    figures_html = "".join(
        f"<figure>{_image(path, alt)}<figcaption>{html.escape(caption)}</figcaption></figure>\n"
        for alt, caption, path in figures
    )
    settings = results["settings"]
    differences = ""
    if results["differences"]["losses"]:
        baseline = html.escape(results["differences"]["baseline"])
        differences = f"""<h2>Differences from {baseline}</h2>
<p>Each loss minus {baseline}, seed by seed (every loss of a seed has the same data, trials and
initial seed), then the mean ± sample standard deviation of those differences. {MARK} marks a
difference larger than its seed-to-seed spread: a two-sided paired t-test at 5%, that is
|mean| &gt; t(0.975, n − 1) · std / √n for n seeds. The pairing takes out what a seed does to
every loss alike, so a difference can be marked although the two losses' own ± overlap.
{CI_MARK} marks a difference whose 95% bootstrap interval excludes 0 (next section).</p>
{html_table(*difference_rows(results))}
{html_table(*difference_rows(results, HELD_OUT))}
"""
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
<p>The same network trained with each loss on {html.escape(data_summary(settings))}.</p>
<p>Accuracy (higher is better): closed-set top-1 on the held-back samples of the training
identities. EER and minDCF (normalised, C_miss = C_fa = 1, at p_target 0.01 and 0.05; lower is
better) and TAR at FAR = 0.1% (higher is better): open-set verification by the cosine of two
embeddings, on identities never seen in training. train s: wall-clock seconds of the training
loop on the machine that ran it. Each seed draws its own data, split, trials and initial
weights.</p>
{html_table(*table_rows(results))}
<h2>Calibration and identification</h2>
{_held_out_html(settings)}
{html_table(*table_rows(results, HELD_OUT))}
<p>{html.escape(table_note(results))}</p>
{differences}{_intervals_html(results)}<h2>Figures (seed {settings["figure_seed"]})</h2>
{figures_html}<h2>Every seed</h2>
{html_table(*per_seed_rows(results))}
{html_table(*per_seed_rows(results, HELD_OUT))}
<h2>Settings</h2>
<pre>{html.escape(json.dumps(settings, indent=2))}</pre>
</body></html>
"""


def write_html(
    path: str | os.PathLike, results: dict, figures: list[tuple[str, str, str | os.PathLike]]
) -> None:
    """The report page into ``path``, atomically (UTF-8)."""
    atomic_write_text(path, render_html(results, figures))
