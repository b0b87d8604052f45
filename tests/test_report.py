"""report: the table of means ± std with its marks, its note, and captions that name only the
losses of the run; on hand-made results."""

import re

import pytest

from margin_softmax import report
from margin_softmax.margins import Margin
from margin_softmax.registry import LOSSES


def spread(eer, eer_std, marked=False):
    """One loss's results: EER as given, the other columns fixed."""
    means = {"accuracy": 0.981, "eer": eer, "min_dcf_0.01": 0.2764, "min_dcf_0.05": 0.15,
             "tar_at_far_1e-3": 0.806, "train_seconds": 2.84}
    stds = {"accuracy": 0.004, "eer": eer_std, "min_dcf_0.01": 0.0123, "min_dcf_0.05": 0.01,
            "tar_at_far_1e-3": 0.021, "train_seconds": 0.15}
    return {**means, "std": stds}, {"mean": eer - 0.021, "std": 0.001, "marked": marked}


def results(seeds=(0, 1, 2)):
    softmax, _ = spread(0.021, 0.003)
    arcface, arc_eer = spread(0.0159, 0.0021, marked=True)
    cosface, cos_eer = spread(0.0169, 0.0040)
    unmarked = {"mean": 0.0, "std": 0.0, "marked": False}
    return {
        "losses": {"softmax": softmax, "arcface": arcface, "cosface": cosface},
        "differences": {"baseline": "softmax", "test": "the test", "losses": {
            "arcface": dict.fromkeys(report.COMPARED, unmarked) | {"eer": arc_eer},
            "cosface": dict.fromkeys(report.COMPARED, unmarked) | {"eer": cos_eer},
        }},
        "settings": {"seeds": list(seeds), "figure_seed": seeds[0]},
    }


def test_table_cells_are_mean_plus_minus_std_with_marks():
    header, rows = report.table_rows(results())
    assert header == ["loss", "accuracy", "EER", "minDCF(0.01)", "minDCF(0.05)",
                      "TAR@FAR=1e-3", "train s"]
    assert rows[0] == ["softmax", "98.1 ± 0.4%", "2.10 ± 0.30%", "0.276 ± 0.012",
                       "0.150 ± 0.010", "80.6 ± 2.1%", "2.8 ± 0.1"]
    assert rows[1][2] == "1.59 ± 0.21%*" and rows[2][2] == "1.69 ± 0.40%"
    header, rows = report.difference_rows(results())
    assert header[2] == "Δ EER" and [r[0] for r in rows] == ["arcface", "cosface"]
    assert rows[0][2] == "-0.51 ± 0.10%*" and rows[1][2] == "-0.41 ± 0.10%"


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
    assert single == "One seed (7): no spread, nothing marked. The figures show seed 7."


def settings(heads):
    return {"figure_seed": 3, "dataset": "synthetic", "classes_2d": 8, "samples_2d": 800,
            "train_2d": {"epochs": 60}, "heads": dict.fromkeys(heads, {}), "trials": 200,
            "target_trials": 100, "held_out_identities": 4}


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
    texts = report.figure_texts(settings(ran), margins)
    captions = " ".join(caption for _, _, caption in texts)
    named = [name for name, pattern in SPELLINGS.items() if pattern.search(captions)]
    assert set(named) <= set(ran), named
    circle, curves = texts[0][2], texts[1][2]
    assert ("Softmax has a bias" in circle) is ("softmax" in ran)
    assert all("seed 3" in caption for _, _, caption in texts)
    drawn = [m for m in margins.values() if m is not None]
    for text, parameter, none in PARAMETERS:  # only the margin parameters in use are explained
        assert (text in curves) is any(getattr(m, parameter) != none for m in drawn), text
