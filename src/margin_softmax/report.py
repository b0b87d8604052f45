"""How compare's results are shown: two plain-text tables for the terminal (verification,
then calibration and identification) and a self-contained HTML report (figures embedded as
base64 PNG data URIs, so the one file can be mailed or opened offline).

``results`` is the dict written to results.json: {"losses": {name: {"accuracy": mean over
the seeds, ..., "std": {...}, "ci": {metric: [low, high]}, "per_seed": [...]}},
"differences": {"baseline": name, "test", "ci_test", "losses": {name: {metric: {"mean",
"std", "marked"} and, for the bootstrapped metrics, "ci", "ci_marked"}}}, "settings": {...}}
(see seed_spread and cli.compare_held_out). The figures' captions: captions.py.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from .atomic_files import atomic_write_text
from .captions import data_summary

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
