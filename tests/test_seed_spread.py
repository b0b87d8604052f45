"""seed_spread: the mean, the sample std and the paired-t marking rule, on numbers worked out
by hand."""

import math
import statistics

import numpy as np
import pytest

from margin_softmax import seed_spread


def test_mean_and_sample_std():
    # 1, 2, 6: mean 3; squared deviations 4 + 1 + 9 = 14, divided by n - 1 = 2: std sqrt(7)
    mean, std = seed_spread.mean_and_std([1.0, 2.0, 6.0])
    assert mean == pytest.approx(3.0) and std == pytest.approx(math.sqrt(7))
    assert seed_spread.mean_and_std([0.25]) == (0.25, None)  # one seed: no spread
    with pytest.raises(ValueError, match="non-empty"):
        seed_spread.mean_and_std([])


@pytest.mark.parametrize("a, b, marked", [
    # d = 2, 2.5, 3: mean 2.5, sd 0.5, t = 2.5 / (0.5 / sqrt 3) = 8.66 > t(0.975, 2) = 4.303
    ([2.0, 2.5, 3.0], [0.0, 0.0, 0.0], True),
    # d = 1, 2, 3: mean 2, sd 1, t = 3.46 < 4.303 (the rule |mean| > 2 sd / sqrt(n) would mark it)
    ([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], False),
    # each seed moves both losses a lot, the difference is always 0.1: sd(d) = 0, marked;
    # unpaired, the spreads (sd 1) would hide it
    ([1.1, 2.1, 3.1], [1.0, 2.0, 3.0], True),
    # d = -0.5, 0.5, 0: mean 0
    ([1.0, 2.0, 3.0], [1.5, 1.5, 3.0], False),
    # identical results: nothing to mark
    ([0.2, 0.3, 0.4], [0.2, 0.3, 0.4], False),
    # 5 seeds, d = 1, 1, 1, 1, 3: mean 1.4, sd 0.894, t = 3.50 > t(0.975, 4) = 2.776
    ([1.0, 1.0, 1.0, 1.0, 3.0], [0.0] * 5, True),
    # 3 seeds, d = 1, 1, 3: mean 1.667, sd 1.155, t = 2.50 < 4.303
    ([1.0, 1.0, 3.0], [0.0] * 3, False),
    # one seed: no spread, never marked
    ([5.0], [0.0], False),
])
def test_paired_difference_marks_by_the_paired_t_test(a, b, marked):
    result = seed_spread.paired_difference(a, b)
    d = [x - y for x, y in zip(a, b, strict=True)]
    assert result["marked"] is marked
    assert result["mean"] == pytest.approx(statistics.fmean(d))
    assert result["std"] == (pytest.approx(statistics.stdev(d)) if len(d) > 1 else None)


def test_summarise_and_differences_keep_every_seed():
    runs = {
        "softmax": [{"seed": 4, "eer": 0.03, "accuracy": 0.9},
                    {"seed": 5, "eer": 0.05, "accuracy": 0.8}],
        "arcface": [{"seed": 4, "eer": 0.02, "accuracy": 0.9},
                    {"seed": 5, "eer": 0.04, "accuracy": 0.8}],
    }
    summary = seed_spread.summarise(runs["arcface"])
    assert summary["eer"] == pytest.approx(0.03) and summary["accuracy"] == pytest.approx(0.85)
    assert summary["std"]["eer"] == pytest.approx(math.sqrt(2) * 0.01)
    assert summary["per_seed"] == runs["arcface"]
    diff = seed_spread.differences(runs, "softmax", ["eer", "accuracy"])
    assert list(diff) == ["arcface"]
    assert diff["arcface"]["eer"] == {"mean": pytest.approx(-0.01), "std": pytest.approx(0),
                                      "marked": True}
    assert diff["arcface"]["accuracy"] == {"mean": 0.0, "std": 0.0, "marked": False}
    runs["arcface"][1]["seed"] = 6
    with pytest.raises(ValueError, match=r"arcface's seeds \[4, 6\] are not softmax's \[4, 5\]"):
        seed_spread.differences(runs, "softmax", ["eer"])


def test_a_metric_a_seed_could_not_measure_has_no_mean_and_is_not_marked():
    assert seed_spread.mean_and_std([0.2, None, 0.4]) == (None, None)
    summary = seed_spread.summarise([{"seed": 0, "cllr": None, "eer": 0.1},
                                     {"seed": 1, "cllr": None, "eer": 0.3}])
    assert summary["cllr"] is None and summary["std"]["cllr"] is None
    assert summary["eer"] == pytest.approx(0.2)
    assert seed_spread.paired_difference([None, 0.3], [0.1, 0.1]) == {
        "mean": None, "std": None, "marked": False}


def test_pooled_interval_is_the_interval_of_the_mean_replicate_by_replicate():
    # two seeds, 5 replicates: the means are 0, 1, 2, 3, 4 (in another order than either
    # seed's); the 2.5 % and 97.5 % quantiles, linear between order statistics, are
    # 0 + 0.1 * (1 - 0) = 0.1 and 3 + 0.9 * (4 - 3) = 3.9
    a = np.array([0.0, 1.0, 4.0, 2.0, 8.0])
    b = np.array([0.0, 1.0, 0.0, 4.0, 0.0])
    assert seed_spread.pooled_interval([a, b]) == pytest.approx([0.1, 3.9])


def test_differences_with_replicates_mark_an_interval_that_excludes_0():
    runs = {name: [{"seed": 0, "eer": 0.0, "accuracy": 0.0}] for name in ("softmax", "a", "b")}
    base = np.linspace(0.1, 0.2, 41)  # (R,)
    replicates = {
        "softmax": [{"eer": base}],
        "a": [{"eer": base + np.linspace(0.01, 0.03, 41)}],  # a - softmax in [0.01, 0.03]
        "b": [{"eer": base + np.linspace(-0.01, 0.03, 41)}],  # crosses 0
    }
    diff = seed_spread.differences(runs, "softmax", ["eer", "accuracy"], replicates)
    # 41 equally spaced values from lo to hi: the 2.5 % quantile lies at lo + 0.025 * (hi - lo)
    assert diff["a"]["eer"]["ci"] == pytest.approx([0.0105, 0.0295])
    assert diff["a"]["eer"]["ci_marked"] is True and diff["b"]["eer"]["ci_marked"] is False
    assert "ci" not in diff["a"]["accuracy"]  # not bootstrapped
    summary = seed_spread.summarise(runs["a"], replicates["a"])
    assert summary["ci"]["eer"] == pytest.approx([0.113, 0.227])  # of 0.11 ... 0.23
