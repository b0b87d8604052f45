"""margin_softmax.metrics.identification against a brute-force search: every probe scored
against every template, ranks by sorting, TPIR at FPIR by trying every threshold."""

import numpy as np
import pytest

from margin_softmax import identification as identification_module
from margin_softmax.metrics import identification


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def random_search(seed, identities=12, enrolled=8, rows=3, probes=150, dim=6):
    """A gallery of ``enrolled`` identities (``rows`` noisy rows each) and probes of all
    ``identities``, so some probes are non-mated; coarse values make tied scores likely."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(identities, dim))
    gallery_labels = np.repeat(np.arange(enrolled), rows)
    gallery = centres[gallery_labels] + 0.7 * rng.normal(size=(gallery_labels.size, dim))
    probe_labels = rng.integers(0, identities, probes)
    probes_ = np.round(centres[probe_labels] + 0.7 * rng.normal(size=(probes, dim)), 1)
    return gallery, gallery_labels, probes_, probe_labels


def brute_force(gallery, gallery_labels, probes, probe_labels, ranks, fpirs):
    ids = sorted(set(gallery_labels.tolist()))
    templates = unit(np.array([unit(gallery)[gallery_labels == i].mean(0) for i in ids]))
    scores = unit(probes) @ templates.T  # (P, G)
    out = {}
    mated = [k for k, label in enumerate(probe_labels) if label in ids]
    non = [k for k, label in enumerate(probe_labels) if label not in ids]
    rank_of = {}
    for k in mated:
        own = scores[k, ids.index(probe_labels[k])]
        others = [s for j, s in enumerate(scores[k]) if j != ids.index(probe_labels[k])]
        rank_of[k] = sum(s >= own for s in others)  # ties count against the own identity
    for r in ranks:
        out[f"rank{r}"] = sum(rank_of[k] < r for k in mated) / len(mated)
    tops = scores.max(axis=1)
    for f in fpirs:
        best = 0.0
        for t in [np.inf, *tops, -np.inf]:  # accept a top score s when s >= t
            if sum(tops[k] >= t for k in non) / len(non) <= f:
                hits = sum(rank_of[k] == 0 and tops[k] >= t for k in mated)
                best = max(best, hits / len(mated))
        out[f"tpir@{f:g}"] = best
    return out


@pytest.mark.parametrize("seed", range(4))
def test_rates_equal_the_brute_force_search(seed):
    data = random_search(seed)
    ranks, fpirs = (1, 2, 5, 8), (0.0, 0.01, 0.1, 0.25, 0.5, 1.0)
    result = identification(*data, ranks=ranks, fpirs=fpirs)
    assert {k: result[k] for k in brute_force(*data, ranks, fpirs)} == pytest.approx(
        brute_force(*data, ranks, fpirs), abs=1e-12)
    assert result["cmc"].shape == (8,) and result["cmc"][-1] == 1.0
    assert [result["cmc"][r - 1] for r in ranks] == [result[f"rank{r}"] for r in ranks]


def test_blocks_do_not_change_the_result(monkeypatch):
    data = random_search(5)
    whole = identification(*data)
    monkeypatch.setattr(identification_module, "BLOCK_BYTES", 8 * 8 * 3)  # 3 probes a block
    blocks = identification(*data)
    assert {k: v for k, v in whole.items() if k != "cmc"} == {
        k: v for k, v in blocks.items() if k != "cmc"}
    assert (whole["cmc"] == blocks["cmc"]).all()


def test_template_is_the_mean_of_the_unit_rows():
    # identity 0's rows point along x and y at very different lengths: its template is the
    # diagonal, so a probe at 40 degrees (nearer x than y) is still identity 0's
    gallery = np.array([[100.0, 0.0], [0.0, 0.01], [-1.0, 1.0]])
    probes = np.array([[np.cos(np.radians(40)), np.sin(np.radians(40))]])
    result = identification(gallery, [0, 0, 1], probes, [0], ranks=(1,), fpirs=())
    assert result["rank1"] == 1.0 and result["templates"] == 2


def test_a_tie_counts_against_the_own_identity():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0]])
    probes = np.array([[1.0, 1.0]])  # as close to both templates
    result = identification(gallery, ["a", "b"], probes, ["a"], ranks=(1, 2), fpirs=())
    assert (result["rank1"], result["rank2"]) == (0.0, 1.0)


def test_open_set_by_hand():
    # templates x and y; each probe scores s on one of them and 0 on the other (the rest of
    # its length is along z). Mated probes score 0.9 (on x) and 0.5 (on y), both at rank 1;
    # the non-mated probes' top scores are 0.8, 0.5, 0.4, 0.3. FPIR 0: the threshold sits
    # above 0.8, so only 0.9 counts; FPIR 1/4: above 0.5 (only 0.8 may pass), so the mated
    # 0.5 does not count either; FPIR 1/2: above 0.4, both count.
    def probe(s, axis):
        v = np.zeros(3)
        v[axis], v[2] = s, np.sqrt(1 - s**2)
        return v

    gallery = np.eye(3)[:2]
    probes = np.array([probe(0.9, 0), probe(0.5, 1), probe(0.8, 0), probe(0.5, 1),
                       probe(0.4, 0), probe(0.3, 1)])
    labels = [0, 1, 7, 8, 9, 9]
    result = identification(gallery, [0, 1], probes, labels, ranks=(1,),
                            fpirs=(0.0, 0.25, 0.5))
    assert (result["mated"], result["non_mated"], result["rank1"]) == (2, 4, 1.0)
    assert (result["tpir@0"], result["tpir@0.25"], result["tpir@0.5"]) == (0.5, 0.5, 1.0)


@pytest.mark.parametrize("change, message", [
    (lambda d: {**d, "probes": d["probes"][:, :2]}, "same width"),
    (lambda d: {**d, "gallery": np.zeros((2, 6)), "gallery_labels": [0, 1]}, "row 0 is all zero"),
    (lambda d: {**d, "probe_labels": d["probe_labels"][:-1]}, "probe_labels must have shape"),
    (lambda d: {**d, "probe_labels": d["probe_labels"].astype(str)}, "both be numbers"),
    (lambda d: {**d, "probe_labels": np.full(150, 99)}, "no probe's identity is in"),
    (lambda d: {**d, "probe_labels": np.zeros(150, int)}, "need non-mated probes"),
    (lambda d: {**d, "ranks": (9,)}, r"ranks must be ints in \[1, 8\]"),
    (lambda d: {**d, "fpirs": (1.5,)}, "fpirs must lie in"),
    (lambda d: {**d, "probes": np.full((150, 6), np.nan)}, "probes must be finite"),
])
def test_bad_input_is_a_clear_error(change, message):
    gallery, gallery_labels, probes, probe_labels = random_search(0)
    data = change(dict(gallery=gallery, gallery_labels=gallery_labels, probes=probes,
                       probe_labels=probe_labels))
    with pytest.raises((ValueError, TypeError), match=message):
        identification(**data)
