import numpy as np
import pytest

from margin_softmax.data import (
    class_centres,
    digits,
    open_set_split,
    synthetic_identities,
    verification_trials,
)


def nearest_mean_accuracy(features, labels, samples_per_identity):
    """Class means from the first half of each identity's samples, scored on the second half."""
    num = labels.max() + 1
    x = features.reshape(num, samples_per_identity, -1)  # rows are grouped by identity
    half = samples_per_identity // 2
    means = x[:, :half].mean(axis=1)  # (C, dim)
    test = x[:, half:].reshape(-1, features.shape[1])  # (C * rest, dim)
    truth = np.repeat(np.arange(num), samples_per_identity - half)
    dist = ((test[:, None, :] - means[None, :, :]) ** 2).sum(axis=-1)  # (C * rest, C)
    return np.mean(dist.argmin(axis=1) == truth)


# --- class_centres --------------------------------------------------------------------------


def test_class_centres_shape_norm_and_determinism():
    c = class_centres(100_000, 8, seed=3)  # more than one internal chunk
    assert c.shape == (100_000, 8) and c.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(c, class_centres(100_000, 8, seed=3))
    assert not np.allclose(c[:10], class_centres(10, 8, seed=4))
    # rows come from one stream, so a smaller request is a prefix of a larger one
    np.testing.assert_array_equal(class_centres(10, 8, seed=3), c[:10])


def test_class_centres_spread_over_sphere():
    c = class_centres(20_000, 3, seed=0)
    np.testing.assert_allclose(c.mean(axis=0), 0.0, atol=0.02)  # no preferred direction


# --- synthetic_identities -------------------------------------------------------------------


def test_synthetic_identities_shapes_dtypes_labels():
    x, y = synthetic_identities(7, 5, 12, seed=1)
    assert x.shape == (35, 12) and x.dtype == np.float32
    assert y.shape == (35,) and y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y), np.full(7, 5))
    assert np.isfinite(x).all()


def test_synthetic_identities_deterministic_under_seed():
    a = synthetic_identities(20, 4, 16, seed=5)
    b = synthetic_identities(20, 4, 16, seed=5)
    c = synthetic_identities(20, 4, 16, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.allclose(a[0], c[0])


def test_synthetic_identities_without_noise_are_the_centres():
    x, y = synthetic_identities(30, 3, 10, nuisance=0.0, noise=0.0, mixing=0.0, seed=2)
    np.testing.assert_array_equal(x, class_centres(30, 10, seed=2)[y])


def test_noise_and_nuisance_have_the_documented_size():
    # mixing 0: x - c_y = e + a U with RMS norms ``noise`` and ``nuisance``
    c = class_centres(200, 32, seed=0)
    x, y = synthetic_identities(200, 50, 32, nuisance=0.0, noise=0.5, mixing=0.0, seed=0)
    rms = np.sqrt(np.mean(np.sum((x - c[y]) ** 2, axis=1)))
    assert rms == pytest.approx(0.5, rel=0.02)
    x, y = synthetic_identities(200, 50, 32, nuisance=2.0, noise=0.0, mixing=0.0, seed=0)
    residual = x - c[y]
    assert np.sqrt(np.mean(np.sum(residual**2, axis=1))) == pytest.approx(2.0, rel=0.02)
    assert np.linalg.matrix_rank(residual, tol=1e-4) == 4  # shared nuisance_rank directions


def test_mixing_is_nonlinear_and_bounded():
    dim = 16
    x, _ = synthetic_identities(50, 10, dim, mixing=1.0, seed=0)
    assert np.abs(x).max() <= 1.0 / np.sqrt(dim) + 1e-6  # tanh(.) / s with s = sqrt(dim)
    # a linear map from the unmixed features cannot reproduce the mixed ones
    z, _ = synthetic_identities(50, 10, dim, mixing=0.0, seed=0)
    coef, *_ = np.linalg.lstsq(z, x, rcond=None)
    assert np.abs(z @ coef - x).max() > 1e-2


@pytest.mark.parametrize("mixing", [0.0, 1.0])
def test_identities_separable_and_harder_with_more_nuisance(mixing):
    accs = []
    for nuisance in (0.0, 0.5, 1.0, 2.0):
        x, y = synthetic_identities(50, 20, 16, nuisance=nuisance, noise=0.3, mixing=mixing)
        accs.append(nearest_mean_accuracy(x, y, 20))
    assert accs[0] > 0.99  # clean data: identities are well separated
    assert all(a > b for a, b in zip(accs, accs[1:], strict=False))
    assert accs[-1] < 0.5
    chance = 1 / 50
    assert accs[-1] > 2 * chance  # still some signal left


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_identities": 0}, "num_identities.*0"),
        ({"samples_per_identity": 2.5}, "samples_per_identity.*2.5"),
        ({"dim": -1}, "dim.*-1"),
        ({"nuisance": -0.1}, "nuisance.*-0.1"),
        ({"noise": float("nan")}, "noise.*nan"),
        ({"mixing": -1.0}, "mixing.*-1.0"),
        ({"nuisance_rank": 9}, "nuisance_rank.*9"),
        ({"nuisance_rank": True}, "nuisance_rank.*True"),
    ],
)
def test_synthetic_identities_rejects_bad_arguments(kwargs, match):
    args = {"num_identities": 3, "samples_per_identity": 2, "dim": 8} | kwargs
    with pytest.raises(ValueError, match=match):
        synthetic_identities(**args)


def test_class_centres_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_identities.*0"):
        class_centres(0, 4)
    with pytest.raises(ValueError, match="dim.*'4'"):
        class_centres(3, "4")


# --- open_set_split -------------------------------------------------------------------------


def labelled_rows(labels):
    """Features whose first column is the original label, so rows can be traced."""
    labels = np.asarray(labels)
    return np.stack([labels, np.arange(labels.size)], axis=1).astype(np.float32), labels


def test_open_set_split_is_disjoint_and_relabelled():
    labels = np.repeat(np.array([10, 3, 7, 42, 5, 8, 1, 99, 20, 11]), 4)
    x, y = labelled_rows(labels)
    split = open_set_split(x, y, held_out_fraction=0.3, seed=1)
    held_ids = set(np.unique(split.held_out_labels).tolist())
    train_ids = set(split.train_identities.tolist())
    assert len(held_ids) == 3 and len(train_ids) == 7
    assert held_ids.isdisjoint(train_ids)
    assert held_ids | train_ids == set(labels.tolist())
    # train labels are 0..K-1 and map back to the original identities of the rows
    np.testing.assert_array_equal(np.unique(split.train_labels), np.arange(7))
    assert split.train_labels.dtype == np.int64
    np.testing.assert_array_equal(
        split.train_identities[split.train_labels], split.train_features[:, 0]
    )
    np.testing.assert_array_equal(split.held_out_labels, split.held_out_features[:, 0])
    # every row lands in exactly one part, in the original order
    rows = np.concatenate([split.train_features[:, 1], split.held_out_features[:, 1]])
    np.testing.assert_array_equal(np.sort(rows), np.arange(labels.size))
    assert np.all(np.diff(split.train_features[:, 1]) > 0)


def test_open_set_split_deterministic_under_seed():
    x, y = labelled_rows(np.repeat(np.arange(50), 2))
    a = open_set_split(x, y, 0.5, seed=0)
    b = open_set_split(x, y, 0.5, seed=0)
    c = open_set_split(x, y, 0.5, seed=1)
    np.testing.assert_array_equal(a.held_out_labels, b.held_out_labels)
    assert not np.array_equal(np.unique(a.held_out_labels), np.unique(c.held_out_labels))


def test_open_set_split_keeps_both_parts_non_empty():
    x, y = labelled_rows([0, 0, 1, 1])
    for fraction in (0.01, 0.99):
        split = open_set_split(x, y, fraction, seed=0)
        assert len(split.train_identities) == 1
        assert np.unique(split.held_out_labels).size == 1


@pytest.mark.parametrize(
    "labels, fraction, match",
    [
        ([0, 1, 2], 0.0, "held_out_fraction.*0.0"),
        ([0, 1, 2], 1.0, "held_out_fraction.*1.0"),
        ([4, 4, 4], 0.5, "at least 2 identities; got 1"),
        ([0.5, 1.0, 2.0], 0.5, "labels must be a 1-D integer"),
    ],
)
def test_open_set_split_rejects_bad_arguments(labels, fraction, match):
    with pytest.raises(ValueError, match=match):
        open_set_split(np.zeros((3, 2)), np.asarray(labels), fraction)


def test_open_set_split_rejects_length_mismatch():
    with pytest.raises(ValueError, match="len\\(features\\)=4, len\\(labels\\)=3"):
        open_set_split(np.zeros((4, 2)), np.array([0, 1, 2]), 0.5)


# --- verification_trials --------------------------------------------------------------------


def test_verification_trials_targets_are_same_identity():
    rng = np.random.default_rng(0)
    labels = rng.choice([3, 17, 250, 1000, 4], size=60)  # non-contiguous identities
    i, j, target = verification_trials(labels, 1001, target_fraction=0.3, seed=2)
    assert i.shape == j.shape == target.shape == (1001,)
    assert i.dtype == j.dtype == target.dtype == np.int64
    assert target.sum() == round(0.3 * 1001)
    np.testing.assert_array_equal(target, (labels[i] == labels[j]).astype(np.int64))
    assert np.all(i != j)
    assert i.min() >= 0 and max(i.max(), j.max()) < labels.size
    assert 0 < target[:100].sum() < 100  # targets and non-targets are shuffled together


def test_verification_trials_deterministic_under_seed():
    labels = np.repeat(np.arange(10), 3)
    a = verification_trials(labels, 200, seed=4)
    b = verification_trials(labels, 200, seed=4)
    c = verification_trials(labels, 200, seed=5)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])


def test_verification_trials_cover_all_partners():
    # 3 samples of identity 0 and 2 of identity 1: every ordered same-identity pair should
    # appear among many target draws, and a singleton identity is never drawn as a target.
    labels = np.array([0, 0, 0, 1, 1, 2])
    i, j, target = verification_trials(labels, 4000, target_fraction=1.0, seed=0)
    pairs = set(zip(i.tolist(), j.tolist(), strict=True))
    expected = {(a, b) for a in range(5) for b in range(5) if a != b and labels[a] == labels[b]}
    assert pairs == expected
    i, j, target = verification_trials(labels, 4000, target_fraction=0.0, seed=0)
    assert target.sum() == 0 and np.all(labels[i] != labels[j])
    assert set(j[i == 5].tolist()) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize(
    "labels, kwargs, match",
    [
        ([0, 1, 2], {"target_fraction": 0.5}, "no identity with 2 or more"),
        ([1, 1, 1], {"target_fraction": 0.5}, "at least 2 identities; got 1"),
        ([0, 0, 1], {"target_fraction": 1.5}, "target_fraction.*1.5"),
        ([0, 0, 1], {"num_trials": 0}, "num_trials.*0"),
    ],
)
def test_verification_trials_rejects_bad_arguments(labels, kwargs, match):
    args = {"num_trials": 10} | kwargs
    num_trials = args.pop("num_trials")
    with pytest.raises(ValueError, match=match):
        verification_trials(np.asarray(labels), num_trials, **args)


def test_verification_trials_edge_fractions_need_only_one_kind():
    i, j, target = verification_trials(np.array([1, 1, 1]), 5, target_fraction=1.0)
    assert target.sum() == 5
    i, j, target = verification_trials(np.array([0, 1, 2]), 5, target_fraction=0.0)
    assert target.sum() == 0


# --- digits ---------------------------------------------------------------------------------


def test_digits():
    x, y = digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(np.unique(y), np.arange(10))
    assert nearest_mean_accuracy_on_digits(x, y) > 0.85  # real, learnable images


def nearest_mean_accuracy_on_digits(x, y):
    means = np.stack([x[y == k].mean(axis=0) for k in range(10)])  # (10, 64)
    return np.mean(((x[:, None] - means[None]) ** 2).sum(-1).argmin(1) == y)
