"""Triton kernels. Importing this package never imports triton; triton_available() says
whether the kernels can run at all (triton importable and a CUDA device, or
TRITON_INTERPRET=1), gpu_runs_kernels(device) whether a device is one they are built for,
auto_picks_triton(tensor) whether impl="auto" runs them on a tensor's device and dtype
(after their self-check, self_check.py). The design is in docs/triton.md."""

from __future__ import annotations

import importlib.util
import os

import torch

from ..margins import Margin
from . import self_check


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def triton_available() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or _interpreter_requested()


MIN_CAPABILITY = (8, 0)  # Triton >= 3.3 builds for NVIDIA sm_80 and newer; bf16 dots need it


def device_unsupported(device: torch.device) -> str | None:
    """Why the compiled kernels cannot run on this CUDA device, or None. Triton dropped
    Turing (7.5) and older NVIDIA GPUs in 3.3, and its bfloat16 dots need 8.0. ROCm devices
    are not refused (the kernels have not run there: gpu_runs_kernels leaves them out)."""
    if torch.version.hip is not None:
        return None
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) >= MIN_CAPABILITY:
        return None
    return (f"{torch.cuda.get_device_name(device)} has compute capability {major}.{minor}; "
            f"the Triton kernels need {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer")


def gpu_runs_kernels(device: torch.device) -> bool:
    """Whether the kernels are built for this device: an NVIDIA GPU of compute capability
    >= 8.0 with triton importable (elsewhere impl="auto" never picks them)."""
    return (device.type == "cuda" and torch.version.hip is None
            and importlib.util.find_spec("triton") is not None
            and device_unsupported(device) is None)


def auto_picks_triton(tensor: torch.Tensor) -> bool:
    """Whether impl="auto" runs the kernels on this tensor (the embeddings or a weight,
    (., D)): unless MARGIN_SOFTMAX_TRITON is "off", on a device gpu_runs_kernels accepts, in
    a dtype and D they cover (kernels_fit), once their self-check passed for that device and
    dtype ("on": unchecked). Every "auto" that may pick the kernels asks this."""
    mode = self_check.mode()
    if mode == "off" or not gpu_runs_kernels(tensor.device) or not kernels_fit(tensor):
        return False
    return mode == "on" or self_check.kernels_pass(tensor.device, tensor.dtype,
                                                   tensor.shape[1])


def check_runnable(tensor: torch.Tensor, name: str = "embeddings") -> None:
    """ValueError unless the kernels can run on this tensor's device (see triton_available
    and device_unsupported); `name` is the argument the message names."""
    if tensor.is_cuda and (reason := device_unsupported(tensor.device)):
        raise ValueError(f"impl='triton': {reason}; use impl='chunked'")
    if importlib.util.find_spec("triton") is None:
        raise ValueError("impl='triton' needs the triton package (pip install triton); "
                         "use impl='chunked' or impl='eager'")
    if not tensor.is_cuda and not _interpreter_requested():
        raise ValueError(f"impl='triton' needs CUDA tensors, got {name} on "
                         f"{tensor.device}; use impl='chunked' on the CPU, or set "
                         "TRITON_INTERPRET=1 before importing triton to run the kernels in "
                         "Triton's (slow) interpreter")
    from .config import interpreted

    if not tensor.is_cuda and not interpreted():
        raise ValueError("the Triton kernels were compiled for the GPU (TRITON_INTERPRET was "
                         "unset when they were first imported); CPU tensors need "
                         "TRITON_INTERPRET=1 set before that import")


def kernels_fit(weight: torch.Tensor) -> bool:
    """False for what the kernels do not cover (weight (C, D) in the inputs' dtype): float64
    (they accumulate in float32) and embedding_dim > 2048 at 16 bits or > 1024 in float32.
    Needs triton importable."""
    from .config import fits

    return weight.dtype != torch.float64 and fits(weight.shape[1], weight.dtype)


def triton_margin_cross_entropy(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    scale: float,
    margin: Margin,
    row_scale: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """margin_cross_entropy (functional.py) by the fused kernels, without the (N, C) logits.

    embeddings (N, D) and weight (C, D) float32/bfloat16/float16 on one CUDA device (or CPU
    under TRITON_INTERPRET=1), labels (N,) int64, row_scale (N,) or None (use ``scale``).
    Returns the loss in float32: a scalar, or (N,) for reduction="none". Inputs the kernels
    do not cover (kernels_fit) go to the chunked path.
    """
    check_runnable(embeddings)
    if not kernels_fit(weight):
        from ..chunked import chunked_margin_cross_entropy

        return chunked_margin_cross_entropy(embeddings, weight, labels, scale, margin,
                                            row_scale, reduction)
    if row_scale is None:
        r = torch.full((embeddings.shape[0],), scale, device=embeddings.device)
    else:
        r = row_scale.float()  # (N,), keeps its autograd history (scale * |x|)
    return _kernel_loss(embeddings, weight, labels, r, reduction, margin, None)


def triton_target_cross_entropy(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    target_logit: torch.Tensor,
    scale: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """target_cross_entropy (functional.py; no non-target transform) by the kernels: logits
    scale * cos_ij off the target, target_logit_i (N,) on it, its gradient g_i (p_iy - 1)
    back through the caller's autograd. Same inputs and fallbacks as
    triton_margin_cross_entropy; the loss in float32."""
    check_runnable(embeddings)
    if not kernels_fit(weight):
        from ..chunked import chunked_target_cross_entropy

        return chunked_target_cross_entropy(embeddings, weight, labels, target_logit, scale,
                                            reduction)
    r = torch.full((embeddings.shape[0],), scale, device=embeddings.device)  # (N,)
    return _kernel_loss(embeddings, weight, labels, r, reduction, None, target_logit)


def _kernel_loss(embeddings, weight, labels, r, reduction, margin, target_logit):
    """The kernels' Function on x_hat = embeddings / |embeddings| (norms in float32, as
    eager does), per-row scale r (N,), reduced."""
    from ..numerics import normalize, reduce
    from .function import MarginCrossEntropyRows

    x_hat = normalize(embeddings.float())  # (N, D)
    loss = MarginCrossEntropyRows.apply(x_hat, weight, r, labels, margin, target_logit)  # (N,)
    return reduce(loss, reduction)
