"""Triton kernels. Importing this package never imports triton; triton_available() says
whether the kernels can run (triton importable and a CUDA device, or TRITON_INTERPRET=1)."""

from __future__ import annotations

import importlib.util
import os


def triton_available() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    import torch

    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def triton_margin_cross_entropy(*args, **kwargs):
    raise NotImplementedError("the Triton path is not built yet; use impl='eager'")
