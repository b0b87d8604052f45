"""Verification metrics (metrics.py) on hand cases, and the exact message of each bad input."""

import numpy as np
import pytest
from exact_message import exactly

from margin_softmax import metrics


def test_kfold_accuracy_where_accepting_everything_is_best_on_the_other_folds():
    # each fold: targets 0.1, 0.2 below a non-target at 0.9, so the other fold is classified
    # best (2 of 3) by accepting every trial: each fold is scored that way, 2 of 3 right
    scores, labels = [0.1, 0.2, 0.9] * 2, [1, 1, 0] * 2
    assert metrics.kfold_accuracy(scores, labels, folds=2) == (pytest.approx(2 / 3), 0.0)


def test_kfold_accuracy_thresholds_halfway_between_accepted_and_rejected():
    # fold 2's other fold (1) is split at (0.8 + 0.2) / 2 = 0.5, which accepts 0.6 and rejects
    # 0.4; fold 1's other fold (2) at 0.5 too, which gets 0.8 and 0.2 right: both folds 2 of 2
    scores, labels = [0.8, 0.2, 0.6, 0.4], [1, 0, 1, 0]
    assert metrics.kfold_accuracy(scores, labels, folds=2) == (1.0, 0.0)
    # fold sizes differ by one at most: 5 trials in 2 folds are 3 + 2
    scores, labels = [0.9, 0.1, 0.45, 0.55, 0.2], [1, 0, 0, 1, 0]
    mean, std = metrics.kfold_accuracy(scores, labels, folds=2)
    # fold 1 held out: rest 0.55 (1), 0.2 (0) -> t = 0.375 -> 0.9 ok, 0.1 ok, 0.45 wrong: 2/3
    # fold 2 held out: rest 0.9, 0.1, 0.45 -> t = (0.9 + 0.45) / 2 = 0.675 -> 0.55 wrong,
    # 0.2 ok: 1/2
    assert (mean, std) == (pytest.approx((2 / 3 + 1 / 2) / 2), pytest.approx((2 / 3 - 1 / 2) / 2))


def test_kfold_accuracy_names_a_fold_whose_other_folds_hold_one_kind():
    with pytest.raises(ValueError, match=exactly(
            "fold 2 of 2: the other folds hold only targets; shuffle the trials")):
        metrics.kfold_accuracy([0.1, 0.2, 0.3, 0.4], [1, 1, 0, 1], folds=2)
    with pytest.raises(ValueError, match=exactly(
            "fold 1 of 2: the other folds hold only non-targets; shuffle the trials")):
        metrics.kfold_accuracy([0.1, 0.2, 0.3, 0.4], [1, 1, 0, 0], folds=2)
    with pytest.raises(ValueError, match=exactly("folds = 5 exceeds the 4 trials")):
        metrics.kfold_accuracy([0.1, 0.2, 0.3, 0.4], [1, 0, 1, 0], folds=5)


@pytest.mark.parametrize(
    "scores, labels, message",
    [
        ([[0.1, 0.2]], [0, 1], "scores must be 1-D; got shape (1, 2)"),
        ([0.1, 0.2], [[0, 1]], "labels must be 1-D; got shape (1, 2)"),
        ([], [], "scores is empty; need at least one target and one non-target trial"),
        ([0.1, 0.2, 0.3], [0, 1],
         "scores and labels must have the same length; got len(scores)=3, len(labels)=2"),
        ([0.1, float("-inf"), 0.3], [0, 1, 0], "scores must be finite; found -inf at index 1"),
        ([0.1, 0.2], ["0", "1"], "labels must be 0/1 or bool; got dtype <U1"),
        ([0.1, 0.2, 0.3], [0, 1, 0.5], "labels must contain only 0 and 1 (or bool); found 0.5"),
        ([0.1, 0.2, 0.3], [1, 1, 1],
         "labels must contain both targets (1) and non-targets (0); got 3 targets and 0 "
         "non-targets"),
        ([0.1, 0.2], [False, False],
         "labels must contain both targets (1) and non-targets (0); got 0 targets and 2 "
         "non-targets"),
    ],
)
def test_bad_trials_are_named_exactly(scores, labels, message):
    with pytest.raises(ValueError, match=exactly(message)):
        metrics.eer(scores, labels)


def test_bool_labels_and_float32_scores_give_the_same_curve():
    far, frr, thresholds = metrics.roc_points(np.float32([0.5, 0.25, 0.75]), [True, False, True])
    assert far.tolist() == [0.0, 0.0, 0.0, 1.0]
    assert frr.tolist() == [1.0, 0.5, 0.0, 0.0]
    assert thresholds.tolist() == [np.inf, 0.75, 0.5, 0.25] and thresholds.dtype == np.float64


def test_eer_interpolates_where_far_passes_frr():
    # points (FAR, FRR): (0, 1), (0, 1/2) at 0.9, (1/2, 1/2) at 0.7, (1/2, 0) at 0.6, (1, 0):
    # d = FAR - FRR first >= 0 at the third point (d = 0), so EER = 1/2
    assert metrics.eer([0.9, 0.7, 0.6, 0.1], [1, 0, 1, 0]) == 0.5
    # (0, 1), (0, 1/2) at 0.9, (2/3, 0) at 0.5 (a target tied with two non-targets): d goes
    # -1/2 -> 2/3, t = 3/7 of the way, EER = 3/7 * 2/3
    assert metrics.eer([0.9, 0.5, 0.5, 0.5, 0.1], [1, 1, 0, 0, 0]) == pytest.approx(2 / 7)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: metrics.accuracy(np.zeros(3), [0, 1, 2]),
         "scores must be 2-D (N, C); got shape (3,)"),
        (lambda: metrics.accuracy(np.zeros((2, 3)), [[0, 1]]),
         "labels must be 1-D (N,); got shape (1, 2)"),
        (lambda: metrics.accuracy(np.zeros((0, 3)), np.zeros(0, np.int64)),
         "scores is empty; need at least one sample"),
        (lambda: metrics.accuracy(np.zeros((2, 3)), [0, 1, 2]),
         "scores and labels must have the same length; got len(scores)=2, len(labels)=3"),
        (lambda: metrics.accuracy(np.zeros((2, 3)), [0.0, 1.0]),
         "labels must be integers; got dtype float64"),
        (lambda: metrics.accuracy(np.zeros((2, 3)), [0, 3]), "labels must lie in [0, 3); found 3"),
        (lambda: metrics.accuracy(np.zeros((2, 3)), [-1, 0]),
         "labels must lie in [0, 3); found -1"),
        (lambda: metrics.accuracy(np.zeros((2, 3)), [0, 1], topk=(4,)),
         "topk entries must be integers in [1, 3]; got 4"),
        (lambda: metrics.accuracy(np.zeros((2, 3)), [0, 1], topk=(True,)),
         "topk entries must be integers in [1, 3]; got True"),
        (lambda: metrics.accuracy([[0.0, np.nan]], [0]),
         "scores must be finite; found nan at index 1"),
    ],
)
def test_accuracy_names_bad_input_exactly(call, message):
    with pytest.raises(ValueError, match=exactly(message)):
        call()


def test_accuracy_top_k_boundaries():
    scores = [[3, 2, 1], [1, 2, 3]]  # row 0: true class 2 is last; row 1: true class 2 first
    assert metrics.accuracy(scores, [2, 2], topk=(1, 2, 3)) == [0.5, 0.5, 1.0]
    assert metrics.accuracy(scores, np.int32([0, 2]), topk=[np.int64(1)]) == [1.0]


class OnDevice:
    """A stand-in for a GPU tensor: NumPy cannot read it until .cpu() copies it over."""

    def __init__(self, values):
        self.values = values

    def detach(self):
        return self

    def cpu(self):
        return np.asarray(self.values)

    def __array__(self, dtype=None, copy=None):
        raise TypeError("can't convert a device tensor to numpy; use .cpu() first")


def test_tensors_on_a_device_are_copied_to_the_cpu_first():
    assert metrics.eer(OnDevice([0.9, 0.1]), OnDevice([1, 0])) == 0.0
    assert metrics.accuracy(OnDevice([[0.2, 0.8]]), OnDevice([1])) == [1.0]


def test_min_dcf_default_costs_are_one():
    # one target (4) among non-targets 1, 2, 3, 5; p_target 0.25: accepting nothing costs
    # 0.25, accepting the target with one false accept of four 0.75 * 1/4 = 0.1875: / 0.25
    assert metrics.min_dcf([1, 5, 2, 4, 3], [0, 0, 0, 1, 0], p_target=0.25) == 0.75


def test_kfold_accuracy_default_is_ten_folds_of_one_trial():
    scores, labels = [0, 1, 2, 3, 4, 10, 11, 12, 13, 14], [0] * 5 + [1] * 5
    assert metrics.kfold_accuracy(scores, labels) == (1.0, 0.0)  # each held-out trial right
    with pytest.raises(ValueError, match=exactly("folds = 11 exceeds the 10 trials")):
        metrics.kfold_accuracy(scores, labels, folds=11)


def test_kfold_accuracy_accepts_a_held_out_score_equal_to_the_threshold():
    # fold 2 is scored at (0.8 + 0.2) / 2 = 0.5, and its target scores exactly 0.5
    assert metrics.kfold_accuracy([0.8, 0.2, 0.5, 0.4], [1, 0, 1, 0], folds=2) == (1.0, 0.0)


def test_identification_is_looked_up_lazily():
    from margin_softmax.identification import identification

    assert metrics.identification is identification
    with pytest.raises(AttributeError, match=exactly(
            "module 'margin_softmax.metrics' has no attribute 'nope'")):
        metrics.nope  # noqa: B018
