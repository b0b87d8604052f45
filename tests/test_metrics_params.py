"""Every public function of metrics.py names a parameter of the wrong type or value, with the
value (issue 13, item 4); scores are ints or floats, never bool, complex or strings."""

import math

import numpy as np
import pytest

from margin_softmax import metrics

SCORES, LABELS = [0.1, 0.9, 0.3, 0.5, 0.2, 0.7], [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("call, error, message", [
    (lambda: metrics.min_dcf(SCORES, LABELS, p_target="0.01"), TypeError,
     "p_target must be a real number; got '0.01'"),
    (lambda: metrics.min_dcf(SCORES, LABELS, p_target=None), TypeError,
     "p_target must be a real number; got None"),
    (lambda: metrics.min_dcf(SCORES, LABELS, p_target=True), TypeError,
     "p_target must be a real number; got True"),
    (lambda: metrics.min_dcf(SCORES, LABELS, p_target=math.nan), ValueError,
     "p_target must lie in (0, 1); got nan"),
    (lambda: metrics.min_dcf(SCORES, LABELS, p_target=1), ValueError,
     "p_target must lie in (0, 1); got 1.0"),
    (lambda: metrics.min_dcf(SCORES, LABELS, c_miss="1"), TypeError,
     "c_miss must be a real number; got '1'"),
    (lambda: metrics.min_dcf(SCORES, LABELS, c_miss=math.inf), ValueError,
     "c_miss must be a positive finite number; got inf"),
    (lambda: metrics.min_dcf(SCORES, LABELS, c_fa=True), TypeError,
     "c_fa must be a real number; got True"),
    (lambda: metrics.min_dcf(SCORES, LABELS, c_fa=np.float64(0)), ValueError,
     "c_fa must be a positive finite number; got 0.0"),
    (lambda: metrics.tar_at_far(SCORES, LABELS, far=None), TypeError,
     "far must be a real number; got None"),
    (lambda: metrics.tar_at_far(SCORES, LABELS, far="1e-3"), TypeError,
     "far must be a real number; got '1e-3'"),
    (lambda: metrics.tar_at_far(SCORES, LABELS, far=math.nan), ValueError,
     "far must lie in [0, 1]; got nan"),
    (lambda: metrics.kfold_accuracy(SCORES, LABELS, folds="3"), ValueError,
     "folds must be an int >= 2; got '3'"),
    (lambda: metrics.kfold_accuracy(SCORES, LABELS, folds=None), ValueError,
     "folds must be an int >= 2; got None"),
    (lambda: metrics.kfold_accuracy(SCORES, LABELS, folds=True), ValueError,
     "folds must be an int >= 2; got True"),
    (lambda: metrics.accuracy(np.eye(3), [0, 1, 2], topk=2), TypeError,
     "topk must be a sequence of ints; got 2"),
    (lambda: metrics.accuracy(np.eye(3), [0, 1, 2], topk="1"), TypeError,
     "topk must be a sequence of ints; got '1'"),
    (lambda: metrics.accuracy(np.eye(3), [0, 1, 2], topk=[None]), ValueError,
     "topk entries must be integers in [1, 3]; got None"),
])
def test_a_bad_parameter_is_named_with_its_value(call, error, message):
    with pytest.raises(error) as raised:
        call()
    assert str(raised.value) == message


VERIFICATION = {
    "roc_points": metrics.roc_points,
    "eer": metrics.eer,
    "min_dcf": metrics.min_dcf,
    "tar_at_far": metrics.tar_at_far,
    "kfold_accuracy": lambda s, y: metrics.kfold_accuracy(s, y, folds=2),
}
NOT_REAL = {  # scores -> their dtype in the message
    "bool": ([True, False, True, False, False, True], "bool"),
    "complex": (np.array(SCORES) + 1j, "complex128"),
    "str": (["0.1", "0.9", "0.3", "0.5", "0.2", "0.7"], "<U3"),
    "None": ([0.1, None, 0.3, 0.5, 0.2, 0.7], "object"),
    "text": ("0.1 0.9 0.3 0.5 0.2 0.7", "<U23"),
}


@pytest.mark.parametrize("kind", NOT_REAL)
@pytest.mark.parametrize("name", VERIFICATION)
def test_scores_that_are_not_real_numbers_are_a_type_error(name, kind):
    scores, dtype = NOT_REAL[kind]
    with pytest.raises(TypeError) as raised:
        VERIFICATION[name](scores, LABELS)
    assert str(raised.value) == f"scores must be real numbers (int or float); got dtype {dtype}"


@pytest.mark.parametrize("kind", ["bool", "complex", "str"])
def test_accuracy_scores_that_are_not_real_numbers_are_a_type_error(kind):
    scores = np.asarray(NOT_REAL[kind][0][:4]).reshape(2, 2)
    with pytest.raises(TypeError, match=r"^scores must be real numbers \(int or float\); got "):
        metrics.accuracy(scores, [0, 1])


def test_integer_scores_and_numpy_parameters_work_as_floats():
    ints = [1, 9, 3, 5, 2, 7]
    floats = [float(s) for s in ints]
    for name, fn in VERIFICATION.items():
        np.testing.assert_equal(fn(ints, LABELS), fn(floats, LABELS), err_msg=name)
    assert metrics.accuracy([[2, 1], [0, 3]], [0, 1]) == [1.0]
    # eer: targets 9, 5, 7 all above non-targets 1, 3, 2
    assert metrics.eer(ints, LABELS) == 0.0
    assert metrics.min_dcf(ints, LABELS, p_target=np.float64(0.05), c_miss=np.int64(2)) == \
        metrics.min_dcf(floats, LABELS, p_target=0.05, c_miss=2.0)
    assert metrics.tar_at_far(ints, LABELS, far=np.float32(0.5)) == 1.0
