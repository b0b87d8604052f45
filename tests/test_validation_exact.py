"""The input checks (validation.py): each bad input's exact message, which names the argument
and the value, and the edges of each accepted range."""

import math

import numpy as np
import pytest
import torch
from exact_message import exactly

from margin_softmax.validation import (
    check_bias,
    check_embeddings,
    check_finite,
    check_labels,
    check_positive_int,
    check_scale,
    check_tensor,
    real_number,
)


def test_real_number_takes_numpy_numbers_but_not_bools_strings_or_tensors():
    for value in (np.float32(0.5), np.int64(3), 2):
        assert type(real_number("m", value)) is float and real_number("m", value) == value
    with pytest.raises(TypeError, match=exactly("scale must be a float, got True")):
        real_number("scale", True)
    with pytest.raises(TypeError, match=exactly("margin must be a number, got '0.5'")):
        real_number("margin", "0.5", "a number")
    with pytest.raises(TypeError, match=exactly("m must be a float, got tensor(0.5000)")):
        real_number("m", torch.tensor(0.5))


def test_scale_lies_in_zero_to_max_scale():
    assert check_scale(10_000) == 10_000.0 and type(check_scale(64)) is float
    for bad in (0, -1.0, math.nextafter(1e4, math.inf), math.inf, math.nan):
        with pytest.raises(ValueError, match=exactly(
                f"s must be a float in (0, 10000], got {float(bad)!r}")):
            check_scale(bad, "s")
    with pytest.raises(TypeError, match=exactly("scale must be a positive float, got True")):
        check_scale(True)
    with pytest.raises(TypeError, match=exactly("scale must be a positive float, got '30'")):
        check_scale("30")


def test_positive_int_takes_numpy_ints_but_not_bools_floats_or_strings():
    assert check_positive_int("n", 1) == 1
    seven = check_positive_int("n", np.int64(7))
    assert seven == 7 and type(seven) is int
    for bad in (0, -2, True, 2.0, "3", None):
        with pytest.raises(ValueError, match=exactly(
                f"num_classes must be a positive int, got {bad!r}")):
            check_positive_int("num_classes", bad)


def test_a_non_tensor_is_named_with_its_type():
    with pytest.raises(TypeError, match=exactly("labels must be a torch.Tensor, got list")):
        check_tensor("labels", [0, 1])
    with pytest.raises(TypeError, match=exactly(
            "weight must be a torch.Tensor, got numpy.ndarray")):
        check_tensor("weight", np.zeros((2, 2)))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_finite_names_the_first_bad_value(bad):
    tensor = torch.tensor([[1.0, bad], [bad, 2.0]])
    with pytest.raises(ValueError, match=exactly(
            f"x contains non-finite values (e.g. {bad}); check the inputs")):
        check_finite("x", tensor)
    check_finite("x", torch.zeros(2, 2))


E, W = torch.zeros(2, 3), torch.ones(4, 3)


@pytest.mark.parametrize(
    "embeddings, weight, error, message",
    [
        (torch.zeros(3), W, ValueError, "embeddings must be 2-D (N, D), got shape (3,)"),
        (torch.zeros(2, 3, dtype=torch.long), W, TypeError,
         "embeddings must be a float tensor, got dtype torch.int64"),
        (E, torch.ones(4, 3, 1), ValueError, "weight must be 2-D (C, D), got shape (4, 3, 1)"),
        (E, torch.ones(3), ValueError, "weight must be 2-D (C, D), got shape (3,)"),
        (E, torch.ones(4, 5), ValueError,
         "embeddings have size 3 in dim 1 but weight expects embedding_dim=5 (embeddings "
         "shape (2, 3), weight shape (4, 5))"),
        (E, W.double(), TypeError,
         "embeddings dtype torch.float32 differs from weight dtype torch.float64"),
        (E, W.to("meta"), ValueError, "embeddings are on cpu but weight is on meta"),
        (torch.tensor([[0.0, math.nan, 0.0]]), W, ValueError,
         "embeddings contains non-finite values (e.g. nan); check the inputs"),
        ([[0.0, 0.0, 0.0]], W, TypeError, "embeddings must be a torch.Tensor, got list"),
        (E, [[1.0] * 3], TypeError, "weight must be a torch.Tensor, got list"),
    ],
)
def test_bad_embeddings_and_weight(embeddings, weight, error, message):
    with pytest.raises(error, match=exactly(message)):
        check_embeddings(embeddings, weight)


def test_bad_bias():
    check_bias(torch.zeros(4), W)
    for bias, what in ((torch.zeros(3), "shape (3,), dtype torch.float32"),
                       (torch.zeros(4, dtype=torch.long), "shape (4,), dtype torch.int64")):
        with pytest.raises(ValueError, match=exactly(
                f"bias must be a float tensor of shape (4,), got {what}")):
            check_bias(bias, W)
    with pytest.raises(ValueError, match=exactly("bias is on meta but weight is on cpu")):
        check_bias(torch.zeros(4, device="meta"), W)
    with pytest.raises(TypeError, match=exactly("bias must be a torch.Tensor, got list")):
        check_bias([0.0] * 4, W)


def test_labels_are_int64_class_indices_in_range():
    labels = check_labels(torch.tensor([0, 3], dtype=torch.int32), 2, 4)  # no device: any
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 3]
    assert check_labels(torch.zeros(0, dtype=torch.long), 0, 4, torch.device("cpu")).shape == (0,)


@pytest.mark.parametrize(
    "labels, error, message",
    [
        ([0, 1], TypeError, "labels must be a torch.Tensor, got list"),
        (torch.tensor([0, 1], device="meta"), ValueError,
         "labels are on meta but the embeddings are on cpu"),
        (torch.tensor([0.0, 1.0]), TypeError,
         "labels must be integer class indices, got dtype torch.float32"),
        (torch.tensor([True, False]), TypeError,
         "labels must be integer class indices, got dtype torch.bool"),
        (torch.tensor([0j, 1j]), TypeError,
         "labels must be integer class indices, got dtype torch.complex64"),
        (torch.tensor([0, 1, 2]), ValueError,
         "labels must have shape (2,) to match the embeddings, got shape (3,)"),
        (torch.tensor([[0, 1]]), ValueError,
         "labels must have shape (2,) to match the embeddings, got shape (1, 2)"),
        (torch.tensor([0, 4]), ValueError, "labels must be in [0, 4), got label 4"),
        (torch.tensor([-1, 4]), ValueError, "labels must be in [0, 4), got label -1"),
    ],
)
def test_bad_labels(labels, error, message):
    with pytest.raises(error, match=exactly(message)):
        check_labels(labels, 2, 4, torch.device("cpu"))
