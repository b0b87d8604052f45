"""The helpers of the sharded heads' edge tests (test_distributed_heads_common.py, the cases
all seven heads share, and test_distributed_target_heads_edges.py,
test_distributed_more_heads_edges.py, those of some heads): every head with a rule of its own,
single-device and sharded, built on the same small data."""

from __future__ import annotations

import pytest
import torch

import margin_softmax as ms
from margin_softmax.distributed import (
    AdaCosPartialFC,
    AdaFacePartialFC,
    CurricularFacePartialFC,
    ElasticArcFacePartialFC,
    ElasticCosFacePartialFC,
    MagFacePartialFC,
    SampledRowsOptimizer,
    SubCenterArcFacePartialFC,
)
from margin_softmax.distributed.checkpoint import running_state

DIM, K = 6, 3
TOL64 = {"atol": 1e-9, "rtol": 0.0}
HEADS = {  # name -> (single-device head, sharded head, keywords of both)
    "adaface": (ms.AdaFace, AdaFacePartialFC, {"t_alpha": 0.3}),
    "magface": (ms.MagFace, MagFacePartialFC, {}),
    "elastic_arc": (ms.ElasticArcFace, ElasticArcFacePartialFC,
                    {"std": 0.2, "plus": True, "seed": 5}),
    "elastic_cos": (ms.ElasticCosFace, ElasticCosFacePartialFC, {"std": 0.2, "seed": 7}),
    "curricularface": (ms.CurricularFace, CurricularFacePartialFC, {"momentum": 0.3}),
    "adacos": (ms.AdaCos, AdaCosPartialFC, {}),
    "subcenter": (ms.SubCenterArcFace, SubCenterArcFacePartialFC,
                  {"sub_centers": K, "margin": 0.3}),
}


def rows_per_class(name: str) -> int:
    return HEADS[name][2].get("sub_centers", 1)


def batch(seed: int, n: int, num_classes: int, dtype=torch.float64):
    """x (n, D) with norms in [5, 60] (AdaFace's and MagFace's ranges), labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g, dtype=torch.float64)
    x = x * torch.empty(n, 1, dtype=torch.float64).uniform_(5, 60, generator=g)
    return x.to(dtype), torch.randint(0, num_classes, (n,), generator=g)


def full_weight(seed: int, num_classes: int, name: str = "") -> torch.Tensor:
    """(C K, D): K rows per class for the sub-centre head, else (C, D)."""
    rows = num_classes * (rows_per_class(name) if name else 1)
    return torch.randn(rows, DIM, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def sharded(name: str, weight: torch.Tensor, dtype=torch.float64, group=None, **sharding):
    """The sharded head holding this rank's rows of ``weight`` (C K, D)."""
    _, kind, keywords = HEADS[name]
    k = rows_per_class(name)
    head = kind(DIM, weight.shape[0] // k, group=group, **{**keywords, **sharding}).to(dtype)
    with torch.no_grad():
        head.weight.copy_(weight[head.start * k : head.stop * k])
    return head


def single(name: str, weight: torch.Tensor, dtype=torch.float64, impl="eager", **keywords):
    """The single-device head holding all of ``weight``."""
    kind, _, defaults = HEADS[name]
    k = rows_per_class(name)
    head = kind(DIM, weight.shape[0] // k, impl=impl, **{**defaults, **keywords}).to(dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


def step(head, x, labels, mode="train"):
    """(loss, x grad, weight grad) of one forward and backward; mode "no_grad": the loss of a
    training-mode forward under torch.no_grad()."""
    head.train(mode != "eval")
    head.weight.grad = None
    if mode == "no_grad":
        with torch.no_grad():
            return head(x, labels).item(), None, None
    x = x.clone().requires_grad_()
    loss = head(x, labels)
    loss.backward()
    return loss.item(), x.grad, head.weight.grad


def state_of(head) -> dict:
    return running_state(head.state_dict())


def assert_states_equal(found: dict, expected: dict, tol=None) -> None:
    """Running states: float64 buffers within tol (1e-9), generators bit for bit (and the
    int64 sampling ``step`` where a test adds it)."""
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        if key == "_extra_state":
            assert torch.equal(found[key]["generator"], value["generator"])
        else:
            assert found[key].dtype == value.dtype, key
            assert key == "step" or value.dtype == torch.float64, key  # the sampling step
            torch.testing.assert_close(found[key], value, **(tol or TOL64))


def assert_steps_equal(found, expected, tol) -> None:
    assert found[0] == pytest.approx(expected[0], rel=max(tol["rtol"], 1e-12),
                                     abs=tol["atol"])
    for a, b in zip(found[1:], expected[1:], strict=True):
        if b is not None:
            torch.testing.assert_close(a, b, **tol)


def sgd(head) -> SampledRowsOptimizer:
    return SampledRowsOptimizer(torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9,
                                                weight_decay=5e-4), head)


def rows_of(sizes: list[int], rank: int) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])
