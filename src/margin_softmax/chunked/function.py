"""The chunked cross-entropy as one autograd.Function: margin losses, plain softmax, and a
target logit given per sample (the heads whose margin differs from sample to sample).

Forward: the target logit from the N target rows of weight (psi and psi' from margins.py),
or as given, then the sweeps over tiles of classes (sweeps.py). The fused schedule (a scalar
reduction, C small enough) computes the gradients in the forward call, which saves recomputing
the logits, and keeps them in compute dtype: backward scales them by grad_output before the
cast, so a GradScaler's scale reaches them before float16 rounding does. Two sweeps (larger C,
reduction="none") run the gradient sweep in backward with grad_output per row. Half inputs:
matmuls in their dtype, softmax and sums in float32, and the loss comes back in float32
(functional.py casts it to the embeddings' dtype, or keeps float32 under autocast as
F.cross_entropy does).
"""

from __future__ import annotations

import torch

from ..margins import Margin
from ..numerics import compute_dtype
from ..validation import check_finite
from . import plan
from .shard import row_scale_gradient
from .sweeps import RowSide, fused_sweeps, gradient_sweep, lse_sweep
from .tiles import ClassTiles, matmul_dtype
from .unit_rows import unit_rows, unit_rows_backward


def _target_dot(x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """<x_i, w_i> (N,) in compute dtype, both rounded to dtype first like the tiles' matmul."""
    return (x.to(dtype).to(x.dtype) * w.to(dtype).to(x.dtype)).sum(1)


def _row_side(embeddings, weight, labels, bias, scale, margin, row_scale, target_logit,
              non_target):
    """(RowSide, x, x_norm or None, psi' (N,) or None): the row side in compute dtype. A given
    target_logit (N,) is taken as it is: its gradient goes back through autograd, so the
    target cells get no psi' term here (None)."""
    acc, wd = compute_dtype(embeddings.dtype), matmul_dtype(weight.dtype)
    n = embeddings.shape[0]
    if margin is None and target_logit is None:  # plain softmax: logits x W^T + b
        x, x_norm = embeddings.to(acc), None
        target_logit = _target_dot(x, weight[labels].to(acc), wd)
        if bias is not None:
            target_logit = target_logit + bias[labels].to(acc)
        r, dpsi = torch.ones_like(target_logit), torch.ones_like(target_logit)
        scaled = x
    else:
        x, x_norm = unit_rows(embeddings.to(acc))  # (N, D), (N,)
        r = torch.full((n,), scale, dtype=acc, device=x.device)
        r = r if row_scale is None else row_scale.to(acc)
        if target_logit is None:
            w_hat, _ = unit_rows(weight[labels].to(acc))  # (N, D): the N target centres
            psi, dpsi = margin.psi_and_grad(_target_dot(x, w_hat, wd))
            target_logit = r * psi
        else:
            target_logit, dpsi = target_logit.detach().to(acc), None
        scaled = r[:, None] * x
    rows = RowSide(x.to(wd), scaled.to(wd), labels, target_logit, r, non_target)
    return rows, x, x_norm, dpsi


class ChunkedCrossEntropy(torch.autograd.Function):
    """loss_i = logsumexp_j logit_ij - logit_iy, logits never held whole (see module doc)."""

    @staticmethod
    def forward(
        ctx, embeddings, weight, row_scale, bias, target_logit, labels, scale, margin,
        non_target, reduction,
    ):
        with torch.autocast(embeddings.device.type, enabled=False):
            rows, x, x_norm, dpsi = _row_side(
                embeddings, weight, labels, bias, scale, margin, row_scale, target_logit,
                non_target,
            )
            n, c = embeddings.shape[0], weight.shape[0]
            need_grads = any(ctx.needs_input_grad[:5])
            need_dot = row_scale is not None and ctx.needs_input_grad[2]
            bias_dtype = None if bias is None else bias.dtype
            target_dtype = None if target_logit is None else target_logit.dtype
            ctx.extra = (
                reduction, x, x_norm, row_scale is not None, bias_dtype, need_dot, target_dtype
            )
            ctx.dtypes = (weight.dtype, weight.dtype, None, bias_dtype, target_dtype)
            widths = None  # two sweeps
            if need_grads and reduction != "none":
                wide = compute_dtype(weight.dtype) != weight.dtype  # a float32 (C, D) for A
                widths = plan.plan_blocks(n, c, 4 * c * weight.shape[1] if wide else 0)
            tile_bytes = plan.tile_bytes(widths is not None, embeddings.device.type)
            tile = plan.tile_classes(n if widths is None else widths[0], tile_bytes, c)
            classes = ClassTiles(weight, tile, x_norm is not None, bias)
            ctx.state = None
            if widths is not None:  # the gradients now, in compute dtype until backward
                row_grad = torch.full_like(rows.target_logit, 1 / n if reduction == "mean" else 1)
                gap, grads = fused_sweeps(classes, rows, row_grad, dpsi, widths, need_dot)
                ctx.grads = _input_gradients(ctx, grads, rows, gap, row_grad, weight)
            else:  # the gradient sweep runs in backward, with grad_output in row_grad
                other = lse_sweep(classes, rows, with_target=False)  # (N,) without the target
                lse, gap = torch.logaddexp(other, rows.target_logit), other - rows.target_logit
                ctx.state = (classes, rows, lse, gap, dpsi)
            loss = torch.logaddexp(gap, torch.zeros_like(gap))  # (N,) lse - target_logit, exact
            if reduction == "none":
                return loss  # (N,) in compute dtype: the caller casts (under autocast: float32)
            return loss.mean() if reduction == "mean" else loss.sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        """The gradients times grad_output (a GradScaler's scale, a per-row weighting) before
        they are rounded to half inputs' dtype: small ones survive float16."""
        with torch.autocast(grad_output.device.type, enabled=False):
            if ctx.state is not None:  # two sweeps
                classes, rows, lse, gap, dpsi = ctx.state
                row_grad = grad_output.to(lse.dtype).expand(lse.shape)  # (N,)
                if ctx.extra[0] == "mean":
                    row_grad = row_grad / lse.shape[0]
                grads = gradient_sweep(classes, rows, lse, row_grad, dpsi, ctx.extra[5], gap)
                result = _input_gradients(ctx, grads, rows, gap, row_grad, classes.weight)
            else:
                if getattr(ctx, "grads", None) is None:
                    raise RuntimeError(
                        "chunked cross-entropy: backward ran twice (retain_graph is not "
                        "supported for reduction='mean' or 'sum' at this size)"
                    )
                result, ctx.grads = ctx.grads, None  # drop our reference: autograd may keep it
                if not bool(grad_output == 1):
                    result = tuple(None if g is None else g.mul_(grad_output) for g in result)
        pairs = zip(result, ctx.dtypes, strict=True)
        result = (g if g is None or t is None else g.to(t) for g, t in pairs)  # input dtypes
        return *result, None, None, None, None, None


def _input_gradients(ctx, grads, rows, gap, row_grad, weight):
    """(d_embeddings, d_weight, d_row_scale, d_bias, d_target_logit) in compute dtype (two
    sweeps: d_weight in the weight's); d_target_logit_i = g_i (p_it - 1),
    p_it - 1 = -sigmoid(gap_i) without cancellation."""
    _, x, x_norm, has_row_scale, bias_dtype, need_dot, target_dtype = ctx.extra
    d_x = grads.d_x if x_norm is None else unit_rows_backward(grads.d_x, x, x_norm)
    if d_x is not None and not bool(torch.isfinite(d_x).all()):
        # plain softmax: an inf in a weight row with x . w = -inf leaves the loss finite and
        # d_x NaN (0 * inf); name the weight as a NaN loss would
        check_finite("weight", weight)
    d_row_scale = None
    if has_row_scale and need_dot:
        d_row_scale = row_scale_gradient(grads.dot, rows.row_scale, row_grad)
    d_bias = None if bias_dtype is None else grads.d_bias
    d_target = None if target_dtype is None else row_grad * -torch.sigmoid(gap)
    return d_x, grads.d_weight, d_row_scale, d_bias, d_target


def _apply(*args):
    """ChunkedCrossEntropy.apply(*args); under no_grad (an evaluation loss) on detached
    tensors: needs_input_grad follows requires_grad, not the grad mode, and the fused
    schedule would compute every gradient in the forward."""
    if not torch.is_grad_enabled():
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    return ChunkedCrossEntropy.apply(*args)


def chunked_margin_cross_entropy(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    scale: float,
    margin: Margin,
    row_scale: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """margin_cross_entropy(...) without the (N, C) logits. embeddings (N, D), weight (C, D),
    labels (N,), row_scale (N,) or None (then r_i = scale). Returns a scalar or (N,)."""
    return _apply(
        embeddings, weight, row_scale, None, None, labels, scale, margin, None, reduction
    )


def chunked_softmax_cross_entropy(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """cross_entropy(x W^T + b, labels) without the (N, C) logits; x (N, D), W (C, D)."""
    return _apply(embeddings, weight, None, bias, None, labels, 1.0, None, None, reduction)


def chunked_target_cross_entropy(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    target_logit: torch.Tensor,
    scale: float,
    reduction: str = "mean",
    non_target=None,
) -> torch.Tensor:
    """cross_entropy(scale * cos with column y_i of row i set to target_logit_i, labels)
    without the (N, C) logits. embeddings (N, D), weight (C, D), labels (N,), target_logit
    (N,) any differentiable function of the caller's (its gradient, g (p_t - 1), goes back
    through autograd). non_target: None, or scale * f(cos) off the target (see
    sweeps.RowSide). Returns a scalar or (N,)."""
    return _apply(
        embeddings, weight, None, None, target_logit, labels, scale, None, non_target, reduction
    )
