"""margin_softmax.bootstrap: each replicate equals the metrics of the explicitly resampled
trials, identities stay whole, and the intervals cover the true value at about the nominal
rate when identities make trials correlated (where resampling trials does not)."""

import math

import numpy as np
import pytest

from margin_softmax import bootstrap, metrics


def small_trials(seed=0, n=60, groups=6):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.4
    labels[:2] = [True, False]
    scores = np.round(rng.normal(size=n) + labels, 1)  # rounding makes ties
    return scores, labels, rng.integers(0, groups, n)


def expected(scores, labels, p_targets, fars):
    return [metrics.eer(scores, labels),
            *(metrics.min_dcf(scores, labels, p) for p in p_targets),
            *(metrics.tar_at_far(scores, labels, f) for f in fars)]


P_TARGETS, FARS = (0.01, 0.3, 0.5, 0.9), (0.0, 0.05, 0.5, 1.0)


@pytest.mark.parametrize("seed", range(5))
def test_unit_counts_give_the_metrics_exactly(seed):
    scores, labels, groups = small_trials(seed)
    resampler = bootstrap.Resampler(scores, labels, groups, P_TARGETS, FARS)
    values = resampler.metrics(np.ones(resampler.n_groups, dtype=int))
    assert values.tolist() == expected(scores, labels, P_TARGETS, FARS)


@pytest.mark.parametrize("by_identity", [True, False])
def test_each_replicate_is_the_metrics_of_the_repeated_trials(by_identity):
    scores, labels, groups = small_trials(1)
    resampler = bootstrap.Resampler(scores, labels, groups if by_identity else None,
                                     P_TARGETS, FARS)
    rng = np.random.default_rng(7)
    for _ in range(20):
        counts = resampler.draw(rng)
        if by_identity:
            _, index = np.unique(groups, return_inverse=True)
            repeats = counts[index]
        else:  # targets are groups 0..N_tar-1 in trial order, then the non-targets
            repeats = np.empty(labels.size, dtype=int)
            repeats[labels], repeats[~labels] = counts[:labels.sum()], counts[labels.sum():]
        s, y = np.repeat(scores, repeats), np.repeat(labels, repeats)
        assert resampler.metrics(counts) == pytest.approx(
            expected(s, y, P_TARGETS, FARS), rel=1e-12, abs=1e-15)


def test_trial_resampling_keeps_the_class_sizes():
    scores, labels, _ = small_trials(2)
    resampler = bootstrap.Resampler(scores, labels)
    counts = resampler.draw(np.random.default_rng(0))
    n_tar = int(labels.sum())
    assert counts[:n_tar].sum() == n_tar and counts[n_tar:].sum() == labels.size - n_tar


def test_identities_stay_whole():
    # identity "a" separates perfectly (EER 0), "b" is inverted (EER 1): a resample holds
    # a twice, b twice, or each once, so every EER is 0, 1 or that of all the trials
    scores = np.array([0.9, 0.8, 0.2, 0.1, 0.15, 0.05, 0.85, 0.95])
    labels = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    groups = np.array(list("aaaabbbb"))
    eer = bootstrap.replicates(scores, labels, groups, resamples=200, workers=1)["eer"]
    both = metrics.eer(scores, labels)
    assert set(np.round(eer, 12)) == {0.0, 1.0, round(both, 12)}
    per_trial = bootstrap.replicates(scores, labels, resamples=200, workers=1)["eer"]
    assert len(set(np.round(per_trial, 12))) > 3  # what resampling trials would give


def correlated_trials(rng, identities=40, per_identity=20, spread=2.0, separation=3.0):
    """Every trial of an identity is shifted by the same u ~ N(0, spread^2); given the
    identity the scores are N(separation, 1) for targets, N(0, 1) for non-targets. The
    population EER is Phi(-separation / (2 sqrt(1 + spread^2)))."""
    groups = np.repeat(np.arange(identities), per_identity)
    labels = np.tile(np.arange(per_identity) % 2 == 0, identities)
    shift = rng.normal(0.0, spread, identities)[groups]
    scores = shift + separation * labels + rng.normal(size=groups.size)
    return scores, labels, groups


def test_identity_intervals_cover_the_true_eer_at_about_the_nominal_rate():
    true_eer = 0.5 * math.erfc(3.0 / (2 * math.sqrt(5.0)) / math.sqrt(2))  # Phi(-3 / 2 sqrt 5)
    rng = np.random.default_rng(11)
    covered = {"identity": 0, "trial": 0}
    datasets = 60
    for k in range(datasets):
        scores, labels, groups = correlated_trials(rng)
        for how, g in (("identity", groups), ("trial", None)):
            eer = bootstrap.replicates(scores, labels, g, resamples=100, seed=k, workers=1)
            low, high = bootstrap.percentile_interval(eer["eer"], 0.95)
            covered[how] += low <= true_eer <= high
    assert 0.88 <= covered["identity"] / datasets <= 1.0  # nominal 0.95
    assert covered["trial"] / datasets < 0.85  # too narrow: these trials are not independent


def test_same_seed_same_replicates_whatever_the_threads():
    scores, labels, groups = small_trials(3, n=400, groups=40)
    one = bootstrap.replicates(scores, labels, groups, resamples=50, seed=5, workers=1)
    three = bootstrap.replicates(scores, labels, groups, resamples=50, seed=5, workers=3)
    other = bootstrap.replicates(scores, labels, groups, resamples=50, seed=6, workers=1)
    assert all((one[k] == three[k]).all() for k in one)
    assert not (one["eer"] == other["eer"]).all()


def test_paired_differences():
    scores, labels, groups = small_trials(4, n=400, groups=40)
    assert bootstrap.difference_intervals(scores, scores, labels, groups, resamples=50) == {
        "eer": (0.0, 0.0), "min_dcf_0.01": (0.0, 0.0), "tar_at_far_1e-3": (0.0, 0.0)}
    better = scores + 3.0 * labels  # separates the classes much better on every resample
    low, high = bootstrap.difference_intervals(better, scores, labels, groups,
                                               resamples=50)["eer"]
    assert high < 0


def test_interval_keys_follow_the_summary():
    scores, labels, groups = small_trials(5, n=200, groups=20)
    out = bootstrap.intervals(scores, labels, groups, p_targets=(0.01, 0.05), fars=(1e-3,),
                              resamples=30)
    assert list(out) == ["eer", "min_dcf_0.01", "min_dcf_0.05", "tar_at_far_1e-3"]
    assert all(low <= high for low, high in out.values())


@pytest.mark.parametrize("call, message", [
    (lambda s, y, g: bootstrap.replicates(s, y, g[:-1]), "groups must have one entry"),
    (lambda s, y, g: bootstrap.replicates(s, y, g, resamples=0), "resamples must be a pos"),
    (lambda s, y, g: bootstrap.replicates(s, y, g, seed=-1), "seed must be an int >= 0"),
    (lambda s, y, g: bootstrap.replicates(s, y, g, p_targets=(1.0,)), "p_target must lie"),
    (lambda s, y, g: bootstrap.replicates(s, y, g, fars=(2.0,)), "far must lie"),
    (lambda s, y, g: bootstrap.intervals(s, y, g, level=95), "level must lie in"),
    (lambda s, y, g: bootstrap.replicates(s, y, y, resamples=20), "too few identities"),
])
def test_bad_input_is_a_clear_error(call, message):
    scores, labels, groups = small_trials(6)
    with pytest.raises(ValueError, match=message):
        call(scores, labels, groups)
