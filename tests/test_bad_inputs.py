"""Bad input to every head and to the functional API gets a clear error naming the argument
(issue 13, item 4); an empty batch is a zero loss with zero gradients; a float16 zero
embedding gets a finite gradient; the cosine margin m3 has one range, [0, 2)."""

import copy
import math

import numpy as np
import pytest
import torch

import margin_softmax as ms
from margin_softmax.registry import LOSSES

HEADS = list(LOSSES)  # the 13 single-device heads, by registered name
D, C = 4, 5


def make(name: str, **kwargs) -> torch.nn.Module:
    return LOSSES[name].head(D, C, **kwargs)


def batch(n: int = 3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, D, generator=g), torch.arange(n) % C


NOT_TENSORS = {  # value -> the type name the error gives
    "ndarray": (np.zeros((3, D), np.float32), "numpy.ndarray"),
    "list": ([[0.0] * D] * 3, "list"),
    "str": ("embeddings", "str"),
}


@pytest.mark.parametrize("kind", NOT_TENSORS)
@pytest.mark.parametrize("name", HEADS)
def test_every_head_names_a_non_tensor_argument_and_its_type(name, kind):
    value, type_name = NOT_TENSORS[kind]
    x, y = batch()
    message = f"^embeddings must be a torch.Tensor, got {type_name}$"
    for call in (lambda v: make(name)(v, y), make(name).predict, make(name).logits):
        with pytest.raises(TypeError, match=message):
            call(value)
    labels = np.arange(3) if kind == "ndarray" else value
    with pytest.raises(TypeError, match=f"^labels must be a torch.Tensor, got {type_name}$"):
        make(name)(x, labels)


def test_the_functional_api_names_a_non_tensor_argument():
    x, y = batch()
    w = torch.randn(C, D)
    calls = {
        "margin_cross_entropy": lambda e, w, y: ms.margin_cross_entropy(e, w, y, scale=30.0),
        "softmax_cross_entropy": ms.softmax_cross_entropy,
        "target_cross_entropy": lambda e, w, y: ms.target_cross_entropy(
            e, w, y, torch.zeros(3), scale=30.0),
    }
    for call in calls.values():
        for args, name in (((x.numpy(), w, y), "embeddings"), ((x, w.tolist(), y), "weight"),
                           ((x, w, y.numpy()), "labels")):
            with pytest.raises(TypeError, match=f"^{name} must be a torch.Tensor, got "):
                call(*args)
    with pytest.raises(TypeError, match="^bias must be a torch.Tensor, got numpy.ndarray$"):
        ms.softmax_cross_entropy(x, w, y, np.zeros(C, np.float32))
    with pytest.raises(TypeError, match="^target_logit must be a torch.Tensor, got list$"):
        ms.target_cross_entropy(x, w, y, [0.0] * 3, scale=30.0)


@pytest.mark.parametrize("name", HEADS)
def test_every_head_names_both_devices(name):
    """meta stands in for a GPU: labels, or the head's weight, on another device."""
    x, y = batch()
    with pytest.raises(ValueError, match="^labels are on meta but the embeddings are on cpu$"):
        make(name)(x, y.to("meta"))
    with pytest.raises(ValueError, match="^labels are on meta but the embeddings are on cpu$"):
        make(name).logits(x, y.to("meta"))
    with pytest.raises(ValueError, match="^embeddings are on cpu but weight is on meta$"):
        make(name).to("meta")(x, y)


@pytest.mark.parametrize("name", HEADS)
def test_every_head_gives_an_empty_batch_zero_loss_and_zero_gradients(name):
    head = make(name)
    x = torch.zeros(0, D, requires_grad=True)
    loss = head(x, torch.zeros(0, dtype=torch.long))
    assert loss.shape == () and float(loss.detach()) == 0.0
    loss.backward()
    assert x.grad is not None and x.grad.shape == (0, D)
    for parameter in head.parameters():  # zeros, not None: an optimiser steps them alike
        assert parameter.grad is not None and not bool(parameter.grad.any())


@pytest.mark.parametrize("impl", ["eager", "chunked"])
@pytest.mark.parametrize("name", HEADS)
def test_a_float16_zero_embedding_gets_a_finite_gradient(name, impl):
    """x / max(|x|, 1e-12) has gradient g / 1e-12 at x = 0, beyond float16's 65504: the zero
    row gets 0 in the normalising heads; the plain softmax loss keeps its W^T (p - y)."""
    torch.manual_seed(0)
    head = make(name, impl=impl)
    x, y = batch(4)
    x[1] = 0.0
    grads = {}
    for dtype in (torch.float16, torch.float32):  # float32: the other rows' reference
        twin = copy.deepcopy(head).to(dtype)
        x_dtype = x.to(dtype).requires_grad_()
        twin(x_dtype, y).backward()
        grads[dtype] = x_dtype.grad.float(), twin.weight.grad
    dx, dw = grads[torch.float16]
    assert bool(dx.isfinite().all()) and bool(dw.isfinite().all())
    assert bool(dx[1].any()) == (name == "softmax")
    others, exact = torch.tensor([0, 2, 3]), grads[torch.float32][0]
    torch.testing.assert_close(dx[others], exact[others], rtol=0,
                               atol=0.02 * float(exact.abs().max()))


JUST_BELOW_TWO = math.nextafter(2.0, 0.0)
JUST_BELOW_ZERO = math.nextafter(0.0, -1.0)
COSINE_MARGINS = {  # argument name in the message -> a builder taking the value
    "CosFace": ("margin", lambda m: ms.CosFace(D, C, margin=m)),
    "CombinedMargin": ("m3", lambda m: ms.CombinedMargin(D, C, m3=m)),
    "Margin": ("m3", lambda m: ms.Margin(m3=m)),
    "margin_cross_entropy": ("m3", lambda m: ms.margin_cross_entropy(
        *batch()[:1], torch.randn(C, D), batch()[1], scale=30.0, m3=m)),
}


@pytest.mark.parametrize("where", COSINE_MARGINS)
def test_the_cosine_margin_lies_in_zero_to_two(where):
    name, build = COSINE_MARGINS[where]
    for inside in (0.0, JUST_BELOW_TWO):
        build(inside)
    for outside in (JUST_BELOW_ZERO, 2.0, math.inf, math.nan):
        with pytest.raises(ValueError, match=rf"^{name} .*\[0, 2\), got {outside!r}$"):
            build(outside)


def test_elastic_cosface_mean_margin_has_cosface_range_and_a_scheduler_is_checked():
    ms.ElasticCosFace(D, C, margin=JUST_BELOW_TWO, seed=0)
    with pytest.raises(ValueError, match=r"^margin must be a finite float in \[0.0, 2.0\), "
                                         r"got 2.0$"):
        ms.ElasticCosFace(D, C, margin=2.0, seed=0)
    head = ms.CosFace(D, C, margin=0.3)
    head.margin = 2.5  # as a MarginScheduler would
    with pytest.raises(ValueError, match=r"^margin \(additive cosine margin\) must be in "
                                         r"\[0, 2\), got 2.5$"):
        head(*batch())


def test_a_refused_sphereface_batch_does_not_advance_the_annealing():
    head = ms.SphereFace(D, C, anneal=True)
    x, y = batch()
    head(x, y)
    with pytest.raises(ValueError, match="labels must be in"):
        head(x, torch.full((3,), C))
    assert int(head.iteration) == 1


def hand_clusters():
    """Class 0 with sub-centres e0 and e1, class 1 with -e0 and -e1 (K = 2, D = 2). Class 0's
    samples: e0 twice, -e0 (180 degrees from e0) and e1 (90); nearest sub-centres e0, e0,
    e1, e1: a tie, so e0 (the lower index) is dominant."""
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-3.0, 0.0], [0.0, 1.0]])
    return weight, x, torch.zeros(4, dtype=torch.long)


@pytest.mark.parametrize("threshold, outliers", [
    (180, []),  # PyTorch Metric Learning's meaning: nothing is farther than 180 degrees
    (180.0, []),
    (math.nextafter(180.0, 0.0), [2]),
    (90.0, [2]),
    (45, [2, 3]),
    (0.0, [2, 3]),  # every sample off its dominant sub-centre
])
def test_find_outliers_threshold_from_0_to_180_degrees(threshold, outliers):
    weight, x, y = hand_clusters()
    found = ms.find_outliers(weight, x, y, sub_centers=2, threshold_degrees=threshold)
    assert found.dominant.tolist() == [0, -1]
    assert found.outlier_indices.tolist() == outliers


@pytest.mark.parametrize("threshold, error, match", [
    (math.nextafter(180.0, 200.0), ValueError, r"\[0, 180\], got 180.00000000000003$"),
    (JUST_BELOW_ZERO, ValueError, r"\[0, 180\], got -5e-324$"),
    (math.nan, ValueError, r"\[0, 180\], got nan$"),
    ("75", TypeError, r"^threshold_degrees must be a float, got '75'$"),
    (True, TypeError, r"^threshold_degrees must be a float, got True$"),
])
def test_find_outliers_names_a_bad_threshold(threshold, error, match):
    weight, x, y = hand_clusters()
    with pytest.raises(error, match=match):
        ms.find_outliers(weight, x, y, sub_centers=2, threshold_degrees=threshold)
