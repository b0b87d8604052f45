"""The functional core: margin cross-entropy over normalised embeddings and class centres.

    cos_ij   = <x_i / |x_i|, w_j / |w_j|>                             # (N, C)
    logit_ij = r_i * cos_ij            (j != y_i)
    logit_iy = r_i * psi(cos_iy)       (the target; see margins.py)
    loss     = mean_i [ logsumexp_j logit_ij - logit_iy ]

with r_i = scale, or scale * |x_i| where ``scale_by_norm`` (SphereFace's original form).
``impl`` picks how it is computed; every choice returns the same numbers:

- "eager": materialises the (N, C) logits; the readable reference.
- "chunked": tiles of classes, never holds (N, C) (see chunked/ and docs/scale.md).
- "triton": fused GPU kernels (see kernels/).
- "auto": triton on NVIDIA GPUs of compute capability 8.0+ where it imports and the kernels
  passed their self-check (kernels/self_check.py), chunked when N * C is large, eager
  otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .margins import Margin, apply_margin
from .numerics import compute_dtype, normalize, reduce
from .validation import (
    check_bias,
    check_embeddings,
    check_finite,
    check_labels,
    check_scale,
    check_tensor,
)
from .zero_rows import zero_rows_get_no_gradient

IMPLS = ("auto", "eager", "chunked", "triton")
REDUCTIONS = ("mean", "sum", "none")
AUTO_CHUNK_ELEMENTS = 1 << 22  # N * C above which "auto" stops materialising the logits
AUTO_CHUNK_ELEMENTS_CPU = 1 << 17  # on CPU chunked is as fast as eager from here (docs/scale.md)


def cosine_logits(embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """cos (N, C) between rows of embeddings (N, D) and weight (C, D), in compute_dtype."""
    dtype = compute_dtype(embeddings.dtype)
    x = normalize(embeddings.to(dtype)).to(embeddings.dtype)  # norms in float32 for half
    w = normalize(weight.to(dtype)).to(weight.dtype)
    return (x @ w.t()).to(dtype)  # (N, C), the matmul in the input dtype


def resolve_impl(
    impl: str, embeddings: torch.Tensor, num_classes: int, *, plain: bool = False
) -> str:
    """The path for ``impl``; "auto": triton on CUDA where the kernels run and passed their
    self-check (margin losses; see kernels.auto_picks_triton), chunked when N * C is large
    (measured crossover on CPU, a larger one elsewhere), else eager."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if plain and impl == "triton":
        raise ValueError("impl='triton' covers the margin losses; use 'chunked' for plain softmax")
    if impl != "auto":
        return impl
    if not plain:
        from .kernels import auto_picks_triton

        if auto_picks_triton(embeddings):
            return "triton"
    cpu = embeddings.device.type == "cpu"
    threshold = AUTO_CHUNK_ELEMENTS_CPU if cpu else AUTO_CHUNK_ELEMENTS
    if embeddings.shape[0] * num_classes > threshold:
        return "chunked"
    return "eager"


def margin_cross_entropy(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    scale: float,
    m1: float = 1.0,
    m2: float = 0.0,
    m3: float = 0.0,
    fallback: str = "none",
    straight_through: bool = False,
    blend: float = 0.0,
    scale_by_norm: bool = False,
    reduction: str = "mean",
    impl: str = "auto",
    margin: Margin | None = None,
) -> torch.Tensor:
    """Cross-entropy of scaled cosine logits with the target logit psi(cos) (margins.py).

    embeddings (N, D), weight (C, D), labels (N,) int in [0, C). Margins in radians.
    Returns the loss in the embeddings' dtype: a scalar, or (N,) for reduction="none".
    ``margin`` (a Margin) may be passed instead of m1, m2, m3, fallback, straight_through, blend.
    """
    embeddings, weight, labels, out_dtype = checked_inputs(embeddings, weight, labels, reduction)
    embeddings = zero_rows_get_no_gradient(embeddings)  # normalised: x / max(|x|, eps)
    scale = check_scale(scale)
    if margin is None:
        margin = Margin(m1, m2, m3, fallback, blend, straight_through)
    if embeddings.shape[0] == 0:
        return empty_loss(reduction, embeddings, weight).to(out_dtype)

    row_scale = scale * embeddings.norm(dim=1) if scale_by_norm else None  # (N,) or None
    kind = resolve_impl(impl, embeddings, weight.shape[0])
    if kind == "eager":
        loss = eager_margin_cross_entropy(embeddings, weight, labels, scale, margin, row_scale)
        loss = reduce(loss, reduction)
    elif kind == "chunked":
        from .chunked import chunked_margin_cross_entropy

        loss = chunked_margin_cross_entropy(
            embeddings, weight, labels, scale, margin, row_scale, reduction
        )
    else:
        from .kernels import triton_margin_cross_entropy

        loss = triton_margin_cross_entropy(
            embeddings, weight, labels, scale, margin, row_scale, reduction
        )
    return checked_loss(loss, weight).to(out_dtype)


def checked_inputs(embeddings, weight, labels, reduction: str):
    """The checks every loss starts with: autocast casts, embeddings/weight (N, D)/(C, D),
    labels (N,) in [0, C), a known reduction. Returns (embeddings, weight, labels, out_dtype)."""
    embeddings, weight, out_dtype = autocast_inputs(embeddings, weight)
    check_embeddings(embeddings, weight)
    labels = check_labels(labels, embeddings.shape[0], weight.shape[0], embeddings.device)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return embeddings, weight, labels, out_dtype


def empty_loss(reduction: str, *tensors: torch.Tensor | None) -> torch.Tensor:
    """The loss of an empty batch: 0 (shape (0,) for reduction="none"), in the graph of every
    tensor given, so that backward gives each of them a zero gradient (not None)."""
    empty = sum(t.sum() * 0 for t in tensors if t is not None)
    return empty.expand(0) if reduction == "none" else empty


def checked_loss(loss: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """loss (or logits, or a gradient) as it is, or a ValueError naming the weight when it is
    not finite because the weight holds NaN or inf (a diverged run): the (C, D) weight is only
    scanned then."""
    if not bool(torch.isfinite(loss).all()):
        check_finite("weight", weight)
    return loss


def autocast_inputs(embeddings: torch.Tensor, weight: torch.Tensor):
    """Under autocast, cast both to the autocast dtype and return the loss in float32 (as
    F.cross_entropy does there); otherwise leave them and return the loss in their dtype."""
    check_tensor("embeddings", embeddings)
    check_tensor("weight", weight)
    device = embeddings.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        return embeddings.to(dtype), weight.to(dtype), torch.float32
    return embeddings, weight, embeddings.dtype


def eager_margin_cross_entropy(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    scale: float,
    margin: Margin,
    row_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample losses (N,) in compute_dtype, materialising the (N, C) logits."""
    cos = cosine_logits(embeddings, weight)  # (N, C)
    target = labels[:, None]  # (N, 1)
    if not margin.is_identity:
        psi = apply_margin(cos.gather(1, target).squeeze(1), margin)  # (N,)
        cos = cos.scatter(1, target, psi[:, None])  # (N, C), target column replaced
    r = scale if row_scale is None else row_scale.to(cos.dtype)[:, None]  # () or (N, 1)
    return F.cross_entropy(r * cos, labels, reduction="none")  # (N,)


def target_cosines(
    embeddings: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """cos_iy = <x_i / |x_i|, w_y / |w_y|> (N,) in compute_dtype, from the N target rows of
    weight only (differentiable in both)."""
    dtype = compute_dtype(embeddings.dtype)
    return (normalize(embeddings.to(dtype)) * normalize(weight[labels].to(dtype))).sum(1)


def target_cross_entropy(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    target_logit: torch.Tensor,
    *,
    scale: float,
    reduction: str = "mean",
    impl: str = "auto",
    non_target=None,
) -> torch.Tensor:
    """Cross-entropy of scale * cos with the target logit given per sample:

        logit_ij = scale * f_i(cos_ij)  (j != y_i),   logit_iy = target_logit_i
        loss_i   = logsumexp_j logit_ij - target_logit_i

    embeddings (N, D), weight (C, D), labels (N,), target_logit (N,): any differentiable
    function of the caller's (of target_cosines, |x_i|, per-sample margins); its gradient
    g_i (p_iy - 1) goes back through autograd. f is the identity, or ``non_target``: a
    callable (cos, param) -> (f(cos), f'(cos)), elementwise in torch ops and broadcasting
    param, with a per-row param (N,) in ``non_target.row_param`` (no gradient). impl:
    "auto", "eager" (materialises (N, C)), "chunked" (never does) or "triton" (the kernels;
    not with non_target), "auto" choosing as margin_cross_entropy does (chunked instead of
    triton with non_target). Returns the loss in the embeddings' dtype."""
    embeddings, weight, labels, out_dtype = checked_inputs(embeddings, weight, labels, reduction)
    embeddings = zero_rows_get_no_gradient(embeddings)  # normalised: x / max(|x|, eps)
    scale = check_scale(scale)
    check_tensor("target_logit", target_logit)
    if not target_logit.is_floating_point():
        raise TypeError(f"target_logit must be a float tensor, got dtype {target_logit.dtype}")
    if target_logit.shape != labels.shape or target_logit.device != embeddings.device:
        raise ValueError(
            f"target_logit must have shape {tuple(labels.shape)} on {embeddings.device}, got "
            f"shape {tuple(target_logit.shape)} on {target_logit.device}"
        )
    check_finite("target_logit", target_logit)
    if non_target is not None and tuple(non_target.row_param.shape) != tuple(labels.shape):
        raise ValueError(
            f"non_target.row_param must have shape {tuple(labels.shape)}, got "
            f"{tuple(non_target.row_param.shape)}"
        )
    if impl == "triton" and non_target is not None:
        raise ValueError("impl='triton' has no non-target transform (non_target, e.g. "
                         "CurricularFace); use impl='chunked'")
    if embeddings.shape[0] == 0:
        return empty_loss(reduction, embeddings, weight, target_logit).to(out_dtype)
    path = resolve_impl(impl, embeddings, weight.shape[0], plain=non_target is not None)
    if path == "triton":
        from .kernels import triton_target_cross_entropy

        loss = triton_target_cross_entropy(embeddings, weight, labels, target_logit, scale,
                                           reduction)
        return checked_loss(loss, weight).to(out_dtype)
    if path == "chunked":
        from .chunked import chunked_target_cross_entropy

        loss = chunked_target_cross_entropy(
            embeddings, weight, labels, target_logit, scale, reduction, non_target
        )
        return checked_loss(loss, weight).to(out_dtype)
    cos = cosine_logits(embeddings, weight)  # (N, C)
    if non_target is not None:
        cos = non_target(cos, non_target.row_param[:, None].to(cos.dtype))[0]
    logits = (scale * cos).scatter(1, labels[:, None], target_logit[:, None].to(cos.dtype))
    loss = F.cross_entropy(logits, labels, reduction=reduction)
    return checked_loss(loss, weight).to(out_dtype)


def margin_logits(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    scale: float,
    margin: Margin | None = None,
) -> torch.Tensor:
    """The (N, C) logits the loss sees: scale * cos, with psi on the target where labels
    are given (training view) and plain scale * cos where labels is None (evaluation view)."""
    embeddings, weight, _ = autocast_inputs(embeddings, weight)
    check_embeddings(embeddings, weight)
    if labels is not None:
        labels = check_labels(labels, embeddings.shape[0], weight.shape[0], embeddings.device)
    cos = cosine_logits(embeddings, weight)  # (N, C)
    if labels is not None and margin is not None and not margin.is_identity:
        target = labels[:, None]  # (N, 1)
        psi = apply_margin(cos.gather(1, target).squeeze(1), margin)
        cos = cos.scatter(1, target, psi[:, None])
    return scale * cos


@torch.no_grad()
def predict(
    embeddings: torch.Tensor, weight: torch.Tensor, block_size: int = 65536
) -> torch.Tensor:
    """argmax_j cos(x_i, w_j) (N,), computed over blocks of classes: O(N * block) memory."""
    x = normalize(embeddings)
    best = torch.full((x.shape[0],), -float("inf"), device=x.device)
    index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, weight.shape[0], block_size):
        cos = (x @ normalize(weight[start : start + block_size]).t()).float()  # (N, B)
        value, arg = cos.max(dim=1)
        better = value > best
        best = torch.where(better, value, best)
        index = torch.where(better, arg + start, index)
    return index


def softmax_cross_entropy(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    reduction: str = "mean",
    impl: str = "auto",
) -> torch.Tensor:
    """Plain softmax loss: cross_entropy(x W^T + b, y), no normalisation, no margin.
    embeddings (N, D), weight (C, D), bias (C,) or None, labels (N,). impl: "auto", "eager"
    or "chunked" (never holds the (N, C) logits)."""
    embeddings, weight, labels, out_dtype = checked_inputs(embeddings, weight, labels, reduction)
    if bias is not None:
        check_bias(bias, weight)
        bias = bias.to(weight.dtype)
    if embeddings.shape[0] == 0:
        return empty_loss(reduction, embeddings, weight, bias).to(out_dtype)
    if resolve_impl(impl, embeddings, weight.shape[0], plain=True) == "chunked":
        from .chunked import chunked_softmax_cross_entropy

        loss = chunked_softmax_cross_entropy(embeddings, weight, labels, bias, reduction)
        return checked_loss(loss, weight).to(out_dtype)
    logits = F.linear(embeddings, weight, bias)  # (N, C)
    logits = logits.to(compute_dtype(logits.dtype))
    if embeddings.requires_grad and torch.is_grad_enabled():
        checked_loss(logits, weight)  # a -inf logit: a finite loss, a NaN gradient (0 * inf)
    loss = F.cross_entropy(logits, labels, reduction=reduction)
    return checked_loss(loss, weight).to(out_dtype)
