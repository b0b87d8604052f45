import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

from margin_softmax.metrics import accuracy, eer, kfold_accuracy, min_dcf, roc_points, tar_at_far


def random_trials(n, seed, decimals=None):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    labels[:2] = [0, 1]  # both classes present
    scores = rng.standard_normal(n) + 1.5 * labels
    if decimals is not None:
        scores = np.round(scores, decimals)  # creates many ties, also across classes
    return scores, labels


def brute_force_rates(scores, labels, t):
    """P_fa and P_miss at threshold t, accept iff score >= t, by direct counting."""
    tar, non = scores[labels == 1], scores[labels == 0]
    return np.mean(non >= t), np.mean(tar < t)


# --- accuracy -------------------------------------------------------------------------------


def test_accuracy_hand_case():
    scores = np.array(
        [
            [0.1, 0.9, 0.0],  # label 1 is best       -> top1 yes
            [0.5, 0.2, 0.3],  # label 2 is 2nd         -> top1 no, top2 yes
            [0.7, 0.6, 0.1],  # label 2 is 3rd (last)  -> top2 no, top3 yes
            [0.2, 0.8, 0.4],  # label 1 is best        -> top1 yes
        ]
    )
    labels = np.array([1, 2, 2, 1])
    assert accuracy(scores, labels, topk=(1, 2, 3)) == [0.5, 0.75, 1.0]
    assert accuracy(scores, labels) == [0.5]


def test_accuracy_ties_count_against_true_class():
    scores = np.zeros((4, 3))
    labels = np.array([0, 1, 2, 0])
    assert accuracy(scores, labels, topk=(1, 2, 3)) == [0.0, 0.0, 1.0]


def test_accuracy_matches_argsort_on_random_data():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((200, 10))
    labels = rng.integers(0, 10, 200)
    top = np.argsort(-scores, axis=1)
    for k in (1, 3, 5):
        expected = np.mean([labels[n] in top[n, :k] for n in range(200)])
        assert accuracy(scores, labels, topk=(k,))[0] == pytest.approx(expected)


def test_accuracy_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], requires_grad=True)
    labels = torch.tensor([1, 1, 1])
    assert accuracy(scores, labels) == [pytest.approx(2 / 3)]


@pytest.mark.parametrize(
    "scores, labels, topk, match",
    [
        (np.zeros((2, 3)), np.array([0, 3]), (1,), "labels"),
        (np.zeros((2, 3)), np.array([0, -1]), (1,), "labels"),
        (np.zeros((2, 3)), np.array([0, 1, 2]), (1,), "len\\(labels\\)=3"),
        (np.zeros((2, 3)), np.array([0, 1]), (4,), "topk"),
        (np.zeros((2, 3)), np.array([0, 1]), (0,), "topk"),
        (np.zeros(3), np.array([0, 1, 2]), (1,), "scores"),
        (np.zeros((0, 3)), np.zeros(0, np.int64), (1,), "scores is empty"),
        (np.array([[0.0, np.nan]]), np.array([0]), (1,), "scores must be finite.*nan"),
    ],
)
def test_accuracy_rejects_bad_input(scores, labels, topk, match):
    with pytest.raises(ValueError, match=match):
        accuracy(scores, labels, topk=topk)


# --- hand-computed verification cases -------------------------------------------------------


def test_hand_case_with_tie_across_classes():
    # targets 0.8, 0.5; non-targets 0.5, 0.2; the two 0.5 trials tie and must move together.
    # threshold  accepted           FAR   FRR
    #   +inf     none               0     1
    #   0.8      t0.8               0     1/2
    #   0.5      t0.8 t0.5 n0.5     1/2   0
    #   0.2      all                1     0
    # FAR - FRR goes -1/2 -> +1/2 between 0.8 and 0.5; halfway: EER = 0 + 1/2 * 1/2 = 1/4.
    # Splitting the tie would give (0, 0) (EER 0) or (1/2, 1/2) (EER 1/2) instead.
    scores = np.array([0.8, 0.5, 0.5, 0.2])
    labels = np.array([1, 0, 1, 0])
    far, frr, thr = roc_points(scores, labels)
    np.testing.assert_array_equal(thr, [np.inf, 0.8, 0.5, 0.2])
    np.testing.assert_array_equal(far, [0, 0, 0.5, 1])
    np.testing.assert_array_equal(frr, [1, 0.5, 0, 0])
    assert eer(scores, labels) == pytest.approx(0.25)
    # p_target 0.5, unit costs: normalised cost = P_miss + P_fa -> 1, 1/2, 1/2, 1; min 1/2.
    assert min_dcf(scores, labels, p_target=0.5) == pytest.approx(0.5)
    assert tar_at_far(scores, labels, far=0.0) == pytest.approx(0.5)
    assert tar_at_far(scores, labels, far=0.49) == pytest.approx(0.5)
    assert tar_at_far(scores, labels, far=0.5) == pytest.approx(1.0)


def test_hand_case_horizontal_crossing():
    # targets 0.9, 0.8, 0.1; non-target 0.5: points (0,1) (0,2/3) (0,1/3) (1,1/3) (1,0).
    # FAR = FRR is crossed on the horizontal segment FRR = 1/3, so EER = 1/3.
    scores = np.array([0.9, 0.8, 0.5, 0.1])
    labels = np.array([True, True, False, True])
    assert eer(scores, labels) == pytest.approx(1 / 3)


def test_perfect_and_inverted_separation():
    scores = np.array([0.9, 0.8, 0.3, 0.1, 0.2])
    labels = np.array([1, 1, 0, 0, 0])
    assert eer(scores, labels) == 0.0
    assert min_dcf(scores, labels) == 0.0
    assert tar_at_far(scores, labels, far=0.0) == 1.0
    assert eer(-scores, labels) == 1.0
    assert tar_at_far(-scores, labels, far=0.5) == 0.0


def test_all_scores_equal():
    scores = np.ones(6)
    labels = np.array([1, 0, 1, 0, 0, 1])
    far, frr, thr = roc_points(scores, labels)
    np.testing.assert_array_equal(far, [0, 1])
    np.testing.assert_array_equal(frr, [1, 0])
    assert eer(scores, labels) == pytest.approx(0.5)
    assert min_dcf(scores, labels) == pytest.approx(1.0)  # no better than a trivial system


# --- agreement with independent computations ------------------------------------------------


@pytest.mark.parametrize("decimals", [None, 1])
def test_roc_points_agree_with_sklearn(decimals):
    scores, labels = random_trials(2000, seed=1, decimals=decimals)
    far, frr, thr = roc_points(scores, labels)
    fpr, tpr, sk_thr = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_array_equal(thr[1:], sk_thr[1:])  # sklearn's first threshold varies
    np.testing.assert_allclose(far, fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(1 - frr, tpr, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed, decimals", [(2, None), (3, 1), (4, 0)])
def test_eer_agrees_with_root_of_sklearn_curve(seed, decimals):
    scores, labels = random_trials(3000, seed=seed, decimals=decimals)
    fpr, tpr, _ = roc_curve(labels, scores)
    expected = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0, xtol=1e-12)
    assert eer(scores, labels) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "p_target, c_miss, c_fa", [(0.01, 1.0, 1.0), (0.05, 1.0, 1.0), (0.5, 10.0, 1.0), (0.9, 1, 3)]
)
@pytest.mark.parametrize("decimals", [None, 1])
def test_min_dcf_matches_brute_force(p_target, c_miss, c_fa, decimals):
    scores, labels = random_trials(300, seed=5, decimals=decimals)
    costs = []
    for t in np.concatenate(([np.inf], np.unique(scores))):  # O(n^2) in total
        p_fa, p_miss = brute_force_rates(scores, labels, t)
        costs.append(c_miss * p_target * p_miss + c_fa * (1 - p_target) * p_fa)
    expected = min(costs) / min(c_miss * p_target, c_fa * (1 - p_target))
    assert min_dcf(scores, labels, p_target, c_miss, c_fa) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("far", [0.0, 0.001, 0.01, 0.1, 0.5, 1.0])
def test_tar_at_far_matches_brute_force(far):
    scores, labels = random_trials(400, seed=6, decimals=1)
    best = 0.0
    for t in np.concatenate(([np.inf], np.unique(scores))):
        p_fa, p_miss = brute_force_rates(scores, labels, t)
        if p_fa <= far:
            best = max(best, 1 - p_miss)
    assert tar_at_far(scores, labels, far=far) == pytest.approx(best)


def test_invariant_under_monotone_transforms_and_permutation():
    scores, labels = random_trials(1000, seed=7)
    base = roc_points(scores, labels)
    perm = np.random.default_rng(0).permutation(scores.size)
    for transformed in (2.0 * scores + 5.0, np.exp(scores), scores.astype(np.float32)):
        far, frr, _ = roc_points(transformed, labels)
        np.testing.assert_array_equal(far, base[0])
        np.testing.assert_array_equal(frr, base[1])
        assert eer(transformed, labels) == eer(scores, labels)
        assert min_dcf(transformed, labels) == min_dcf(scores, labels)
        assert tar_at_far(transformed, labels, 0.01) == tar_at_far(scores, labels, 0.01)
    far, frr, thr = roc_points(scores[perm], labels[perm])
    np.testing.assert_array_equal(far, base[0])
    np.testing.assert_array_equal(thr, base[2])


def test_eer_close_to_theory_for_gaussian_scores():
    # targets N(2, 1), non-targets N(0, 1): EER = Phi(-1) = 0.158655...
    rng = np.random.default_rng(8)
    n = 200_000
    labels = rng.random(n) < 0.5
    scores = rng.standard_normal(n) + 2.0 * labels
    assert eer(scores, labels) == pytest.approx(0.158655, abs=3e-3)


def test_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    scores = torch.tensor([0.8, 0.5, 0.5, 0.2], requires_grad=True)
    labels = torch.tensor([1, 0, 1, 0])
    assert eer(scores, labels) == pytest.approx(0.25)
    assert eer(scores.to(torch.bfloat16), labels.bool()) == pytest.approx(0.25)


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [roc_points, eer, min_dcf, tar_at_far])
@pytest.mark.parametrize(
    "scores, labels, match",
    [
        ([0.1, np.nan, 0.3], [0, 1, 0], "scores must be finite.*nan.*index 1"),
        ([0.1, np.inf, 0.3], [0, 1, 0], "scores must be finite.*inf"),
        ([0.1, 0.2, 0.3], [0, 1], "len\\(scores\\)=3, len\\(labels\\)=2"),
        ([0.1, 0.2, 0.3], [0, 1, 2], "labels must contain only 0 and 1.*found 2"),
        ([0.1, 0.2, 0.3], [1, 1, 1], "labels must contain both.*3 targets and 0 non"),
        ([0.1, 0.2, 0.3], [0, 0, 0], "labels must contain both.*0 targets"),
        ([], [], "scores is empty"),
        ([[0.1, 0.2]], [0, 1], "scores must be 1-D"),
    ],
)
def test_verification_metrics_reject_bad_input(fn, scores, labels, match):
    with pytest.raises(ValueError, match=match):
        fn(np.asarray(scores, dtype=float), np.asarray(labels))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"p_target": 0.0}, "p_target"),
        ({"p_target": 1.0}, "p_target"),
        ({"c_miss": 0.0}, "c_miss"),
        ({"c_fa": -1.0}, "c_fa"),
    ],
)
def test_min_dcf_rejects_bad_costs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        min_dcf([0.1, 0.9], [0, 1], **kwargs)


@pytest.mark.parametrize("far", [-0.1, 1.5])
def test_tar_at_far_rejects_bad_far(far):
    with pytest.raises(ValueError, match="far must lie in"):
        tar_at_far([0.1, 0.9], [0, 1], far=far)


def brute_force_kfold(scores, labels, folds):
    """Each fold at the first threshold, from +inf down through the midpoints between the
    other folds' distinct scores to -inf, that classifies the other folds best."""
    fold_of = np.repeat(np.arange(folds), [len(a) for a in np.array_split(scores, folds)])
    result = []
    for k in range(folds):
        train, test = fold_of != k, fold_of == k
        distinct = sorted(set(scores[train]), reverse=True)
        gaps = [(a + b) / 2 for a, b in zip(distinct, distinct[1:], strict=False)]
        best, best_t = -1.0, None
        for t in [np.inf, *gaps, -np.inf]:
            right = np.mean((scores[train] >= t) == (labels[train] == 1))
            if right > best:
                best, best_t = right, t
        result.append(np.mean((scores[test] >= best_t) == (labels[test] == 1)))
    return np.mean(result), np.std(result)


@pytest.mark.parametrize("folds, decimals", [(10, None), (10, 1), (3, 0), (2, None)])
def test_kfold_accuracy_matches_brute_force(folds, decimals):
    scores, labels = random_trials(123, seed=folds, decimals=decimals)
    got = kfold_accuracy(scores, labels, folds)
    np.testing.assert_allclose(got, brute_force_kfold(scores, labels, folds), rtol=1e-12)


def test_kfold_accuracy_of_separable_and_of_chance_scores():
    labels = np.tile([0, 1], 300)
    assert kfold_accuracy(labels + 0.1 * np.arange(600) / 600, labels) == (1.0, 0.0)
    mean, std = kfold_accuracy(np.random.default_rng(0).random(600), labels)
    assert 0.4 < mean < 0.6 and std > 0


@pytest.mark.parametrize(
    "folds, labels, match",
    [
        (1, [0, 1, 0, 1], r"folds must be an int >= 2; got 1"),
        (2.0, [0, 1, 0, 1], r"folds must be an int >= 2; got 2\.0"),
        (5, [0, 1, 0, 1], r"folds = 5 exceeds the 4 trials"),
        (2, [1, 1, 0, 0], r"fold 1 of 2: the other folds hold only non-targets"),
    ],
)
def test_kfold_accuracy_rejects_bad_folds(folds, labels, match):
    with pytest.raises(ValueError, match=match):
        kfold_accuracy([0.1, 0.2, 0.3, 0.4], labels, folds)
