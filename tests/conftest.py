"""Shared test configuration."""

import pytest
import torch

torch.set_num_threads(1)  # two pytest workers on two cores


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (benchmarks/gpu.sh runs these)")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; run benchmarks/gpu.sh on a GPU machine")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not keywords: names and ids match too
            item.add_marker(skip)
