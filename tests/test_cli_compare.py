"""`margin-softmax compare` in-process on a tiny configuration (a few seconds a run)."""

import base64
import json
import math
import re
from html.parser import HTMLParser

import matplotlib.image
import pytest

from margin_softmax import report
from margin_softmax.cli.main import main
from margin_softmax.registry import DEFAULT_LOSSES

TINY = ["--identities", "12", "--samples-per-identity", "6", "--epochs", "2",
        "--epochs-2d", "2", "--trials", "200", "--quiet"]
PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ("unit_circle.png", "target_logit.png", "scores.png", "det.png")
METRICS = ("accuracy", "eer", "min_dcf", "min_dcf_0.01", "min_dcf_0.05", "tar_at_far_1e-3")


def run(argv):
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


def numbers(results):
    """Every number of results.json except the timings."""
    return {name: {k: v for k, v in m.items() if not k.endswith("seconds")}
            for name, m in results["losses"].items()}


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "run"
    assert run(["compare", "--out", out, *TINY]) == 0
    return out


def test_results_json_has_every_loss_with_metrics_in_0_1(first):
    results = json.loads((first / "results.json").read_text())
    assert list(results["losses"]) == list(DEFAULT_LOSSES)
    for name, m in results["losses"].items():
        for key in METRICS:
            assert math.isfinite(m[key]) and 0.0 <= m[key] <= 1.0, (name, key, m[key])
        assert m["min_dcf"] == m["min_dcf_0.01"]
        assert m["train_seconds"] > 0
    settings = results["settings"]
    assert (settings["train_identities"], settings["held_out_identities"]) == (8, 4)
    assert settings["trials"] == 200 and settings["target_trials"] == 100
    assert settings["heads"]["arcface"]["margin"] == 0.3


def test_pngs_are_valid_images(first):
    for name in FIGURES:
        raw = (first / name).read_bytes()
        assert raw.startswith(PNG), name
        height, width = matplotlib.image.imread(first / name).shape[:2]
        assert height > 200 and width > 200, name


def test_report_is_self_contained(first):
    page = (first / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(FIGURES)
    assert all(base64.b64decode(b).startswith(PNG) for b in images)
    assert "http" not in page.replace("<!DOCTYPE html>", "")
    for name in DEFAULT_LOSSES:
        assert f"<td>{name}</td>" in page


class Page(HTMLParser):
    """The table cells, figure captions and image alt texts of a page; fails on a tag closed
    out of order or left open."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self, text):
        super().__init__()
        self.open, self.cells, self.captions, self.alts = [], [], [], []
        self.feed(text)
        self.close()
        assert self.open == [], f"unclosed tags {self.open}"

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.alts.append(dict(attrs)["alt"])
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, (tag, self.open)
        self.open.pop()

    def handle_data(self, data):
        if self.open and self.open[-1] in ("td", "th"):
            self.cells.append(data)
        elif self.open and self.open[-1] == "figcaption":
            self.captions.append(data)


def test_report_table_and_captions_are_this_runs(first):
    results = json.loads((first / "results.json").read_text())
    page = Page((first / "report.html").read_text())
    header, rows = report.table_rows(results)
    assert page.cells == header + [cell for row in rows for cell in row]
    assert rows[0][2] == f"{100 * results['losses']['softmax']['eer']:.2f}%"
    assert len(set(page.alts)) == len(FIGURES)
    assert not any(alt.endswith(".png") for alt in page.alts)
    circle, curves, scores, det = page.captions
    assert "8 other synthetic identities × 100 samples" in circle  # the 2-D run's data
    assert "200 verification trials, 100 target" in scores and "4 identities" in scores
    assert "With 100 non-target and 100 target trials, rates below 1%" in det
    assert "annealing weight λ" in curves and "Not drawn" not in curves


def test_per_sample_margins_and_sub_centres_are_named_in_the_captions(tmp_path):
    out = tmp_path / "v"
    assert run(["compare", "--out", out, *TINY, "--losses", "arcface", "magface",
                "subcenter-arcface"]) == 0
    circle, curves, _, _ = Page((out / "report.html").read_text()).captions
    assert "line per sub-centre" in circle
    assert curves.endswith("varies from sample to sample: magface.")
    assert "annealing" not in curves  # no SphereFace in this run


def test_same_seed_same_numbers_other_seed_other_numbers(first, tmp_path, capsys):
    assert run(["compare", "--out", tmp_path / "again", *TINY]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in DEFAULT_LOSSES) and "EER" in table
    a = json.loads((first / "results.json").read_text())
    b = json.loads((tmp_path / "again" / "results.json").read_text())
    assert numbers(a) == numbers(b)
    # aliases and commas; another seed draws other data and weights
    assert run(["compare", "--out", tmp_path / "seed", *TINY, "--seed", "1",
                "--losses", "aam-softmax,cosface"]) == 0
    c = json.loads((tmp_path / "seed" / "results.json").read_text())
    assert list(c["losses"]) == ["arcface", "cosface"]
    assert numbers(c)["arcface"] != numbers(a)["arcface"]


def test_refuses_a_non_empty_folder_unless_forced(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    assert run(["compare", "--out", out, *TINY, "--losses", "softmax"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert run(["compare", "--out", out, *TINY, "--losses", "softmax", "--force"]) == 0
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "results.json").is_file()
    assert run(["compare", "--out", out / "notes.txt", *TINY]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_digits(tmp_path):
    args = ["--out", tmp_path / "d", "--dataset", "digits", "--losses", "cosface", "--epochs",
            "1", "--epochs-2d", "1", "--trials", "100", "--quiet"]
    assert run(["compare", *args]) == 0
    settings = json.loads((tmp_path / "d" / "results.json").read_text())["settings"]
    assert (settings["dataset"], settings["train_identities"]) == ("digits", 7)
    page = Page((tmp_path / "d" / "report.html").read_text())
    assert "the 7 training digits" in page.captions[0] and "synthetic" not in page.captions[0]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--losses", "arcface,magic"], "unknown loss 'magic'"),
        (["--epochs", "0"], "argument --epochs: expected a positive integer"),
        (["--dataset", "mnist"], "argument --dataset: invalid choice"),
        (["--seed", "x"], "argument --seed: expected an integer in [0, 18446744073709551615]"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, fragment, capsys):
    assert run(["compare", *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
