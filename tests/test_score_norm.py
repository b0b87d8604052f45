"""Score normalisation (score_norm.py): against a trial-by-trial loop written with Python's
statistics module, block-size independence, its effect on speakers with score offsets, and
the errors."""

import math
import statistics

import numpy as np
import pytest

from margin_softmax import metrics, score_norm


def _cos(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _loop_norm(s, e, t, emb, cohort, k):
    """One trial, the definition spelled out: each side's top-k cosines to the cohort."""
    out = []
    for side in (emb[e], emb[t]):
        ranked = sorted((_cos(side, c) for c in cohort), reverse=True)[: k or len(cohort)]
        out.append((s - statistics.fmean(ranked)) / statistics.pstdev(ranked))
    return (out[0] + out[1]) / 2


@pytest.mark.parametrize("k", [2, 7, 50, None])
def test_matches_the_trial_by_trial_definition(k):
    rng = np.random.default_rng(1)
    emb, cohort = rng.normal(size=(30, 8)), rng.normal(size=(50, 8)) * 3  # norms do not matter
    e, t = rng.integers(0, 30, 100), rng.integers(0, 30, 100)
    s = rng.uniform(-1, 1, 100)
    got = score_norm.normalize_scores(s, e, t, emb, cohort, k)
    want = [_loop_norm(*args, emb, cohort, k) for args in zip(s, e, t, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_blocks_of_rows_give_the_same_statistics(monkeypatch):
    rng = np.random.default_rng(2)
    emb, cohort = rng.normal(size=(40, 5)), rng.normal(size=(23, 5))
    whole = score_norm.cohort_stats(emb, cohort, 6)
    monkeypatch.setattr(score_norm, "BLOCK_BYTES", 8 * 23 * 3)  # three rows per block
    blocks = score_norm.cohort_stats(emb, cohort, 6)
    for a, b in zip(whole, blocks, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13)


def _speakers(rng, n_speakers, per, dim=16):
    """Embeddings around unit speaker centres, each speaker pulled by its own amount towards
    one shared direction: raw cosines then carry a per-speaker offset."""
    centres = rng.normal(size=(n_speakers, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    pull = rng.uniform(0, 1.5, n_speakers)[:, None, None]
    noise = 0.6 * rng.normal(size=(n_speakers, per, dim)) / np.sqrt(dim)
    emb = centres[:, None] + noise + pull * np.ones(dim) / np.sqrt(dim)
    return emb.reshape(-1, dim), np.repeat(np.arange(n_speakers), per)


@pytest.mark.parametrize("k", [50, None])
def test_removes_per_speaker_offsets(k):
    rng = np.random.default_rng(0)
    emb, labels = _speakers(rng, 40, 6)
    cohort = score_norm.class_means(*_speakers(rng, 200, 4))  # other speakers: 200 means
    e, t = np.triu_indices(len(emb), 1)
    target = (labels[e] == labels[t]).astype(int)
    unit = score_norm.unit_rows(emb)
    raw = np.einsum("td,td->t", unit[e], unit[t])
    normalised = score_norm.normalize_scores(raw, e, t, emb, cohort, k)
    assert metrics.eer(normalised, target) < 0.6 * metrics.eer(raw, target)


def test_class_means_average_each_label():
    emb = np.arange(12.0).reshape(6, 2)
    means = score_norm.class_means(emb, np.array(["b", "a", "b", "c", "a", "b"]))
    np.testing.assert_allclose(means, [emb[[1, 4]].mean(0), emb[[0, 2, 5]].mean(0), emb[3]])
    with pytest.raises(ValueError, match=r"labels must have shape \(6,\).*got \(5,\)"):
        score_norm.class_means(emb, np.arange(5))


def test_errors_name_the_argument_and_value():
    emb, cohort = np.eye(3), np.eye(3)[[0, 1, 2, 0]]
    one = np.array([0])
    for k in (1, 0, True, 2.5):
        with pytest.raises(ValueError, match=rf"top_k must be an int >= 2.*got {k!r}"):
            score_norm.normalize_scores([0.5], one, one, emb, cohort, k)
    with pytest.raises(ValueError, match=r"top_k = 5 exceeds the cohort's 4 embeddings"):
        score_norm.normalize_scores([0.5], one, one, emb, cohort, 5)
    with pytest.raises(ValueError, match=r"cohort \(4, 2\) and embeddings \(3, 3\)"):
        score_norm.normalize_scores([0.5], one, one, emb, cohort[:, :2], 2)
    with pytest.raises(ValueError, match=r"1-D of one length.*\(2,\), \(1,\), \(1,\)"):
        score_norm.normalize_scores([0.5, 0.1], one, one, emb, cohort, 2)
    # row 2 is orthogonal to every member of this cohort: all its scores are 0
    flat = np.array([[1.0, 0, 0], [0, 1, 0], [1, 1, 0]])
    with pytest.raises(ValueError, match=r"embedding row 2: its top 3 cohort scores are all "
                                         r"equal"):
        score_norm.normalize_scores([0.5], np.array([0]), np.array([2]), emb, flat, 3)
    with pytest.raises(ValueError, match=r"at least 2 embeddings; got 1"):
        score_norm.cohort_stats(emb, cohort[:1], None)


def test_equal_top_k_scores_are_refused_though_std_rounds_above_zero():
    # 300 copies of one cohort member: every score is 0.90465..., yet their float64 std is
    # 1.1e-16, which divided a score into -3.6e15 instead of raising
    cohort = np.repeat([[0.1, 0.2, 0.3]], 300, axis=0)
    emb = np.array([[0.3, 0.1, 0.7]])
    assert np.std(score_norm.unit_rows(emb) @ score_norm.unit_rows(cohort).T) > 0
    with pytest.raises(ValueError, match=r"embedding row 0: its top 300 cohort scores are all "
                                         r"equal"):
        score_norm.normalize_scores([0.5], np.array([0]), np.array([0]), emb, cohort, 300)


@pytest.mark.parametrize("scale", [1e-14, 1e150, 1e160, 2.0**-1000, 2.0**1000])
def test_cosines_do_not_depend_on_the_embeddings_scale(scale):
    """cos(a, b) = 8/9 and cos(a, c) = 14/15 by hand, checked with Python's math on the
    unscaled rows; x 1e-14 fell under the 1e-12 norm floor (cosines shrank), past ~1e154 the
    squared norm overflowed (cosine 0). Powers of two scale exactly: bit-identical rows."""
    a, b, c = [1.0, 2.0, 2.0], [2.0, 1.0, 2.0], [0.0, 3.0, 4.0]
    by_math = [math.fsum(x * y for x, y in zip(p, q, strict=True))
               / (math.hypot(*p) * math.hypot(*q)) for p, q in ((a, b), (a, c))]
    assert by_math == pytest.approx([8 / 9, 14 / 15], rel=1e-15)
    rows = np.array([a, b, c, [0.0, 0.0, 0.0]])
    unit = score_norm.unit_rows(rows * scale)  # (4, 3)
    cos = unit @ unit.T
    np.testing.assert_allclose([cos[0, 1], cos[0, 2]], by_math, rtol=1e-15, atol=0)
    np.testing.assert_allclose(np.diag(cos)[:3], 1.0, rtol=1e-15, atol=0)
    assert not unit[3].any()  # a zero row stays zero: cosine 0 with everything
    if math.frexp(scale)[0] == 0.5:
        assert np.array_equal(unit, score_norm.unit_rows(rows))
