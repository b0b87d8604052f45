"""`margin-softmax compare` in-process on a tiny configuration (a few seconds a run)."""

import base64
import json
import math
import re
import statistics
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from margin_softmax import ape_plot, bootstrap, calibration, metrics, report, scoring
from margin_softmax.cli import compare, compare_held_out
from margin_softmax.cli.main import main
from margin_softmax.registry import DEFAULT_LOSSES

TINY = ["--identities", "12", "--samples-per-identity", "6", "--epochs", "2",
        "--epochs-2d", "2", "--trials", "200", "--resamples", "100", "--quiet"]  # 3 seeds
ONE_SEED = ["--num-seeds", "1"]
PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ("unit_circle.png", "target_logit.png", "scores.png", "det.png", "calibration.png")
METRICS = ("accuracy", "eer", "min_dcf", "min_dcf_0.01", "min_dcf_0.05", "tar_at_far_1e-3")
HELD_OUT = ("cllr", "min_cllr", "act_dcf_0.01", "act_dcf_0.05", "eval_min_dcf_0.01",
            "eval_min_dcf_0.05", "rank1", "tpir@0.01")


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
def spied(tmp_path_factory):
    """The default 3 seeds of TINY, and what compare computed from: each seed's Split, the
    held-out embeddings of each seed and loss (in that order), the calibration figure's
    systems."""
    out = tmp_path_factory.mktemp("compare") / "run"
    seen = {"splits": [], "embeddings": []}
    draw, identify, plot = compare.draw_split, compare_held_out.identify, \
        ape_plot.bayes_error_plot

    def draw_spy(*args):
        seen["splits"].append(draw(*args))
        return seen["splits"][-1]

    def identify_spy(embeddings, *args):
        seen["embeddings"].append(embeddings.copy())
        return identify(embeddings, *args)

    def plot_spy(systems, *args, **kwargs):
        seen["figure"] = systems
        return plot(systems, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compare, "draw_split", draw_spy)
        patch.setattr(compare_held_out, "identify", identify_spy)
        patch.setattr(ape_plot, "bayes_error_plot", plot_spy)
        assert run(["compare", "--out", out, *TINY]) == 0
    return out, seen


@pytest.fixture(scope="module")
def first(spied):
    return spied[0]


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
        for key in (*METRICS, *HELD_OUT, "train_seconds", "final_train_loss"):
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
    assert set(differences["losses"]["arcface"]) == set(report.COMPARED)  # with the new ones


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force_identification(emb, labels, gallery):
    """rank-1 and TPIR at FPIR = 1 % with tiny loops: templates the normalised mean of each
    enrolled identity's unit gallery rows; every other row a probe."""
    enrolled = sorted(set(labels[gallery]))
    templates = unit(np.array([unit(emb[gallery & (labels == k)]).mean(axis=0)
                               for k in enrolled]))
    probes = np.flatnonzero(~gallery)
    scores = unit(emb[probes]) @ templates.T  # (P, G)
    best = [enrolled[k] for k in scores.argmax(axis=1)]
    top = scores.max(axis=1)
    mated = np.isin(labels[probes], enrolled)
    hits = np.array([b == y for b, y in zip(best, labels[probes], strict=True)]) & mated
    non_top = sorted(top[~mated], reverse=True)
    bar = non_top[math.floor(0.01 * len(non_top))]  # 1 % of the non-mated may pass
    return hits.sum() / mated.sum(), (hits & (top > bar)).sum() / mated.sum()


def test_calibration_identification_and_intervals_are_the_librarys_on_the_same_embeddings(
        spied):
    out, seen = spied
    results = json.loads((out / "results.json").read_text())
    losses = list(results["losses"])
    resamples = results["settings"]["bootstrap"]["resamples"]
    assert resamples == 100  # --resamples
    replicates = {name: [] for name in ("softmax", "arcface")}
    for s, split in enumerate(seen["splits"]):
        i, j, target = split.trials
        labels = split.held_out_labels
        # the halves: 2 of the 4 held-out identities each; a trial is in a half when both its
        # sides are, and trials across the halves are in neither
        halves = [set(labels[i[m]]) | set(labels[j[m]]) for m in (split.dev_trials,
                                                                  split.eval_trials)]
        assert [len(h) for h in halves] == [2, 2] and not halves[0] & halves[1]
        for mask, half in zip((split.dev_trials, split.eval_trials), halves, strict=True):
            ids = list(half)
            assert (mask == (np.isin(labels[i], ids) & np.isin(labels[j], ids))).all()
        # the gallery: 2 of the 4 identities, each with 3 of its 6 samples
        enrolled, counts = np.unique(labels[split.gallery], return_counts=True)
        assert enrolled.size == 2 and counts.tolist() == [3, 3]
        for k, name in enumerate(losses):
            emb = seen["embeddings"][s * len(losses) + k]
            run_ = results["losses"][name]["per_seed"][s]
            scores = scoring.pair_cosines(emb, i, j)
            assert run_["eer"] == metrics.eer(scores, target)  # the embeddings of this run
            fitted = calibration.fit(scores[split.dev_trials], target[split.dev_trials])
            llr, y = fitted.apply(scores[split.eval_trials]), target[split.eval_trials]
            assert run_["cllr"] == pytest.approx(calibration.cllr(llr, y))
            assert run_["min_cllr"] == pytest.approx(calibration.min_cllr(llr, y))
            for p in (0.01, 0.05):
                assert run_[f"act_dcf_{p}"] == pytest.approx(calibration.act_dcf(llr, y, p))
                assert run_[f"eval_min_dcf_{p}"] == pytest.approx(
                    metrics.min_dcf(scores[split.eval_trials], y, p))
            assert [run_["rank1"], run_["tpir@0.01"]] == pytest.approx(
                brute_force_identification(emb, labels, split.gallery))
            if s == 0:  # the calibration figure draws seed 0's calibrated LLRs
                drawn_llr, drawn_y = seen["figure"][name]
                assert drawn_llr == pytest.approx(llr) and (drawn_y == y).all()
            if name in replicates:
                replicates[name].append(bootstrap.replicates(
                    scores, target, groups=labels[i], p_targets=(0.01, 0.05), fars=(),
                    resamples=resamples, seed=results["settings"]["seeds"][s]))
    assert list(seen["figure"]) == losses

    def pooled(values):  # the interval of the mean over the seeds
        return np.quantile(np.mean(values, axis=0), [0.025, 0.975])

    difference = results["differences"]["losses"]["arcface"]
    for key in ("eer", "min_dcf_0.01", "min_dcf_0.05"):
        for name in replicates:
            assert results["losses"][name]["ci"][key] == pytest.approx(
                pooled([r[key] for r in replicates[name]]))
        low, high = pooled([a[key] - b[key] for a, b in zip(
            replicates["arcface"], replicates["softmax"], strict=True)])
        assert difference[key]["ci"] == pytest.approx([low, high])
        assert difference[key]["ci_marked"] is bool(low > 0 or high < 0)
    assert "ci" not in difference["accuracy"] and "ci" not in difference["cllr"]


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
    assert base64.b64decode(images[-1]) == (first / "calibration.png").read_bytes()
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
    tables = [(header, rows), report.table_rows(results, report.HELD_OUT),
              report.difference_rows(results), report.difference_rows(results, report.HELD_OUT),
              report.interval_rows(results), report.per_seed_rows(results),
              report.per_seed_rows(results, report.HELD_OUT)]
    every_seed = tables[5]
    assert page.cells == [cell for table in tables  # the baseline's Δ intervals are blank
                          for cell in table[0] + [c for row in table[1] for c in row] if cell]
    softmax = results["losses"]["softmax"]
    assert rows[0][2] == f"{100 * softmax['eer']:.2f} ± {100 * softmax['std']['eer']:.2f}%"
    assert len(every_seed[1]) == 3 * len(DEFAULT_LOSSES)
    assert "over 3 seeds (0, 1, 2)" in page.text and "The figures show seed 0." in page.text
    assert len(set(page.alts)) == len(FIGURES)
    assert not any(alt.endswith(".png") for alt in page.alts)
    circle, curves, scores, det, calibrated = page.captions
    assert "8 other synthetic identities × 100 samples" in circle  # the 2-D run's data
    assert "200 verification trials, 100 target" in scores and "4 identities" in scores
    assert "With 100 non-target and 100 target trials, rates below 1%" in det
    assert "annealing weight λ" in curves and "Not drawn" not in curves
    halves = results["settings"]["calibration"]
    assert (f"fitted on the {halves['dev_trials']} trials among 2 of the held-out identities, "
            f"drawn on the {halves['eval_trials']} trials ({halves['eval_target_trials']} "
            "target) among the other 2") in calibrated
    assert "Bootstrap intervals" in page.text and "100 bootstrap resamples" in page.text


def test_per_sample_margins_and_sub_centres_are_named_in_the_captions(tmp_path):
    out = tmp_path / "v"
    assert run(["compare", "--out", out, *TINY, *ONE_SEED, "--losses", "arcface", "magface",
                "subcenter-arcface"]) == 0
    circle, curves, *_ = Page((out / "report.html").read_text()).captions
    assert "line per sub-centre" in circle
    assert curves.endswith("varies from sample to sample: magface.")
    assert "annealing" not in curves  # no SphereFace in this run


def test_same_seed_same_numbers_and_each_seed_is_its_own_run(first, tmp_path, capsys):
    assert run(["compare", "--out", tmp_path / "again", *TINY, "--losses", "softmax",
                "arcface"]) == 0
    printed = capsys.readouterr().out
    assert "softmax" in printed and "arcface" in printed and "EER" in printed
    rows = [line for line in printed.splitlines() if line.startswith(("softmax", "arcface"))]
    assert len(rows) == 4 and all(row.count(" ± ") == 6 for row in rows)  # two tables
    tables = printed.rsplit("\n\n", 1)[0]  # the two tables and the note
    assert max(map(len, tables.splitlines())) <= 100
    assert tables.split("\n\n")[1].split()[:8] == [
        "loss", "Cllr", "min", "Cllr", "actDCF(0.01)", "minDCF(0.01)", "rank-1", "TPIR@FPIR=1%"]
    flat = " ".join(printed.split())  # the note is wrapped to the table's width
    assert "over 3 seeds (0, 1, 2)" in flat and "The figures show seed 0." in flat
    a = json.loads((first / "results.json").read_text())
    b = json.loads((tmp_path / "again" / "results.json").read_text())
    # the marks of arcface's EER cell are the ones results.json gives
    eer = b["differences"]["losses"]["arcface"]["eer"]
    marks = ("*" if eer["marked"] else "") + ("†" if eer["ci_marked"] else "")
    assert rows[1].split()[6].endswith("%" + marks)  # loss, accuracy (3 words), EER
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
    # 3 held-out digits cannot make two halves with non-target trials in each: no calibration
    # (null, n/a, no figure); identification enrols 2 of the 3
    assert settings["calibration"] is None and results["losses"]["cosface"]["cllr"] is None
    assert not (tmp_path / "d" / "calibration.png").exists() and len(page.captions) == 4
    assert "Calibration is n/a" in page.text and "n/a" in page.cells
    assert settings["identification"]["enrolled_identities"] == 2
    assert 0 <= results["losses"]["cosface"]["rank1"] <= 1


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--losses", "arcface,magic"], "unknown loss 'magic'"),
        (["--epochs", "0"], "argument --epochs: expected a positive integer"),
        (["--dataset", "mnist"], "argument --dataset: invalid choice"),
        (["--seed", "x"], "argument --seed: expected an integer in [0, 18446744073709551615]"),
        (["--num-seeds", "0"], "argument --num-seeds: expected a positive integer, got '0'"),
        (["--resamples", "0"], "argument --resamples: expected a positive integer, got '0'"),
        (["--seed", str(2**64 - 2), "--num-seeds", "3"], f"--seed {2**64 - 2} with --num-seeds "
         f"3: the last seed, {2**64}, is above {2**64 - 1}"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, fragment, capsys):
    assert run(["compare", *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err


def test_too_few_trials_for_the_bootstrap_is_one_line_naming_trials(tmp_path, capsys):
    # 2 trials, 1 target: a resample of their 2 identities can miss the target
    assert run(["compare", "--out", tmp_path / "t", *TINY, *ONE_SEED, "--losses", "softmax",
                "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert "--trials 2: too few for the bootstrap intervals; at seed 0 a resample" in err
    assert err.count("\n") == 1 and "Traceback" not in err


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
