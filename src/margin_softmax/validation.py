"""Input checks shared by every path: a clear ValueError/TypeError that names the argument
and the bad value, instead of a silent NaN, a device assert or a C++ traceback."""

from __future__ import annotations

import math
import numbers
import operator

import torch

MAX_SCALE = 1e4  # papers and peers use 10-64; far beyond, s * cos overflows float32 or NaNs


def real_number(name: str, value, what: str = "a float") -> float:
    """value as a Python float: any real number, NumPy's float32 and int64 too (a config
    read through NumPy), not a bool or a tensor. TypeError names ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    return float(value)


def check_scale(scale: float, name: str = "scale") -> float:
    scale = real_number(name, scale, "a positive float")
    if not math.isfinite(scale) or not 0 < scale <= MAX_SCALE:
        raise ValueError(f"{name} must be a float in (0, {MAX_SCALE:g}], got {scale!r}")
    return float(scale)


def check_positive_int(name: str, value) -> int:
    """value as a Python int >= 1; any integer type (numpy's too, from labels.max() + 1),
    not a bool or a float."""
    if not isinstance(value, bool):
        try:
            value = operator.index(value)
        except TypeError:
            pass
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_tensor(name: str, value) -> None:
    """TypeError naming ``name`` and the type given, unless value is a torch.Tensor (a NumPy
    array or a list is not converted: its dtype and device would be guesses)."""
    if not isinstance(value, torch.Tensor):
        kind = type(value)
        where = "" if kind.__module__ == "builtins" else f"{kind.__module__}."
        raise TypeError(f"{name} must be a torch.Tensor, got {where}{kind.__qualname__}")


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise if ``tensor`` holds NaN or inf (one reduction; a host sync on GPU)."""
    if not bool(torch.isfinite(tensor).all()):
        bad = tensor[~torch.isfinite(tensor)].flatten()[0].item()
        raise ValueError(f"{name} contains non-finite values (e.g. {bad}); check the inputs")


def check_embeddings(embeddings: torch.Tensor, weight: torch.Tensor) -> None:
    """embeddings (N, D) and weight (C, D): float tensors of one dtype and device."""
    check_tensor("embeddings", embeddings)
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be 2-D (N, D), got shape {tuple(embeddings.shape)}")
    if not embeddings.is_floating_point():
        raise TypeError(f"embeddings must be a float tensor, got dtype {embeddings.dtype}")
    check_tensor("weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (C, D), got shape {tuple(weight.shape)}")
    if embeddings.shape[1] != weight.shape[1]:
        raise ValueError(
            f"embeddings have size {embeddings.shape[1]} in dim 1 but weight expects "
            f"embedding_dim={weight.shape[1]} (embeddings shape {tuple(embeddings.shape)}, "
            f"weight shape {tuple(weight.shape)})"
        )
    if embeddings.dtype != weight.dtype:
        raise TypeError(
            f"embeddings dtype {embeddings.dtype} differs from weight dtype {weight.dtype}"
        )
    if embeddings.device != weight.device:
        raise ValueError(
            f"embeddings are on {embeddings.device} but weight is on {weight.device}"
        )
    check_finite("embeddings", embeddings)


def check_bias(bias: torch.Tensor, weight: torch.Tensor) -> None:
    """bias: a float (C,) tensor on the weight's device, for weight (C, D)."""
    check_tensor("bias", bias)
    if not bias.is_floating_point() or tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be a float tensor of shape ({weight.shape[0]},), got "
                         f"shape {tuple(bias.shape)}, dtype {bias.dtype}")
    if bias.device != weight.device:
        raise ValueError(f"bias is on {bias.device} but weight is on {weight.device}")


def check_labels(labels: torch.Tensor, num_samples: int, num_classes: int,
                 device: torch.device | None = None) -> torch.Tensor:
    """labels: int (N,) class indices in [0, num_classes) (on ``device`` where given).
    Returns them as int64."""
    check_tensor("labels", labels)
    if device is not None and labels.device != device:
        raise ValueError(f"labels are on {labels.device} but the embeddings are on {device}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != num_samples:
        raise ValueError(
            f"labels must have shape ({num_samples},) to match the embeddings, "
            f"got shape {tuple(labels.shape)}"
        )
    if num_samples:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(f"labels must be in [0, {num_classes}), got label {bad}")
    return labels.long()
