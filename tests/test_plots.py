"""compare's figures: the plotted arrays, axes, labels and colours (not pixels)."""

import itertools
import math

import numpy as np
import pytest
from matplotlib.colors import to_hex, to_rgb
from matplotlib.lines import Line2D
from scipy.special import ndtri
from scipy.stats import norm

from margin_softmax import plots
from margin_softmax.margins import Margin


def labelled_lines(ax):
    return {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}


# ----------------------------------------------------------------------------- target logit

MARGINS = {
    "softmax": Margin(),
    "normface": Margin(),
    "cosface": Margin(m3=0.3),
    "arcface": Margin(m2=0.3, fallback="seed"),
    "sphereface": Margin(m1=4.0, fallback="piecewise", blend=5.0),
    "combined": Margin(m2=0.2, m3=0.1),
    "adaface": None,
}


def textbook_psi(name, theta):
    """psi(theta) as the papers write it (SphereFace with its lambda = 5 blend)."""
    if name == "cosface":
        return np.cos(theta) - 0.3
    if name == "arcface":  # the seed's fallback cos - m sin m where theta + m > pi
        fallback = np.cos(theta) - 0.3 * np.sin(0.3)
        return np.where(theta + 0.3 <= np.pi, np.cos(theta + 0.3), fallback)
    if name == "sphereface":
        k = np.floor(4 * theta / np.pi)
        return ((-1) ** k * np.cos(4 * theta) - 2 * k + 5 * np.cos(theta)) / 6
    if name == "combined":
        return np.cos(theta + 0.2) - 0.1
    raise KeyError(name)


def test_target_logit_curves_follow_the_formulas(tmp_path):
    ax = plots.target_logit_curves(MARGINS, tmp_path / "t.png").axes[0]
    lines = labelled_lines(ax)
    reference = "cos θ, no margin: softmax, normface"
    assert set(lines) == {reference, "cosface", "arcface", "sphereface", "combined"}
    for label, line in lines.items():
        degrees, psi = line.get_xdata(), line.get_ydata()
        theta = np.radians(degrees)
        expected = np.cos(theta) if label == reference else textbook_psi(label, theta)
        np.testing.assert_allclose(psi, expected, atol=2e-5, err_msg=label)
        assert degrees[0] == 0 and degrees[-1] == pytest.approx(180)
    # spot checks by hand: SphereFace at 180 degrees (k = 4): (cos 4pi - 8 - 5) / 6 = -2
    assert lines["sphereface"].get_ydata()[-1] == pytest.approx(-2.0)
    assert ax.get_xlim() == (0, 180) and "degrees" in ax.get_xlabel()
    assert "adaface" in ax.get_xlabel() and "ψ" in ax.get_ylabel()


# ----------------------------------------------------------------------------- styles

# Machado, Oliveira and Fernandes (2009), severity 1: linear RGB as a dichromat sees it.
DICHROMATS = {
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                   [-0.003882, -0.048116, 1.051998]],
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                     [-0.011820, 0.042940, 0.968881]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602],
                   [0.004733, 0.691367, 0.303900]],
}


def to_lab(srgb):
    """CIE L*a*b* (D65) of an sRGB colour in [0, 1]."""
    c = np.clip(srgb, 0, 1)
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ linear / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def as_seen_by(srgb, matrix):
    c = np.asarray(srgb)
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    seen = np.clip(np.asarray(matrix) @ linear, 0, 1)
    return np.where(seen <= 0.0031308, 12.92 * seen, 1.055 * seen ** (1 / 2.4) - 0.055)


def score_trials(rng, separation, n=2000):
    """n trials, half target: normal scores whose means are ``separation`` apart."""
    labels = np.repeat([1, 0], n // 2)
    return rng.normal(separation * labels, 1.0), labels


def six_losses_det(tmp_path):
    rng = np.random.default_rng(0)
    names = ["softmax", "normface", "cosface", "arcface", "sphereface", "combined"]
    trials = {name: score_trials(rng, 3 + 0.2 * k) for k, name in enumerate(names)}
    return names, plots.det_curves(trials, tmp_path / "det.png").axes[0]


def test_losses_differ_for_colour_blind_readers_and_in_line_style(tmp_path):
    names, ax = six_losses_det(tmp_path)
    lines = [line for line in ax.lines if line.get_label().split(" (")[0] in names]
    assert len(lines) == 6
    colours = [to_rgb(line.get_color()) for line in lines]
    for kind, matrix in DICHROMATS.items():
        seen = [to_lab(as_seen_by(c, matrix)) for c in colours]
        for (i, a), (j, b) in itertools.combinations(enumerate(seen), 2):
            assert np.linalg.norm(a - b) > 12, (kind, names[i], names[j])
    styles = [plots.loss_style(k)["linestyle"] for k in range(6)]
    assert len(set(map(str, styles))) == 6  # told apart without colour too


def test_a_loss_keeps_its_colour_and_line_style_across_figures(tmp_path):
    names, det = six_losses_det(tmp_path)
    margins = dict.fromkeys(names, Margin(m3=0.3))
    curves = labelled_lines(plots.target_logit_curves(margins, tmp_path / "t.png").axes[0])
    for k, line in enumerate(line for line in det.lines if " (EER" in line.get_label()):
        style = plots.loss_style(k)
        dashes = Line2D([], [], linestyle=style["linestyle"]).get_linestyle()
        for drawn in (line, curves[names[k]]):
            assert to_hex(drawn.get_color()) == to_hex(style["color"])
            assert drawn.get_linestyle() == dashes


# ----------------------------------------------------------------------------- DET


def brute_force_rates(scores, labels):
    """(FAR, FRR) at every threshold t = a score (accept score >= t), by counting."""
    target, non = scores[labels == 1], scores[labels == 0]
    t = np.unique(scores)[:, None]  # (m, 1)
    return (non[None, :] >= t).mean(axis=1), (target[None, :] < t).mean(axis=1)


def test_det_axes_are_probit_with_ticks_in_percent(tmp_path):
    rng = np.random.default_rng(1)
    ax = plots.det_curves({"a": score_trials(rng, 3.0)}, tmp_path / "det.png").axes[0]
    assert ax.get_xlim() == pytest.approx((ndtri(5e-4), ndtri(0.5)))
    assert ax.get_ylim() == pytest.approx((ndtri(5e-4), ndtri(0.5)))
    for axis, label in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
        ticks = [t.get_text() for t in axis.get_ticklabels()]
        assert ticks == ["0.1", "0.2", "0.5", "1", "2", "5", "10", "20", "40"]
        np.testing.assert_allclose(norm.cdf(axis.get_ticklocs()) * 100, [float(t) for t in ticks])
        assert "%" in label and "probit" in label


def test_det_curve_is_the_trials_rates_and_never_runs_along_the_frame(tmp_path):
    rng = np.random.default_rng(2)
    scores, labels = score_trials(rng, 3.0)
    ax = plots.det_curves({"a": (scores, labels)}, tmp_path / "det.png").axes[0]
    line = ax.lines[0]  # the curve: drawn before the diagonal and the FAR line
    x, y = line.get_xdata(), line.get_ydata()
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    # every point near the axes is one of the trials' (FAR, FRR) pairs; a rate clipped to the
    # axis limits would draw a false stretch of curve along the frame
    far, frr = brute_force_rates(scores, labels)
    pairs = {(round(a, 9), round(b, 9)) for a, b in zip(far, frr, strict=True)}
    near = (x > x0 - 1) & (x < x1 + 1) & (y > y0 - 1) & (y < y1 + 1)
    assert near.sum() > 100
    drawn = zip(norm.cdf(x[near]), norm.cdf(y[near]), strict=True)
    assert all((round(a, 9), round(b, 9)) in pairs for a, b in drawn)
    # FRR = 0 (probit -inf) at the high-FAR end: the curve leaves through the bottom
    assert y[-1] < y0 - 1 and frr[0] == 0


def test_det_axes_reach_past_a_high_eer_and_legend_gives_each_eer(tmp_path):
    rng = np.random.default_rng(3)
    hard = score_trials(rng, 1.05)  # EER = Phi(-1.05 / 2), about 30 %
    ax = plots.det_curves({"digits": hard}, tmp_path / "det.png").axes[0]
    far, frr = brute_force_rates(*hard)
    crossing = np.argmin(np.abs(far - frr))
    rate = (far[crossing] + frr[crossing]) / 2
    assert 0.25 < rate < 0.35
    assert ax.get_xlim()[1] >= ndtri(2 * rate) and ax.get_ylim()[1] >= ndtri(2 * rate)
    assert "60" in [t.get_text() for t in ax.get_xticklabels()]
    label = next(t.get_text() for t in ax.get_legend().get_texts() if t.get_text()[0] == "d")
    assert label.startswith("digits (EER ") and label.endswith("%)")
    assert float(label[len("digits (EER "):-2]) == pytest.approx(100 * rate, abs=0.2)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "FAR = FRR" in legend and any("TAR" in t for t in legend)


# ----------------------------------------------------------------------------- unit circle


def at_degrees(*angles):
    a = np.radians(angles)
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def test_angles_to_centre_take_the_nearest_centre_of_the_own_class():
    # class 0's sub-centres at 0 and 180 degrees, class 1's at 90 and 270 (K = 2)
    centres = 3 * at_degrees(0, 180, 90, 270)
    emb = 2 * at_degrees(10, 170, 80, 250, 45)
    labels = np.array([0, 0, 1, 1, 0])
    np.testing.assert_allclose(plots.angles_to_centre(emb, labels, centres), [10, 10, 10, 20, 45])
    with pytest.raises(ValueError, match="3 centre rows"):
        plots.angles_to_centre(emb, labels, centres[:3])


def test_unit_circle_panels_give_the_mean_angle_and_colour_centres_by_class(tmp_path):
    emb, labels = at_degrees(10, -10, 100, 80, 170), np.array([0, 0, 1, 1, 0])
    runs = {"one": (emb, labels, at_degrees(0, 90)),
            "sub": (emb, labels, at_degrees(0, 180, 90, 270))}
    fig = plots.unit_circle(runs, tmp_path / "u.png")
    one, sub = fig.axes
    assert "one" in one.get_title() and f"{(10 + 10 + 10 + 10 + 170) / 5:.1f}°" in one.get_title()
    assert f"{(10 + 10 + 10 + 10 + 10) / 5:.1f}°" in sub.get_title()
    dots = sub.collections[0].get_facecolors()  # (N, 4), one per sample
    centre_lines = sub.lines[1:]  # the first line is the circle
    assert len(centre_lines) == 4
    for row, line in enumerate(centre_lines):
        owner = row // 2
        assert to_hex(line.get_color()) == to_hex(dots[np.flatnonzero(labels == owner)[0]])
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel()


def test_score_histograms_label_both_axes(tmp_path):
    rng = np.random.default_rng(4)
    fig = plots.score_histograms({"a": score_trials(rng, 2.0), "b": score_trials(rng, 2.5)},
                                 tmp_path / "s.png")
    for ax in fig.axes:
        assert ax.get_xlabel() == "cosine score" and ax.get_ylabel() == "density (log scale)"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "non-target", "target", "EER threshold"]
    assert math.isclose(sum(p.get_height() * p.get_width() for p in fig.axes[0].patches[:80]),
                        1.0, rel_tol=1e-6)


def test_score_panels_share_log_axes_that_show_a_single_overlapping_trial(tmp_path):
    # "easy" has one non-target above every target's score: one trial in one bin, density
    # 1 / (1000 * 0.025) = 0.04, a sliver on a linear axis next to peaks near 10
    rng = np.random.default_rng(6)
    labels = np.repeat([1, 0], 1000)
    easy = np.where(labels == 1, rng.normal(0.7, 0.03, 2000), rng.normal(0.0, 0.03, 2000))
    easy[-1] = 0.95
    fig = plots.score_histograms({"easy": (easy, labels), "hard": score_trials(rng, 1.0)},
                                 tmp_path / "s.png")
    first, second = fig.axes
    assert first.get_yscale() == "log" and second.get_yscale() == "log"
    assert first.get_shared_x_axes().joined(first, second)
    assert first.get_shared_y_axes().joined(first, second)
    assert first.get_xlim() == second.get_xlim() and first.get_ylim() == second.get_ylim()
    (low, high), (left, right) = first.get_ylim(), first.get_xlim()
    assert left < 0.95 < right
    # the bar of one trial rises a twentieth of the panel's height or more
    assert math.log(0.04 / low) / math.log(high / low) > 0.05
    bars = [p for p in first.patches[:80] if p.get_x() <= 0.95 < p.get_x() + p.get_width()]
    assert [p.get_height() for p in bars] == [pytest.approx(0.04)]  # the non-targets' bars


def test_eer_threshold_is_where_far_meets_frr():
    # accept score >= t. Targets 0.9 0.8 0.4, non-targets 0.7 0.3 0.2: at t = 0.7 FAR = 1/3,
    # FRR = 1/3 (0.4 rejected); at t = 0.8 FAR = 0 < FRR = 1/3
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])
    labels = np.array([1, 1, 1, 0, 0, 0])
    assert plots.eer_threshold(scores, labels) == 0.7


def test_score_panels_draw_the_eer_threshold_and_give_the_eer(tmp_path):
    rng = np.random.default_rng(7)
    scores, labels = score_trials(rng, 2.0)
    ax = plots.score_histograms({"arcface": (scores / 8, labels)}, tmp_path / "s.png").axes[0]
    (line,) = [line for line in ax.lines if line.get_label() == "EER threshold"]
    assert line.get_xdata()[0] == plots.eer_threshold(scores / 8, labels)
    far, frr = brute_force_rates(scores / 8, labels)
    rate = far[np.argmin(np.abs(far - frr))]
    assert ax.get_title().startswith("arcface (EER ")
    assert float(ax.get_title()[len("arcface (EER "):-2]) == pytest.approx(100 * rate, abs=0.2)


def texts_of(fig):
    """Every piece of text drawn on the figure."""
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        for axis in (ax.xaxis, ax.yaxis):  # the ticks inside the view: the others are not drawn
            lo, hi = sorted(axis.get_view_interval())
            texts += [label for loc, label in zip(axis.get_ticklocs(), axis.get_ticklabels(),
                                                   strict=True) if lo <= loc <= hi]
        if ax.get_legend() is not None:
            texts += ax.get_legend().get_texts()
    return [t for t in texts if t.get_text()]


@pytest.mark.parametrize("count", [1, 2, 4])
def test_no_text_runs_off_a_figure_of_any_number_of_panels(tmp_path, count):
    rng = np.random.default_rng(5)
    names = ["subcenter-arcface", "elastic-cosface", "curricularface", "softmax"][:count]
    trials = {name: score_trials(rng, 3.0) for name in names}
    circle = {name: (at_degrees(10, 100), np.array([0, 1]), at_degrees(0, 90)) for name in names}
    margins = {name: None for name in names} | {"arcface (m2=0.3)": Margin(m2=0.3)}
    figures = [plots.score_histograms(trials, tmp_path / "s.png"),
               plots.unit_circle(circle, tmp_path / "u.png"),
               plots.target_logit_curves(margins, tmp_path / "t.png"),
               plots.det_curves(trials, tmp_path / "d.png")]
    for fig in figures:
        if fig._suptitle is not None:  # one line: a wrapped title left a word alone
            assert "\n" not in fig._suptitle.get_text()
        renderer = fig.canvas.get_renderer()
        for text in texts_of(fig):
            box = text.get_window_extent(renderer)
            assert box.x0 >= 0 and box.x1 <= fig.bbox.x1, text.get_text()
            assert box.y0 >= 0 and box.y1 <= fig.bbox.y1, text.get_text()
