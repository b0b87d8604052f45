"""The loss registry: names, aliases, defaults, parameter checks."""

import inspect

import numpy as np
import pytest
import torch

from margin_softmax import ArcFace, CombinedMargin, SoftmaxLoss, SphereFace
from margin_softmax.registry import (
    DEFAULT_LOSSES,
    LOSSES,
    build_head,
    head_parameters,
    loss_names,
    resolve_name,
)


@pytest.mark.parametrize("name", loss_names())
def test_every_registered_head_gives_a_finite_loss_and_predictions(name):
    torch.manual_seed(0)
    head = build_head(name, 4, 3)
    x, y = torch.randn(6, 4, requires_grad=True), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = head(x, y)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss) and torch.isfinite(x.grad).all()
    predicted = head.predict(x.detach())
    assert predicted.shape == (6,) and 0 <= predicted.min() and predicted.max() < 3


def test_compare_defaults_are_registered():
    assert set(DEFAULT_LOSSES) <= set(loss_names())


def test_aliases_and_case():
    assert resolve_name("AAM-Softmax") == "arcface"
    assert resolve_name(" CosFace ") == "cosface"
    with pytest.raises(ValueError, match="unknown loss 'x'; choose from softmax, normface"):
        resolve_name("x")


def test_registry_defaults_override_class_defaults_and_params_override_both():
    head = build_head("arcface", 4, 3)
    assert isinstance(head, ArcFace) and (head.margin, head.scale) == (0.3, 30.0)
    assert head_parameters("arcface")["fallback"] == "seed"  # the class's own default
    head = build_head("arcface", 4, 3, margin=0.1, fallback="continuous")
    assert (head.margin, head.fallback) == (0.1, "continuous")
    sphere = build_head("sphereface", 4, 3)
    assert isinstance(sphere, SphereFace) and sphere.margin == 4 and sphere.anneal
    assert isinstance(build_head("combined", 4, 3, m3=0.05), CombinedMargin)
    assert isinstance(build_head("softmax", 4, 3), SoftmaxLoss)


@pytest.mark.parametrize("name", loss_names())
def test_build_head_takes_the_impl(name):
    """impl is fixed by the caller (not a loss parameter), so build_head must pass it on."""
    impl = "eager" if name != "subcenter-arcface" else "chunked"
    assert build_head(name, 4, 3, impl=impl).impl == impl
    assert build_head(name, 4, 3).impl == "auto"


def test_unknown_parameter_lists_the_accepted_ones():
    with pytest.raises(ValueError, match="loss 'softmax' has no parameter 'scale'; its "
                                         "parameters are: bias"):
        build_head("softmax", 4, 3, scale=30.0)


def test_every_default_is_a_constructor_parameter():
    for name, spec in LOSSES.items():
        accepted = inspect.signature(spec.head.__init__).parameters
        assert set(spec.defaults) <= set(accepted), name


def float_parameters(name):
    return {k: v for k, v in head_parameters(name).items() if isinstance(v, float)}


@pytest.mark.parametrize("name", [n for n in loss_names() if float_parameters(n)])
def test_numpy_scalars_are_taken_as_the_floats_they_hold(name):
    """Hyper-parameters read through NumPy (np.float32 is no Python float) build the same
    head as the Python floats of the same values."""
    as_numpy = {k: np.float32(v) for k, v in float_parameters(name).items()}
    as_python = {k: float(v) for k, v in as_numpy.items()}
    x, y = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)), torch.arange(6) % 4
    losses = []
    for params in (as_numpy, as_python):
        torch.manual_seed(1)
        head = build_head(name, 5, 4, **params)
        losses.append(head(x, y))
    assert torch.equal(losses[0], losses[1])
