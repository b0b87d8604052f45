"""report: the table of means ± std with its marks, its note, and captions that name only the
losses of the run; on hand-made results."""

import re

import pytest

from margin_softmax import captions, report
from margin_softmax.margins import Margin
from margin_softmax.registry import LOSSES


def spread(eer, eer_std, marked=False, ci_marked=False):
    """One loss's results: EER as given, the other columns fixed."""
    means = {"accuracy": 0.981, "eer": eer, "min_dcf_0.01": 0.2764, "min_dcf_0.05": 0.15,
             "tar_at_far_1e-3": 0.806, "train_seconds": 2.84, "cllr": 0.1234,
             "min_cllr": 0.1, "act_dcf_0.01": 0.3, "eval_min_dcf_0.01": 0.28, "rank1": 0.955,
             "tpir@0.01": 0.72}
    stds = {"accuracy": 0.004, "eer": eer_std, "min_dcf_0.01": 0.0123, "min_dcf_0.05": 0.01,
            "tar_at_far_1e-3": 0.021, "train_seconds": 0.15, "cllr": 0.0101, "min_cllr": 0.01,
            "act_dcf_0.01": 0.02, "eval_min_dcf_0.01": 0.01, "rank1": 0.012, "tpir@0.01": 0.03}
    ci = {"eer": [eer - 0.002, eer + 0.003], "min_dcf_0.01": [0.25, 0.3],
          "min_dcf_0.05": [0.14, 0.16]}
    return {**means, "std": stds, "ci": ci}, {
        "mean": eer - 0.021, "std": 0.001, "marked": marked, "ci": [-0.0081, -0.0002],
        "ci_marked": ci_marked}


def results(seeds=(0, 1, 2), calibrated=True):
    softmax, _ = spread(0.021, 0.003)
    arcface, arc_eer = spread(0.0159, 0.0021, marked=True, ci_marked=True)
    cosface, cos_eer = spread(0.0169, 0.0040, ci_marked=True)
    unmarked = {"mean": 0.0, "std": 0.0, "marked": False}
    boot = {"ci": [-0.01, 0.02], "ci_marked": False}
    others = dict.fromkeys(report.COMPARED, unmarked) | dict.fromkeys(
        ("min_dcf_0.01", "min_dcf_0.05"), unmarked | boot)
    return {
        "losses": {"softmax": softmax, "arcface": arcface, "cosface": cosface},
        "differences": {"baseline": "softmax", "test": "the test", "ci_test": "the interval",
                        "losses": {"arcface": others | {"eer": arc_eer},
                                   "cosface": others | {"eer": cos_eer}}},
        "settings": {
            "seeds": list(seeds), "figure_seed": seeds[0],
            "calibration": {"dev_identities": 150, "eval_identities": 150,
                            "dev_trials": 4990, "eval_trials": 5010} if calibrated else None,
            "identification": {"enrolled_identities": 150, "identities": 300},
        },
    }


def test_table_cells_are_mean_plus_minus_std_with_marks():
    header, rows = report.table_rows(results())
    assert header == ["loss", "accuracy", "EER", "minDCF(0.01)", "minDCF(0.05)",
                      "TAR@FAR=1e-3", "train s"]
    assert rows[0] == ["softmax", "98.1 ± 0.4%", "2.10 ± 0.30%", "0.276 ± 0.012",
                       "0.150 ± 0.010", "80.6 ± 2.1%", "2.8 ± 0.1"]
    header, rows = report.difference_rows(results())
    assert header[2] == "Δ EER" and [r[0] for r in rows] == ["arcface", "cosface"]
    assert rows[0][2] == "-0.51 ± 0.10%*†" and rows[1][2] == "-0.41 ± 0.10%†"
    header, rows = report.difference_rows(results(), report.HELD_OUT)
    assert header == ["loss", "Δ Cllr", "Δ min Cllr", "Δ actDCF(0.01)", "Δ minDCF(0.01)",
                      "Δ rank-1", "Δ TPIR@FPIR=1%"]


def test_printed_table_lines_up_the_numbers_of_marked_and_unmarked_cells():
    lines = report.format_table(results()).splitlines()
    assert len(lines) == 5 and set(lines[1]) == {"-", " "}
    ends = {line.index("%", line.index("±") + 1) for line in lines[2:]}  # the accuracy column
    assert len(ends) == 1
    eer = [re.search(r"\d\.\d\d ± \d\.\d\d%", line).end() for line in lines[2:]]
    assert len(set(eer)) == 1 and lines[3][eer[1]] == "*" and lines[2][eer[0]] == " "


def test_note_names_the_std_the_test_the_baseline_and_the_figures_seed():
    note = report.table_note(results())
    assert "sample standard deviation (ddof=1) over 3 seeds (0, 1, 2)" in note
    assert "* differs from softmax by more than the seed-to-seed spread (the test)." in note
    assert note.endswith("The figures show seed 0.")
    single = report.table_note(results(seeds=(7,)))
    assert single.startswith("One seed (7): no spread, so no *. † (EER, minDCF): against")
    assert single.endswith("The figures show seed 7.")


def test_note_says_what_dagger_means_and_where_the_second_table_comes_from():
    note = report.table_note(results())
    assert ("† (EER, minDCF): against softmax, the interval; it holds the trained networks "
            "fixed, so only * covers what changes between seeds.") in note
    assert "on the 5010 trials among 150 held-out identities, calibrated on the 4990" in note
    assert "150 of the 300 held-out identities enrolled with half their samples" in note
    assert "Calibration n/a" in report.table_note(results(calibrated=False))


def test_second_table_and_both_marks():
    header, rows = report.table_rows(results(), report.HELD_OUT)
    assert header == ["loss", "Cllr", "min Cllr", "actDCF(0.01)", "minDCF(0.01)", "rank-1",
                      "TPIR@FPIR=1%"]
    assert rows[0] == ["softmax", "0.123 ± 0.010", "0.100 ± 0.010", "0.300 ± 0.020",
                       "0.280 ± 0.010", "95.5 ± 1.2%", "72.0 ± 3.0%"]
    _, rows = report.table_rows(results())
    assert [row[2] for row in rows] == ["2.10 ± 0.30%", "1.59 ± 0.21%*†", "1.69 ± 0.40%†"]
    lines = report.format_table(results()).splitlines()
    # the two marks keep their own places, so the numbers line up and † sits under †
    after_eer = [re.search(r"\d\.\d\d ± \d\.\d\d%(..)", line).group(1) for line in lines[2:]]
    assert after_eer == ["  ", "*†", " †"]
    assert max(map(len, lines)) <= 100
    second = report.format_table(results(), report.HELD_OUT).splitlines()
    assert second[0].split()[1:4] == ["Cllr", "min", "Cllr"] and len(second) == 5


def test_a_metric_not_measured_shows_n_a():
    r = results()
    r["losses"]["softmax"]["cllr"] = r["losses"]["softmax"]["std"]["cllr"] = None
    _, rows = report.table_rows(r, report.HELD_OUT)
    assert rows[0][1] == "n/a"


def test_interval_rows_give_each_interval_and_the_difference_from_softmax():
    header, rows = report.interval_rows(results())
    assert header == ["loss", "EER", "minDCF(0.01)", "minDCF(0.05)", "Δ EER",
                      "Δ minDCF(0.01)", "Δ minDCF(0.05)"]
    assert rows[0] == ["softmax", "1.90% to 2.40%", "0.250 to 0.300", "0.140 to 0.160", "", "",
                       ""]
    assert rows[1][4:] == ["-0.81% to -0.02%†", "-0.010 to +0.020", "-0.010 to +0.020"]


def settings(heads, calibration=None):
    return {"figure_seed": 3, "dataset": "synthetic", "classes_2d": 8, "samples_2d": 800,
            "train_2d": {"epochs": 60}, "heads": dict.fromkeys(heads, {}), "trials": 200,
            "target_trials": 100, "held_out_identities": 4, "calibration": calibration}


def test_the_calibration_figure_comes_with_the_calibration_and_says_its_trials():
    assert [name for name, *_ in captions.figure_texts(settings(["arcface"]), {})] == [
        "unit_circle.png", "target_logit.png", "scores.png", "det.png"]
    calibration = {"dev_identities": 2, "eval_identities": 2, "dev_trials": 40,
                   "eval_trials": 52, "eval_target_trials": 30}
    name, alt, caption = captions.figure_texts(settings(["arcface"], calibration), {})[-1]
    assert name == "calibration.png" and "Bayes error rate" in alt
    assert "fitted on the 40 trials among 2 of the held-out identities" in caption
    assert "drawn on the 52 trials (30 target) among the other 2" in caption


# every registered name that a caption could spell, in any case ("ArcFace", "arcface")
SPELLINGS = {name: re.compile(rf"(?<![a-z]){name}(?![a-z])", re.I) for name in LOSSES}
PARAMETERS = (("m1 multiplies", "m1", 1.0), ("m2 shifts", "m2", 0.0), ("m3 lowers", "m3", 0.0))


@pytest.mark.parametrize("margins", [
    {"cosface (m3=0.3)": Margin(m3=0.3)},
    {"arcface (m2=0.3)": Margin(m2=0.3, fallback="seed"), "magface": None},
    {"softmax": Margin(), "sphereface (m1=4, λ=5)": Margin(m1=4.0, blend=5.0,
                                                            fallback="piecewise")},
])
def test_captions_name_only_the_losses_that_ran(margins):
    ran = [label.split(" ")[0] for label in margins]
    texts = captions.figure_texts(settings(ran), margins)
    words = " ".join(caption for _, _, caption in texts)
    named = [name for name, pattern in SPELLINGS.items() if pattern.search(words)]
    assert set(named) <= set(ran), named
    circle, curves = texts[0][2], texts[1][2]
    assert ("Softmax has a bias" in circle) is ("softmax" in ran)
    assert all("seed 3" in caption for _, _, caption in texts)
    drawn = [m for m in margins.values() if m is not None]
    for text, parameter, none in PARAMETERS:  # only the margin parameters in use are explained
        assert (text in curves) is any(getattr(m, parameter) != none for m in drawn), text
