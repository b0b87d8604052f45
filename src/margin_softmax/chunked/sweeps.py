"""Sweeps over the tiles of classes: the log-sum-exp and the gradients, never (N, C) at once.

Per tile of classes [a, b) and rows R (class-major, (T, R)):

    logits = w_hat[a:b] @ (r x_hat)^T          GEMM 1, target cells set to -inf
    e      = exp(logits - m)                   in place, m the tile's max per row
    dcos   = row_grad * r * p   (p = e * exp(m - lse)),  the target cell g r (p_t - 1) psi'
    d_x_hat[rows] += dcos^T @ w_hat[a:b]       GEMM 2
    d_w_hat[a:b]  += dcos   @ x_hat[rows]      GEMM 3

The target logit stays out of the streamed sums and joins by logaddexp at the end (exact when
p_target ~ 1, where subtracting it back out would cancel).

Two schedules:
- ``recompute_sweeps`` (the shard primitives, and any C): one sweep for the lse, a second that
  recomputes GEMM 1 and does GEMMs 2 and 3: 4 GEMMs, memory one (T, N) tile.
- ``fused_sweeps`` (one device, C small enough to keep (C, R) floats): blocks of R rows; sweep k
  computes block k's exp into a kept (C, R) store while finishing block k-1's gradients from
  it, tile by tile (each weight tile is read once for both): 3 GEMMs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .targets import TargetCells
from .tiles import ClassTiles


@dataclass
class RowSide:
    """The row side. x (N, D): what d_w_hat is taken against (x_hat, or x if plain); scaled
    (N, D): r_i * x_i, the logits' right factor; both in weight's dtype. target (N,): local
    class index or -1; target_logit, row_scale (N,) in compute dtype."""

    x: torch.Tensor
    scaled: torch.Tensor
    target: torch.Tensor
    target_logit: torch.Tensor
    row_scale: torch.Tensor

    def target_cells(self, rows: slice, classes: ClassTiles) -> TargetCells:
        return TargetCells(self.target[rows], classes.num_classes, classes.tile)

    def owned_logit(self, rows: slice) -> torch.Tensor:
        """target_logit where this shard owns the target, -inf elsewhere (R,)."""
        return torch.where(self.target[rows] >= 0, self.target_logit[rows], -float("inf"))


@dataclass
class Gradients:
    """d_x (N, D) and d_weight (C, D) in compute dtype, d_bias (C,) or None, and dot (N,):
    sum_j dlogit_ij * logit_ij per row (for d_row_scale), or None."""

    d_x: torch.Tensor
    d_weight: torch.Tensor
    d_bias: torch.Tensor | None
    dot: torch.Tensor | None


def _exp_in_place(tile: torch.Tensor):
    """tile <- exp(tile - m) with m its max per column (row of the batch); returns m, sum."""
    m = tile.amax(0).clamp_min(torch.finfo(tile.dtype).min)  # (R,), finite if all -inf
    tile.sub_(m).exp_()
    return m, tile.sum(0)


def _entropy_term(e: torch.Tensor, m: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """sum_j e_ij * logit_ij (R,) for e = exp(logit - m): sum e log e + m * sum e."""
    return torch.special.xlogy(e, e).sum(0) + m * total


def _mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool) -> None:
    """out (+)= a @ b; a in compute dtype is cast to b's dtype for the matmul (half inputs)."""
    if a.dtype == b.dtype == out.dtype:
        if accumulate:
            out.addmm_(a, b)
        else:
            torch.mm(a, b, out=out)
        return
    product = (a.to(b.dtype) @ b).to(out.dtype)
    if accumulate:
        out += product
    else:
        out.copy_(product)


def _gradient_gemms(tile, w, x, d_x, d_weight, d_bias, accumulate: bool) -> None:
    """GEMMs 2 and 3 from dcos in tile (T, R): d_x (R, D) += tile^T w; d_weight (T, D)
    (+)= tile x; d_bias (T,) (+)= row sums (plain softmax)."""
    _mm_into(d_x, tile.t(), w, accumulate=True)
    _mm_into(d_weight, tile, x, accumulate)
    if d_bias is not None:
        if accumulate:
            d_bias += tile.sum(1)
        else:
            torch.sum(tile, 1, out=d_bias)


def _target_dcos(rows, block, cells, lse, coef, target_dpsi):
    """dcos at the target cells, in cell order (M,): g r (p_t - 1) psi', p_t - 1 as expm1."""
    dcos = coef * torch.expm1(rows.target_logit[block] - lse) * target_dpsi[block]  # (R,)
    return dcos[cells.rows]


def _new_gradients(rows, classes, need_dot) -> Gradients:
    acc, (n, d) = classes.acc, rows.x.shape
    return Gradients(
        d_x=torch.zeros(n, d, dtype=acc, device=rows.x.device),
        d_weight=torch.empty(classes.num_classes, d, dtype=acc, device=rows.x.device),
        d_bias=None if classes.bias is None else torch.empty_like(classes.bias),
        dot=torch.zeros(n, dtype=acc, device=rows.x.device) if need_dot else None,
    )


def _target_dot(rows, block, lse):
    """The target cell's share of sum_j dlogit_ij logit_ij: (p_t - 1) * target_logit (R,)."""
    owned = rows.target[block] >= 0
    t = rows.target_logit[block]
    return torch.where(owned, torch.expm1(t - lse) * t, 0.0)


@torch.no_grad()
def lse_sweep(classes: ClassTiles, rows: RowSide) -> torch.Tensor:
    """lse_i (N,) over the classes of logit_ij, the target cell holding target_logit."""
    n, everything = rows.x.shape[0], slice(None)
    cells = rows.target_cells(everything, classes)
    work = torch.empty(classes.tile * n, dtype=classes.acc, device=rows.x.device)
    lse = torch.full((n,), -float("inf"), dtype=classes.acc, device=rows.x.device)
    for ti, a, b in classes.ranges():
        tile = classes.logits(
            classes.weights(a, b), rows.scaled.t(), a, work[: (b - a) * n].view(b - a, n)
        )
        cells.fill(tile, ti, a, -float("inf"))
        m, total = _exp_in_place(tile)
        lse = torch.logaddexp(lse, m + total.log())
    return torch.logaddexp(lse, rows.owned_logit(everything))


@torch.no_grad()
def gradient_sweep(classes, rows, lse, row_grad, target_dpsi, need_dot=False) -> Gradients:
    """Gradients of sum_i row_grad_i * (lse_i - target_logit_i), lse (N,) given (global)."""
    n, everything = rows.x.shape[0], slice(None)
    cells = rows.target_cells(everything, classes)
    coef = row_grad * rows.row_scale  # (N,) dloss/dlogit -> dloss/dcos
    target_dcos = _target_dcos(rows, everything, cells, lse, coef, target_dpsi)
    grads = _new_gradients(rows, classes, need_dot)
    work = torch.empty(classes.tile * n, dtype=classes.acc, device=rows.x.device)
    for ti, a, b in classes.ranges():
        w = classes.weights(a, b)
        tile = classes.logits(w, rows.scaled.t(), a, work[: (b - a) * n].view(b - a, n))
        cells.fill(tile, ti, a, -float("inf"))
        tile.sub_(lse).exp_()  # p, 0 at the target cells
        if need_dot:
            grads.dot += _entropy_term(tile, lse, tile.sum(0))
        tile.mul_(coef)  # dcos
        cells.put(tile, ti, a, target_dcos)
        d_bias = None if grads.d_bias is None else grads.d_bias[a:b]
        _gradient_gemms(tile, w, rows.x, grads.d_x, grads.d_weight[a:b], d_bias, False)
        if classes.inv_norm is not None:
            grads.d_weight[a:b] = classes.weight_grad(grads.d_weight[a:b], a, b)
    if need_dot:
        grads.dot += _target_dot(rows, everything, lse)
    return grads


@dataclass
class _DueBlock:
    """A block whose exp sits in the store and whose gradients the next sweep computes."""

    rows: slice
    cells: TargetCells
    factor: torch.Tensor  # (tiles, R): g r exp(m_tile - lse), turns e into dcos
    target_dcos: torch.Tensor  # (M,) in cell order


def _store_view(store: torch.Tensor, rows: slice, a: int, b: int) -> torch.Tensor:
    width = rows.stop - rows.start
    return store[a * width : b * width].view(b - a, width)


@torch.no_grad()
def fused_sweeps(classes, rows, row_grad, target_dpsi, block_rows, need_dot=False):
    """(lse (N,), Gradients) in len(blocks) + 1 sweeps and 3 GEMMs per (tile, block), keeping
    a (C, block_rows) store of exp values. Blocks after the first may not be wider than it
    (the next block's tile overwrites the one just consumed)."""
    n = rows.x.shape[0]
    blocks = [slice(r, min(n, r + block_rows)) for r in range(0, n, block_rows)]
    store = torch.empty(
        classes.num_classes * min(n, block_rows), dtype=classes.acc, device=rows.x.device
    )
    lse = torch.empty(n, dtype=classes.acc, device=rows.x.device)
    grads = _new_gradients(rows, classes, need_dot)
    due = None
    for k in range(len(blocks) + 1):
        block = blocks[k] if k < len(blocks) else None
        if block is not None:
            cells = rows.target_cells(block, classes)
            stats = []  # per tile: (m, sum[, entropy term]), each (R,)
        for ti, a, b in classes.ranges():
            w = classes.weights(a, b)
            if due is not None:
                tile = _store_view(store, due.rows, a, b)
                tile.mul_(due.factor[ti])  # dcos
                due.cells.put(tile, ti, a, due.target_dcos)
                d_bias = None if grads.d_bias is None else grads.d_bias[a:b]
                d_w = grads.d_weight[a:b]
                _gradient_gemms(tile, w, rows.x[due.rows], grads.d_x[due.rows], d_w, d_bias, k > 1)
                if (
                    block is None and classes.inv_norm is not None
                ):  # the last sweep: d_w_hat is complete for this tile
                    d_w.copy_(classes.weight_grad(d_w, a, b))
            if block is not None:
                tile = classes.logits(w, rows.scaled[block].t(), a, _store_view(store, block, a, b))
                cells.fill(tile, ti, a, -float("inf"))
                m, total = _exp_in_place(tile)
                stats.append((m, total, _entropy_term(tile, m, total)) if need_dot else (m, total))
        if block is None:
            break
        m, total = torch.stack([s[0] for s in stats]), torch.stack([s[1] for s in stats])
        lse[block] = torch.logaddexp((m + total.log()).logsumexp(0), rows.owned_logit(block))
        coef = row_grad[block] * rows.row_scale[block]  # (R,)
        weight = torch.exp(m - lse[block])  # (tiles, R)
        if need_dot:
            entropy = torch.stack([s[2] for s in stats])
            grads.dot[block] = (weight * entropy).sum(0) + _target_dot(rows, block, lse[block])
        due = _DueBlock(
            block,
            cells,
            coef * weight,
            _target_dcos(rows, block, cells, lse[block], coef, target_dpsi),
        )
    return lse, grads
