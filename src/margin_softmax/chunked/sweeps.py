"""Sweeps over tiles of classes: the log-sum-exp and the gradients, never (N, C) at once.

Logits are kept class-major: a tile of classes [a, b) for R rows is a (T, R) tensor. The
GEMMs use the raw weight rows w_j; the norms n_j = max(|w_j|, eps) are applied to the tiles:

    logits = w[a:b] @ (r x_hat)^T / n[a:b] - m     GEMM 1; target cells set to -inf
    e      = exp(logits)                           in place; m a shift per row (below)
    dcos   = e * h,  h = g r exp(m - lse)          (= g r p off the target; h per row)
    A[a:b]        += (e / n) (h x_hat[rows])       GEMM 3; A_j = dL/dw_hat_j / n_j
    d_x_hat[rows] += h (e / n)^T w[a:b]            GEMM 2; h applied once per block
    dL/dw_j = A_j - w_hat_j <w_hat_j, A_j>         (the normalisation, once per tile at the end)

Each op on a (T, R) tile is one parallel region of the intra-op threads, and each region ends
with every thread waiting for the slowest: on a machine shared with other processes a thread
that is not running costs one scheduler time slice per region. So the tiles are large and a
tile gets few passes: h goes into GEMM 3's (R, D) operand and GEMM 2's (R, D) result instead
of a pass over the tile, and the target cells' rows go into A by index_put_ (index_add_
opens several regions for a handful of rows).

The target cell stays out of the streamed sums: its logit joins the lse by logaddexp (exact
when p_target ~ 1, where subtracting it back out would cancel), and its gradient
g r (p_t - 1) psi' is added as rank-one terms (to d_x per block, to A per tile), or left to
the caller where the target logit comes as a tensor with its own autograd (target_dpsi None).
Where the lse over the other classes is known (one device), the loss and p_t - 1 come from
gap = lse_other - target_logit: loss = log(1 + e^gap), p_t - 1 = -sigmoid(gap), exact as
p_t -> 1; from the rounded lse, lse - t and expm1(t - lse) keep only its rounding, ulp(s).
Plain softmax: no norms, and a bias. A non-target transform logit_ij = r_i f(cos_ij)
(RowSide.non_target) is applied to each tile after GEMM 1, and its slope f' multiplies e
before the gradient GEMMs (in the fused schedule the store keeps e f').

The shift m: logits are r_i * cos_ij <= r_i, so for r_i <= SHIFT_MAX_SCALE the fixed
m_i = r_i - SHIFT keeps logit - m in [SHIFT - 2 r_i, SHIFT]: exp neither overflows (nor does
a sum of 2^32 terms, nor GEMM 2's sums of e times unit rows) nor leaves float32's normal
range, and the tile needs no max pass; the shift fuses into the norm pass. Larger r_i
(SphereFace's r = s |x|) and plain softmax (no bound) use the tile's max m_t: the gradient
pass then first multiplies each tile by exp(m_t - M), M the largest m_t of the row, and h
uses M. Half inputs multiply the float32 tile by h before casting it for the GEMMs (one
rounding, as the eager path has) and use x_hat itself in GEMM 3.

Two schedules:
- ``lse_sweep`` then ``gradient_sweep`` (the shard primitives; any C): 4 GEMMs, memory one
  (T, N) tile.
- ``fused_sweeps`` (one device, C small enough to keep (C, R) floats): blocks of R rows; sweep
  k computes block k's exp into a kept (C, R) store while finishing block k-1's gradients
  from it, tile by tile, reading each weight tile once for both: 3 GEMMs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .targets import TargetCells
from .tiles import ClassTiles


@dataclass
class RowSide:
    """The row side. x (N, D): x_hat, or x if plain; scaled (N, D): r_i * x_i, the logits'
    right factor; both in weight's dtype. target (N,): local class index or -1;
    target_logit, row_scale (N,) in compute dtype. non_target: None, or an elementwise
    transform of the non-target cosines, logit_ij = r_i f_i(cos_ij): a callable
    (cos, param) -> (f(cos), f'(cos)) broadcasting param, with its per-row param (N,) in
    ``non_target.row_param`` (CurricularFace's hard negatives)."""

    x: torch.Tensor
    scaled: torch.Tensor
    target: torch.Tensor
    target_logit: torch.Tensor
    row_scale: torch.Tensor
    non_target: object | None = None

    def owned_logit(self, rows: slice) -> torch.Tensor:
        """target_logit where this shard owns the target, -inf elsewhere (R,)."""
        return torch.where(self.target[rows] >= 0, self.target_logit[rows], -float("inf"))


@dataclass
class Gradients:
    """d_x (N, D) in compute dtype, d_weight (C, D) in compute dtype (fused sweeps: A
    accumulates over blocks of rows) or the weight's (two sweeps: each tile is written once,
    so half inputs need no float32 (C, D)), d_bias (C,) or None, and dot (N,):
    sum_j dlogit_ij * logit_ij per row (for d_row_scale), or None."""

    d_x: torch.Tensor
    d_weight: torch.Tensor
    d_bias: torch.Tensor | None
    dot: torch.Tensor | None


def _new_gradients(rows: RowSide, classes: ClassTiles, need_dot: bool, weight_dtype) -> Gradients:
    """d_weight (in weight_dtype) uninitialised: the first gradient pass over each tile
    writes it."""
    acc, (n, d), device = classes.acc, rows.x.shape, rows.x.device
    return Gradients(
        d_x=torch.zeros(n, d, dtype=acc, device=device),
        d_weight=torch.empty(classes.num_classes, d, dtype=weight_dtype, device=device),
        d_bias=None if classes.bias is None else torch.zeros_like(classes.bias),
        dot=torch.zeros(n, dtype=acc, device=device) if need_dot else None,
    )


SHIFT, SHIFT_MAX_SCALE = 64.0, 75.0


def fixed_shift(classes: ClassTiles, rows: RowSide) -> torch.Tensor | None:
    """m_i = r_i - SHIFT (N,) where it is safe for every row (see module doc), else None."""
    if classes.inv_norm is None or rows.non_target is not None or rows.row_scale.numel() == 0:
        return None  # no bound r_i on the logits
    if float(rows.row_scale.abs().max()) > SHIFT_MAX_SCALE:
        return None
    return rows.row_scale.abs() - SHIFT


def _bend(rows: RowSide, block: slice, tile: torch.Tensor) -> torch.Tensor | None:
    """tile (T, R) of r cos -> r f(cos) in place; returns f'(cos) (T, R), or None where
    there is no non-target transform."""
    f = rows.non_target
    if f is None:
        return None
    r = rows.row_scale[block]  # (R,)
    value, slope = f(tile / r, f.row_param[block])
    tile.copy_(value).mul_(r)
    return slope


def _tile_exp(classes, rows, block, a, b, out, cells, shift):
    """out (T, R) <- exp(logits - m), target cells 0; returns (tile, m (R,), sums (R,),
    f' (T, R) or None)."""
    tile = classes.logits(rows.scaled[block].t(), a, b, out, minus=shift)
    slope = _bend(rows, block, tile)
    cells.fill(tile, a, -float("inf"))
    if shift is None:
        shift = tile.amax(0).clamp_min(torch.finfo(tile.dtype).min)  # finite if all -inf
        tile.sub_(shift)
    tile.exp_()
    return tile, shift, tile.sum(0), slope


def _entropy_term(e: torch.Tensor, m: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """sum_j e_ij * logit_ij (R,) for e = exp(logit - m): sum e log e + m * sum e."""
    return torch.special.xlogy(e, e).sum(0) + m * total


def _mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, accumulate: bool = True) -> None:
    """out (+)= a @ b, the matmul in b's dtype (a is cast for half inputs)."""
    if a.dtype == b.dtype == out.dtype:
        out.addmm_(a, b) if accumulate else torch.mm(a, b, out=out)
    elif accumulate:
        out += (a.to(b.dtype) @ b).to(out.dtype)
    else:
        out.copy_(a.to(b.dtype) @ b)


@dataclass
class DueBlock:
    """A block of rows whose exp values are known and whose gradients are due (see the module
    doc): block (a slice of the rows); tile_factor (tiles, R) or None, multiplied into each
    tile first; operand (R, D), GEMM 3's right factor (h x_hat, or x_hat); row_factor (R,)
    or None, h for GEMM 2's result; cells, the block's TargetCells, with their share of A
    (M, D) in cell order (target_rows) and of d_x (R, D) (target_dx), or None."""

    block: slice
    tile_factor: torch.Tensor | None
    operand: torch.Tensor
    row_factor: torch.Tensor | None
    cells: TargetCells
    target_rows: torch.Tensor | None
    target_dx: torch.Tensor | None


def _due_block(classes, rows, block, h, tile_factor, lse, coef, target_dpsi, grads, cells,
               gap=None):
    """The DueBlock of a block of R rows: h (R,) and tile_factor (tiles, R) or None as in the
    module doc, lse (R,) the full log-sum-exp, coef (R,) = g r."""
    if classes.mm != classes.acc:  # half: dcos in float32, then one cast
        tile_factor = h.expand(classes.num_tiles, -1) if tile_factor is None else tile_factor * h
        h = None
    x = rows.x[block]
    operand = x if h is None else h[:, None] * x
    target_dx, target_rows = _target_gradients(classes, rows, block, lse, coef, target_dpsi,
                                                grads, cells, gap)
    return DueBlock(block, tile_factor, operand, h, cells, target_rows, target_dx)


def _tile_gradients(classes, due, ti, a, b, tile, grads, dest, first):
    """The gradients of due's rows from tile ti of classes [a, b): tile (T, R) holds e (or
    e f'), 0 at the target cells, and is consumed; dest (T, D) in compute dtype gets A[a:b]
    (first: not yet written), grads.d_x[due.block] the GEMM 2 before h (_finish_rows)."""
    if due.tile_factor is not None:
        tile.mul_(due.tile_factor[ti])
    if grads.d_bias is not None:  # plain softmax: dL/db_j = sum_i dcos_ij
        grads.d_bias[a:b] += tile.sum(1) if due.row_factor is None else tile @ due.row_factor
    tile = classes.divide_by_norm(tile, a, b).to(classes.mm)  # one cast for both GEMMs
    _mm(tile, due.operand, dest, accumulate=not first)  # GEMM 3
    if due.target_rows is not None:
        due.cells.add_rows(dest, a, due.target_rows)
    _mm(tile.t(), classes.weights(a, b), grads.d_x[due.block])  # GEMM 2


def _finish_rows(due, grads) -> None:
    """d_x[block] after its last tile: times h, plus the target cells' share."""
    d_x = grads.d_x[due.block]
    if due.row_factor is not None:
        d_x.mul_(due.row_factor[:, None])
    if due.target_dx is not None:
        d_x += due.target_dx


def p_target_minus_1(target_logit, lse, gap=None) -> torch.Tensor:
    """p_t - 1 (R,): -sigmoid(gap), gap = lse_other - target_logit, where known (exact as
    p_t -> 1); else expm1(t - lse) (a caller of the shard primitives that passes no gap)."""
    return torch.expm1(target_logit - lse) if gap is None else -torch.sigmoid(gap)


def _target_gradients(classes, rows, block, lse, coef, target_dpsi, grads, cells, gap=None):
    """The target cells' share, dcos_t = g r (p_t - 1) psi' (R,): the d_bias and dot terms
    added now; returns its d_x rows dcos_t w_hat_t (R, D) and its A rows dcos_t / n_t x_i
    (M, D) in cell order. (None, None) when target_dpsi is None: a target logit given as a tensor
    gets its gradient through the caller's autograd, and no term here (nor in dot: it does
    not depend on r)."""
    if target_dpsi is None:
        return None, None
    owned = rows.target[block] >= 0
    t = rows.target[block].clamp_min(0)  # (R,); rows owned elsewhere add zeros
    p_minus_1 = p_target_minus_1(rows.target_logit[block], lse, gap)  # (R,)
    dcos = torch.where(owned, coef * p_minus_1 * target_dpsi[block], 0.0)  # (R,)
    if grads.dot is not None:  # the target's (p_t - 1) * target_logit
        grads.dot[block] += torch.where(owned, p_minus_1 * rows.target_logit[block], 0.0)
    if classes.num_classes == 0:
        return None, None
    if grads.d_bias is not None:
        grads.d_bias.index_put_((t,), dcos, accumulate=True)
    centre, inv_norm = classes.centres(t)  # (R, D) w_hat_t, (R,)
    x = rows.x[block].to(dcos.dtype).index_select(0, cells.rows)  # (M, D)
    return dcos[:, None] * centre, (dcos * inv_norm)[cells.rows, None] * x


def _tile_view(store: torch.Tensor, width: int, a: int, b: int) -> torch.Tensor:
    """The contiguous (b - a, width) tile of a class-major flat store."""
    return store[a * width : b * width].view(b - a, width)


@torch.no_grad()
def lse_sweep(classes: ClassTiles, rows: RowSide, with_target: bool = True) -> torch.Tensor:
    """lse_i (N,) over the classes of logit_ij, the target cell holding target_logit (or,
    with_target=False, over the other classes only)."""
    n, everything = rows.x.shape[0], slice(None)
    cells = TargetCells(rows.target, classes.num_classes, classes.tile)
    work = torch.empty(classes.tile * n, dtype=classes.acc, device=rows.x.device)
    lse = torch.full((n,), -float("inf"), dtype=classes.acc, device=rows.x.device)
    shift = fixed_shift(classes, rows)
    for a, b in classes.ranges():
        out = work[: (b - a) * n].view(b - a, n)
        _, m, total, _ = _tile_exp(classes, rows, everything, a, b, out, cells, shift)
        lse = torch.logaddexp(lse, m + total.log())
    return torch.logaddexp(lse, rows.owned_logit(everything)) if with_target else lse


@torch.no_grad()
def gradient_sweep(classes, rows, lse, row_grad, target_dpsi, need_dot=False, gap=None):
    """Gradients of sum_i row_grad_i * (lse_i - target_logit_i), lse (N,) given (global);
    gap (N,) = lse_other - target_logit where known (p_target_minus_1)."""
    n, everything = rows.x.shape[0], slice(None)
    cells = TargetCells(rows.target, classes.num_classes, classes.tile)
    coef = row_grad * rows.row_scale  # (N,) dloss/dlogit -> dloss/dcos
    grads = _new_gradients(rows, classes, need_dot, classes.weight.dtype)
    # the tiles hold p = exp(logit - lse): the shift is lse, and h = coef
    due = _due_block(classes, rows, everything, coef, None, lse, coef, target_dpsi, grads, cells,
                     gap)
    work = torch.empty(classes.tile * n, dtype=classes.acc, device=rows.x.device)
    a_work = None  # half inputs: each tile's A in compute dtype, then cast into d_weight
    if grads.d_weight.dtype != classes.acc:
        widest = min(classes.tile, classes.num_classes)
        a_work = torch.empty(widest, rows.x.shape[1], dtype=classes.acc, device=work.device)
    plain = rows.non_target is None  # else the transform needs the logits as they are
    for ti, (a, b) in enumerate(classes.ranges()):
        out = work[: (b - a) * n].view(b - a, n)
        tile = classes.logits(rows.scaled.t(), a, b, out, minus=lse if plain else None)
        slope = _bend(rows, everything, tile)
        if not plain:
            tile.sub_(lse)
        cells.fill(tile, a, -float("inf"))
        tile.exp_()  # p, 0 at the target cells
        if need_dot:
            grads.dot += _entropy_term(tile, lse, tile.sum(0))
        if slope is not None:
            tile.mul_(slope)  # p f'
        dest = grads.d_weight[a:b] if a_work is None else a_work[: b - a]  # (T, D)
        _tile_gradients(classes, due, ti, a, b, tile, grads, dest, first=True)
        classes.finish(dest, a, b)
        if a_work is not None:
            grads.d_weight[a:b] = dest
    _finish_rows(due, grads)
    return grads


@torch.no_grad()
def fused_sweeps(classes, rows, row_grad, target_dpsi, widths, need_dot=False):
    """(gap (N,), Gradients) in len(widths) + 1 sweeps and 3 GEMMs (gap = lse over the other
    classes - target_logit: the loss is log(1 + e^gap)), keeping the exp values of
    one block of rows, a (C, widths[0]) store. widths: non-increasing block widths summing to
    N (sweep k writes block k's tile where block k-1's was just consumed: never wider)."""
    n, device = rows.x.shape[0], rows.x.device
    starts = [sum(widths[:k]) for k in range(len(widths))]
    blocks = [slice(s, s + w) for s, w in zip(starts, widths, strict=True)]
    store = torch.empty(classes.num_classes * widths[0], dtype=classes.acc, device=device)
    lse, gap = (torch.empty(n, dtype=classes.acc, device=device) for _ in range(2))
    grads = _new_gradients(rows, classes, need_dot, classes.acc)  # A over blocks of rows
    shift = fixed_shift(classes, rows)
    due = None  # DueBlock: the block whose gradients this sweep computes
    for k in range(len(blocks) + 1):
        block = blocks[k] if k < len(blocks) else None
        if block is not None:
            width = block.stop - block.start
            cells = TargetCells(rows.target[block], classes.num_classes, classes.tile)
            stats = []  # per tile: (m, sum[, entropy term]), each (R,)
        for ti, (a, b) in enumerate(classes.ranges()):
            if due is not None:
                tile = _tile_view(store, due.block.stop - due.block.start, a, b)
                _tile_gradients(classes, due, ti, a, b, tile, grads, grads.d_weight[a:b],
                                first=k == 1)
                if block is None:  # the last sweep: A is complete for this tile
                    classes.finish(grads.d_weight[a:b], a, b)
            if block is not None:
                out = _tile_view(store, width, a, b)
                block_shift = None if shift is None else shift[block]
                tile, m, total, slope = _tile_exp(
                    classes, rows, block, a, b, out, cells, block_shift
                )
                stats.append((m, total, _entropy_term(tile, m, total)) if need_dot else (m, total))
                if slope is not None:
                    tile.mul_(slope)  # the store keeps e f', what the gradient pass needs
        if due is not None:
            _finish_rows(due, grads)
        if block is None:
            break
        m, total = (torch.stack(s) for s in list(zip(*stats, strict=True))[:2])  # (tiles, R)
        top = m.amax(0)  # (R,) M, the largest shift of each row: h is taken at it
        same = shift is not None or m.shape[0] == 1  # one shift for every tile
        tile_factor = None if same else torch.exp(m - top)  # (tiles, R)
        weighted = total if tile_factor is None else total * tile_factor
        other, target = top + weighted.sum(0).log(), rows.owned_logit(block)  # (R,) each
        lse[block], gap[block] = torch.logaddexp(other, target), other - target
        coef = row_grad[block] * rows.row_scale[block]  # (R,)
        if need_dot:
            scale = torch.exp(m - lse[block])  # (tiles, R): e -> p
            grads.dot[block] = (scale * torch.stack([s[2] for s in stats])).sum(0)
        h = coef * torch.exp(top - lse[block])
        due = _due_block(classes, rows, block, h, tile_factor, lse[block], coef, target_dpsi,
                         grads, cells, gap[block])
    return gap, grads
