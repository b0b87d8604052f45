"""`margin-softmax compare` in-process on a tiny configuration (a few seconds a run)."""

import base64
import json
import math
import re
import statistics
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pytest

from margin_softmax import report
from margin_softmax.cli.main import main
from margin_softmax.registry import DEFAULT_LOSSES

TINY = ["--identities", "12", "--samples-per-identity", "6", "--epochs", "2",
        "--epochs-2d", "2", "--trials", "200", "--quiet"]  # 3 seeds, the default
ONE_SEED = ["--num-seeds", "1"]
PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ("unit_circle.png", "target_logit.png", "scores.png", "det.png")
METRICS = ("accuracy", "eer", "min_dcf", "min_dcf_0.01", "min_dcf_0.05", "tar_at_far_1e-3")


def run(argv):
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


def without_timings(metrics):
    return {k: v for k, v in metrics.items() if not k.endswith("seconds")}


def numbers(results):
    """Every seed's numbers of results.json except the timings."""
    return {name: [without_timings(run) for run in m["per_seed"]]
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
        assert [run["seed"] for run in m["per_seed"]] == [0, 1, 2]
    settings = results["settings"]
    assert settings["seeds"] == [0, 1, 2] and settings["figure_seed"] == 0
    assert (settings["train_identities"], settings["held_out_identities"]) == (8, 4)
    assert settings["trials"] == 200 and settings["target_trials"] == 100
    assert settings["heads"]["arcface"]["margin"] == 0.3


def test_each_metric_is_the_mean_and_sample_std_of_its_seeds(first):
    results = json.loads((first / "results.json").read_text())
    for name, m in results["losses"].items():
        assert len(m["per_seed"]) == 3
        for key in (*METRICS, "train_seconds", "final_train_loss"):
            values = [run[key] for run in m["per_seed"]]
            assert m[key] == pytest.approx(statistics.fmean(values)), (name, key)
            assert m["std"][key] == pytest.approx(statistics.stdev(values)), (name, key)
        # the seeds draw other data: the spread is not zero
        assert len({run["eer"] for run in m["per_seed"]}) > 1 or m["eer"] in (0.0, 1.0)
    differences = results["differences"]
    assert differences["baseline"] == "softmax"
    assert differences["test"] == "two-sided paired t-test over the seeds at 5%"
    assert list(differences["losses"]) == list(DEFAULT_LOSSES[1:])
    arcface, softmax = results["losses"]["arcface"], results["losses"]["softmax"]
    d = [a["eer"] - b["eer"] for a, b in zip(arcface["per_seed"], softmax["per_seed"],
                                             strict=True)]
    assert differences["losses"]["arcface"]["eer"]["mean"] == pytest.approx(statistics.fmean(d))
    assert differences["losses"]["arcface"]["eer"]["std"] == pytest.approx(statistics.stdev(d))


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
        self.text = ""
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
        self.text += data
        if self.open and self.open[-1] in ("td", "th"):
            self.cells.append(data)
        elif self.open and self.open[-1] == "figcaption":
            self.captions.append(data)


def test_report_table_and_captions_are_this_runs(first):
    results = json.loads((first / "results.json").read_text())
    page = Page((first / "report.html").read_text())
    header, rows = report.table_rows(results)
    differences = report.difference_rows(results)
    every_seed = report.per_seed_rows(results)
    assert page.cells == [cell for table in ((header, rows), differences, every_seed)
                          for cell in table[0] + [c for row in table[1] for c in row]]
    softmax = results["losses"]["softmax"]
    assert rows[0][2] == f"{100 * softmax['eer']:.2f} ± {100 * softmax['std']['eer']:.2f}%"
    assert len(every_seed[1]) == 3 * len(DEFAULT_LOSSES)
    assert "over 3 seeds (0, 1, 2)" in page.text and "The figures show seed 0." in page.text
    assert len(set(page.alts)) == len(FIGURES)
    assert not any(alt.endswith(".png") for alt in page.alts)
    circle, curves, scores, det = page.captions
    assert "8 other synthetic identities × 100 samples" in circle  # the 2-D run's data
    assert "200 verification trials, 100 target" in scores and "4 identities" in scores
    assert "With 100 non-target and 100 target trials, rates below 1%" in det
    assert "annealing weight λ" in curves and "Not drawn" not in curves


def test_per_sample_margins_and_sub_centres_are_named_in_the_captions(tmp_path):
    out = tmp_path / "v"
    assert run(["compare", "--out", out, *TINY, *ONE_SEED, "--losses", "arcface", "magface",
                "subcenter-arcface"]) == 0
    circle, curves, _, _ = Page((out / "report.html").read_text()).captions
    assert "line per sub-centre" in circle
    assert curves.endswith("varies from sample to sample: magface.")
    assert "annealing" not in curves  # no SphereFace in this run


def test_same_seed_same_numbers_and_each_seed_is_its_own_run(first, tmp_path, capsys):
    assert run(["compare", "--out", tmp_path / "again", *TINY, "--losses", "softmax",
                "arcface"]) == 0
    printed = capsys.readouterr().out
    assert "softmax" in printed and "arcface" in printed and "EER" in printed
    rows = [line for line in printed.splitlines() if line.startswith(("softmax", "arcface"))]
    assert len(rows) == 2 and all(row.count(" ± ") == 6 for row in rows)
    flat = " ".join(printed.split())  # the note is wrapped to the table's width
    assert "over 3 seeds (0, 1, 2)" in flat and "The figures show seed 0." in flat
    a = json.loads((first / "results.json").read_text())
    b = json.loads((tmp_path / "again" / "results.json").read_text())
    assert numbers(b) == {name: numbers(a)[name] for name in ("softmax", "arcface")}
    # seed 1 alone (aliases and commas) repeats the second seed of the default run
    assert run(["compare", "--out", tmp_path / "seed", *TINY, "--seed", "1", *ONE_SEED,
                "--losses", "aam-softmax,cosface"]) == 0
    assert "One seed (1): no spread" in " ".join(capsys.readouterr().out.split())
    c = json.loads((tmp_path / "seed" / "results.json").read_text())
    assert list(c["losses"]) == ["arcface", "cosface"]
    assert numbers(c)["arcface"] == numbers(a)["arcface"][1:2]
    assert numbers(c)["arcface"] != numbers(a)["arcface"][:1]
    assert c["losses"]["arcface"]["std"]["eer"] is None
    assert c["differences"]["baseline"] == "arcface"  # no softmax: the first loss


def test_refuses_a_non_empty_folder_unless_forced(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    assert run(["compare", "--out", out, *TINY, *ONE_SEED, "--losses", "softmax"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert run(["compare", "--out", out, *TINY, *ONE_SEED, "--losses", "softmax",
                "--force"]) == 0
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "results.json").is_file()
    assert run(["compare", "--out", out / "notes.txt", *TINY]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_digits(tmp_path):
    args = ["--out", tmp_path / "d", "--dataset", "digits", "--losses", "cosface", "--epochs",
            "1", "--epochs-2d", "1", "--trials", "100", "--quiet"]
    assert run(["compare", *args]) == 0
    results = json.loads((tmp_path / "d" / "results.json").read_text())
    settings = results["settings"]
    assert (settings["dataset"], settings["train_identities"]) == ("digits", 7)
    # the digits are loaded once; each seed holds out other digits
    eers = [run["eer"] for run in results["losses"]["cosface"]["per_seed"]]
    assert len(eers) == 3 and len(set(eers)) == 3
    page = Page((tmp_path / "d" / "report.html").read_text())
    assert "the 7 training digits" in page.captions[0] and "synthetic" not in page.captions[0]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--losses", "arcface,magic"], "unknown loss 'magic'"),
        (["--epochs", "0"], "argument --epochs: expected a positive integer"),
        (["--dataset", "mnist"], "argument --dataset: invalid choice"),
        (["--seed", "x"], "argument --seed: expected an integer in [0, 18446744073709551615]"),
        (["--num-seeds", "0"], "argument --num-seeds: expected a positive integer, got '0'"),
        (["--seed", str(2**64 - 2), "--num-seeds", "3"], f"--seed {2**64 - 2} with --num-seeds "
         f"3: the last seed, {2**64}, is above {2**64 - 1}"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, fragment, capsys):
    assert run(["compare", *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_progress_bar_per_loss_and_seed_and_per_2d_run_as_the_docs_say(tmp_path, capsys):
    argv = [a for a in TINY if a != "--quiet"]
    assert run(["compare", "--out", tmp_path / "bars", *argv, "--num-seeds", "2",
                "--losses", "arcface", "cosface"]) == 0
    names = re.findall(r"^\r?([\w -]+?): +\d+%", capsys.readouterr().err, flags=re.M)
    expected = ["arcface seed 0", "cosface seed 0", "arcface seed 1", "cosface seed 1",
                "arcface 2-D seed 0", "cosface 2-D seed 0"]
    assert list(dict.fromkeys(names)) == expected
    docs = " ".join((Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text().split())
    assert "a progress bar per loss and seed (`arcface seed 1`)" in docs
    assert "one per loss for the 2-D run (`arcface 2-D seed 0`)" in docs
