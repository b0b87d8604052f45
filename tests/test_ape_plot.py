"""ape_plot.bayes_error_plot draws each system's actual (solid) and minimum (dashed)
normalised DCF over the prior log-odds, the no-information line at 1 and the p_target
markers, and writes the file."""

import math

import numpy as np
import pytest

from margin_softmax import metrics
from margin_softmax.ape_plot import bayes_error_plot


def test_curves_are_act_and_min_dcf(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(300), np.zeros(300)]
    llr = rng.normal(2.0, 2.0, 600) * np.where(labels == 1, 1, -1)
    eta = np.array([-4.0, -1.0, 0.0, 2.0])
    fig = bayes_error_plot({"a": (llr, labels), "b": (llr + 3, labels)}, tmp_path / "x.png",
                           prior_log_odds=eta, p_targets=(0.01,),
                           styles=[{"color": "red"}, {"color": "blue"}])
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    p = 1 / (1 + np.exp(-eta))
    for name, shift in (("a", 0.0), ("b", 3.0)):
        actual, minimum = lines[f"{name}: actual"], lines[f"{name}: minimum"]
        assert actual.get_linestyle() == "-" and minimum.get_linestyle() == "--"
        assert actual.get_color() == minimum.get_color() == {"a": "red", "b": "blue"}[name]
        for k, q in enumerate(p):
            act = ((q * np.mean(llr[labels == 1] + shift < -eta[k])
                    + (1 - q) * np.mean(llr[labels == 0] + shift >= -eta[k])) / min(q, 1 - q))
            assert actual.get_ydata()[k] == pytest.approx(act)
            assert minimum.get_ydata()[k] == pytest.approx(metrics.min_dcf(llr, labels, q))
    reference = lines["no information (always the cheaper decision)"]
    assert list(reference.get_ydata()) == [1.0, 1.0]
    markers = [line for line in ax.lines if list(line.get_xdata()) == [math.log(1 / 99)] * 2]
    assert len(markers) == 1
