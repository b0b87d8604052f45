"""A float16 zero embedding gets a zero gradient instead of inf.

Every path normalises x / max(|x|, eps), eps = 1e-12, so a zero row's gradient is g / eps:
finite in float32, float64 and bfloat16, but far beyond float16's largest value (65504),
where it became inf (and NaN where two such terms met). A nonzero float16 row has a norm of
at least 2^-24 > eps, so only exact zero rows meet the eps; they have no direction, and in
float16 their gradient is 0. Other rows and every other dtype are untouched.
"""

from __future__ import annotations

import torch


class _ZeroRowsGetNoGradient(torch.autograd.Function):
    """Identity forward (N, D); backward: the incoming gradient with the rows that were zero
    in the forward set to 0."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(~x.any(dim=1))  # (N,) the zero rows
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (zero,) = ctx.saved_tensors
        return grad.masked_fill(zero[:, None], 0)


def zero_rows_get_no_gradient(embeddings: torch.Tensor) -> torch.Tensor:
    """embeddings (N, D) as they are; in float16 with a gradient, through the op that gives
    the zero rows a zero gradient."""
    if embeddings.dtype != torch.float16 or not (
        embeddings.requires_grad and torch.is_grad_enabled()
    ):
        return embeddings
    return _ZeroRowsGetNoGradient.apply(embeddings)
