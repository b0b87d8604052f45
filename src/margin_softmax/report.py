"""How compare's results are shown: a plain-text table for the terminal and a self-contained
HTML report (figures embedded as base64 PNG data URIs, so the one file can be mailed or
opened offline).

``results`` is the dict written to results.json:
{"losses": {name: {"accuracy": ..., "eer": ..., ...}}, "settings": {...}}.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

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


def _image(path: str | os.PathLike) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).name)}">'


def render_html(results: dict, figures: list[tuple[str, str | os.PathLike]]) -> str:
    """The report page: the table, each (caption, PNG path) figure inline, the settings."""
    header, rows = table_rows(results)
    head_html = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body_html = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    figures_html = "".join(
        f"<figure>{_image(path)}<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, path in figures
    )
    settings = html.escape(json.dumps(results.get("settings", {}), indent=2))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>margin-softmax compare</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 0.3em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
figure {{ margin: 2em 0; }}
pre {{ background: #f6f6f6; padding: 1em; }}
</style></head><body>
<h1>margin-softmax compare</h1>
<p>The same network trained with each loss. Accuracy: closed-set top-1 on held-back samples
of the training identities. EER, minDCF (normalised, at p_target 0.01 and 0.05) and TAR at
FAR = 0.1%: open-set verification by cosine score on identities never seen in training.</p>
<table><thead><tr>{head_html}</tr></thead><tbody>{body_html}</tbody></table>
{figures_html}
<h2>Settings</h2>
<pre>{settings}</pre>
</body></html>
"""


def write_html(
    path: str | os.PathLike, results: dict, figures: list[tuple[str, str | os.PathLike]]
) -> None:
    Path(path).write_text(render_html(results, figures), encoding="utf-8")
