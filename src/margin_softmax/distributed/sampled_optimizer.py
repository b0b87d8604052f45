"""Partial FC without moving the rows that were not sampled.

A plain optimizer step moves every row of the head's weight, sampled or not: weight decay
shrinks it and momentum (or Adam's moments) keeps pushing it with old gradients. This
wrapper runs the wrapped optimizer's own step on the sampled rows only:

    sub = weight[rows]; sub.grad = weight.grad[rows]; state(sub) = state(weight)[rows]
    optimizer.step()          # with sub standing in for weight in its param group
    weight[rows] = sub; state(weight)[rows] = state(sub)

so the other rows and their optimizer state stay bit-for-bit unchanged, whatever the rule
(SGD, momentum, weight decay, Adam, AdamW). ``rows`` is the union of the samples of every
forward since the last step or zero_grad (``head.rows_since_step``; gradient accumulation
over micro-batches, each with its own sample), and of every row with a non-zero gradient. A
sampled row whose gradient is exactly zero (a sub-centre that was nobody's best) still
steps: it was part of the loss. State tensors shaped like the weight are sliced;
other state (Adam's step count) is shared by the whole weight. Every other parameter of the
optimizer (the backbone) takes its usual step in the same call.
"""

from __future__ import annotations

import torch
from torch import nn


class SampledRowsOptimizer:
    """Wraps ``optimizer`` so that ``head.weight`` moves only at ``head.sampled_rows``
    (all rows when that is None). Use it where you would use the optimizer; give the wrapped
    optimizer itself to learning-rate schedulers."""

    def __init__(self, optimizer: torch.optim.Optimizer, head: nn.Module) -> None:
        self.optimizer, self.head = optimizer, head
        self.group = next(
            (g for g in optimizer.param_groups if any(p is head.weight for p in g["params"])),
            None,
        )
        if self.group is None:
            raise ValueError("the head's weight is not among the optimizer's parameters")

    def __getattr__(self, name: str):  # state_dict, param_groups, ...
        return getattr(self.optimizer, name)

    def _pending(self) -> list:
        return getattr(self.head, "rows_since_step", [])

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._pending().clear()  # the samples of a discarded accumulation do not step
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        rows, weight, pending = self.head.sampled_rows, self.head.weight, self._pending()
        if weight.grad is None or (rows is None and not pending):
            pending.clear()
            return self.optimizer.step(closure)
        # every sample since the last step (gradient accumulation over micro-batches, each
        # with its own sample) and every row with a gradient steps, not only the last sample
        touched = weight.grad.any(dim=1)  # (C_r,)
        for sample in [*pending, *([] if rows is None else [rows])]:
            touched[sample] = True
        pending.clear()
        rows = touched.nonzero().squeeze(1)  # (K,) sorted
        params = self.group["params"]
        slot = next(i for i, p in enumerate(params) if p is weight)
        state = self.optimizer.state.pop(weight, {})
        sub = nn.Parameter(weight.detach()[rows])  # (K, D)
        sub.grad = weight.grad[rows]
        self.optimizer.state[sub] = {k: _rows(v, weight, rows) for k, v in state.items()}
        params[slot] = sub
        try:
            return self.optimizer.step(closure)
        finally:
            params[slot] = weight
            sub_state = self.optimizer.state.pop(sub, {})
            with torch.no_grad():
                weight[rows] = sub
                for key, value in sub_state.items():
                    state[key] = _put_rows(state.get(key), value, weight, rows)
            self.optimizer.state[weight] = state


def _rows(value, weight: torch.Tensor, rows: torch.Tensor):
    """The sampled rows of a state tensor shaped like the weight; other state as it is."""
    if torch.is_tensor(value) and value.shape == weight.shape:
        return value[rows]
    return value


def _put_rows(full, value, weight: torch.Tensor, rows: torch.Tensor):
    """Write the sub-state back: row-shaped tensors into their rows (zeros elsewhere when the
    state is new), anything else replaces the old value."""
    if not (torch.is_tensor(value) and value.dim() == 2 and value.shape[0] == rows.numel()
            and value.shape[1:] == weight.shape[1:]):
        return value
    if full is None or not torch.is_tensor(full) or full.shape != weight.shape:
        full = torch.zeros(weight.shape, dtype=value.dtype, device=value.device)
    full[rows] = value
    return full
