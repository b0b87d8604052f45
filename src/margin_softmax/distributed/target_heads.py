"""Class-sharded heads with a rule of their own: a per-sample target logit (AdaFace,
MagFace, ElasticFace), a transform of the non-target logits (CurricularFace), a running
scale (AdaCos) or K sub-centres per class (Sub-center ArcFace). They share their rule (the
margin, the running state, the draws) with the single-device heads in heads/ and equal
them on the global batch.

One step, on every rank (replicated.py says how the gradient counts each piece once):

    check   = the ranks' running-state fingerprints agree         (before any state moves)
    X, X'   = the gathered rows (N, D), twice: replicated and partitioned views
    c_r     = cos(X'_i, w_{y_i}) where this rank owns y_i, 0 elsewhere        # (N,)
    cos     = sum over ranks of c_r: every target cosine, on every rank       # (N,)
    state   = update_state(cos, labels, X)          training mode, the whole global batch
    t       = target_logit(cos, X)                  the head's rule, the same on every rank
    loss    = sharded_target_cross_entropy(X', W_r, t, shard) + extra_loss(X)

where ``shard`` (shard_classes.py) says how this rank's classes enter: plain, with the
non-target transform, or pooled over sub-centres. The loss checks that the ranks' t agree.
"""

from __future__ import annotations

import math

import torch

from ..chunked import shard_logsumexp
from ..functional import target_cosines
from ..heads.adacos import AdaptiveScale
from ..heads.adaface import AdaFaceRule
from ..heads.curricularface import CurricularFaceRule
from ..heads.eager import ARC_FALLBACKS, check_choice, check_float, check_rule
from ..heads.elastic import ElasticArcRule, ElasticCosRule
from ..heads.magface import MagFaceRule
from ..margins import Margin, apply_margin
from ..numerics import compute_dtype, normalize
from ..validation import check_positive_int
from .comm import all_gather_stack
from .replicated import gather_twice, sum_over_ranks
from .shard_classes import ShardClasses
from .sharded_head import ShardedHead
from .sharded_loss import use_triton
from .sharded_target_loss import sharded_target_cross_entropy


def owned_target_cosines(x: torch.Tensor, weight: torch.Tensor, local_target: torch.Tensor,
                         sub_centers: int = 1):
    """cos(x_i, w_{t_i}) (N,) where local_target_i >= 0, 0 elsewhere; differentiable. With K
    sub-centres, the max over the K rows of class t_i (the gradient goes to the best)."""
    owned = (local_target >= 0).nonzero().view(-1)  # (M,)
    k = sub_centers
    rows = (local_target[owned, None] * k + torch.arange(k, device=owned.device)).view(-1)
    x_owned = x[owned].repeat_interleave(k, dim=0)  # (M K, D)
    cos = target_cosines(x_owned, weight, rows).view(-1, k).max(1).values  # (M,)
    return cos.new_zeros(x.shape[0]).index_put((owned,), cos)  # (N,)


def state_fingerprint(head: torch.nn.Module) -> torch.Tensor:
    """(3,) float64: the count, sum and position-weighted sum of every value in the head's
    state_dict but its weight (running state, the generator's bytes, the sampling step):
    the same size for any head, equal on ranks whose state is equal."""
    values = []

    def add(value):
        if isinstance(value, dict):
            for key in sorted(value):
                add(value[key])
        elif torch.is_tensor(value):
            values.append(value.detach().reshape(-1).double().cpu())

    add({key: value for key, value in head.state_dict().items() if key != "weight"})
    flat = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
    position = torch.arange(1, flat.numel() + 1, dtype=torch.float64)
    return torch.stack([torch.tensor(float(flat.numel())), flat.sum(), (flat * position).sum()])


class TargetPartialFC(ShardedHead):
    """A sharded head with a per-sample target logit t_i = target_logit(cos_iy, x_i) and
    logit_ij = scale * cos_ij elsewhere. Subclasses (a rule mixin first) define
    ``target_logit`` and may define ``training_target_logit``, ``update_state`` (no gradient,
    training mode, before the target logits) and ``extra_loss``. Gradients as PartialFC's:
    exact for ``weight``, world_size times the exact one for the embeddings (for DDP).
    The keywords the subclasses pass on (``**sharding``): sample_rate, group, seed,
    block_size, impl, as PartialFC's; ``seed`` also seeds ElasticFace's draws."""

    def target_logit(self, cos_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_target_logit(self, cos_target, embeddings) -> torch.Tensor:
        return self.target_logit(cos_target, embeddings)

    def update_state(self, cos, labels, embeddings) -> None:
        """Running state from the global batch's target cosines, labels and rows."""

    def update_sharded_state(self, cos, labels, rows, weight, local_target) -> None:
        """update_state, for a rule that also needs this rank's shard (weight (K, D),
        local_target (N,)): AdaCos's sum over every logit. No gradient."""
        self.update_state(cos, labels, rows)

    def extra_loss(self, embeddings: torch.Tensor) -> torch.Tensor | float:
        return 0.0

    def non_target(self, cos_target: torch.Tensor):
        """None (logit_ij = scale * cos_ij), or functional.target_cross_entropy's transform
        of the non-target cosines, built from the global target cosines (N,)."""
        return None

    def shard_classes(self, weight, local_target, cos) -> ShardClasses:
        """How this rank's classes enter the loss (shard_classes.py)."""
        non_target = self.non_target(cos.detach())
        triton = non_target is None and use_triton(self.impl, weight)  # the kernels have no f
        return ShardClasses(local_target, self.block_size, triton, non_target)

    def check_parameters(self) -> None:
        check_rule(self)

    def check_same_state(self) -> None:
        """The same ValueError on every rank when the ranks' running state differs (t or the
        scale loaded or scheduled on some ranks only): such state need not show in the
        target logits (CurricularFace's t, AdaCos's scale before its update)."""
        table = all_gather_stack(state_fingerprint(self).to(self.weight.device), self.group)
        differ = (~torch.isclose(table, table[:1], rtol=0.0, atol=0.0, equal_nan=True)).any(1)
        if bool(differ.any()):
            raise ValueError(
                f"the ranks' running state differs (rank(s) {differ.nonzero().view(-1).tolist()} "
                "differ from rank 0): a checkpoint, load_state_dict or scheduler applied on "
                "some ranks only"
            )

    def sharded_loss(self, x, weight, labels, local_target, layout):
        self.check_same_state()  # before any state moves
        if layout.embeddings_need_grad and torch.is_grad_enabled() and not x.requires_grad:
            x = x.detach().requires_grad_()  # its backward's collective must run on every rank
        replicated, partitioned = gather_twice(x, layout.sizes, self.group)  # (N, D) each
        cos = owned_target_cosines(partitioned, weight, local_target,
                                   self.rows_per_class)  # (N,)
        cos = sum_over_ranks(cos, self.group)  # (N,)
        if self.training:
            with torch.no_grad():
                self.update_sharded_state(cos.detach(), labels, replicated.detach(), weight,
                                          local_target)
            target = self.training_target_logit(cos, replicated)  # (N,)
        else:
            target = self.target_logit(cos, replicated)
        loss = sharded_target_cross_entropy(partitioned, weight, target,
                                            self.shard_classes(weight, local_target, cos),
                                            self.scale, self.group)
        return loss + self.extra_loss(replicated)


class AdaFacePartialFC(AdaFaceRule, TargetPartialFC):
    """Sharded AdaFace (heads/adaface.py: the official defaults m = 0.4,
    h = 0.333, s = 64, t_alpha = 0.01). The EMAs ``batch_mean``, ``batch_std`` follow the
    norms of the global batch, the same on every rank."""

    def __init__(self, embedding_dim: int, num_classes: int, *, margin: float = 0.4,
                 h: float = 0.333, scale: float = 64.0, t_alpha: float = 0.01,
                 **sharding) -> None:
        super().__init__(embedding_dim, num_classes, scale=scale, **sharding)
        self.init_rule(margin, h, t_alpha)


class MagFacePartialFC(MagFaceRule, TargetPartialFC):
    """Sharded MagFace (heads/magface.py: the official defaults s = 64, l_a = 10,
    u_a = 110, l_margin = 0.45, u_margin = 0.8, lambda_g = 35, the easy margin); the
    regulariser is the mean over the global batch."""

    def __init__(self, embedding_dim: int, num_classes: int, *, scale: float = 64.0,
                 l_a: float = 10.0, u_a: float = 110.0, l_margin: float = 0.45,
                 u_margin: float = 0.8, lambda_g: float = 35.0, fallback: str = "easy",
                 **sharding) -> None:
        super().__init__(embedding_dim, num_classes, scale=scale, **sharding)
        self.init_rule(l_a, u_a, l_margin, u_margin, lambda_g, fallback)


class ElasticArcFacePartialFC(ElasticArcRule, TargetPartialFC):
    """Sharded ElasticFace-Arc (heads/elastic.py: s = 64, m = 0.5, std = 0.05):
    N margins drawn per step for the global batch, in its order, from a generator seeded
    by ``seed``, the same draws on every rank. plus, plus_order: ElasticFace+, ranked over
    the global batch."""

    def __init__(self, embedding_dim: int, num_classes: int, *, margin: float = 0.5,
                 std: float = 0.05, scale: float = 64.0, fallback: str = "none",
                 plus: bool = False, plus_order: str = "paper", **sharding) -> None:
        super().__init__(embedding_dim, num_classes, scale=scale, **sharding)
        self.init_rule(margin, std, plus, plus_order, self.seed)
        self.init_fallback(fallback)


class ElasticCosFacePartialFC(ElasticCosRule, TargetPartialFC):
    """Sharded ElasticFace-Cos (heads/elastic.py: s = 64, m = 0.35, std = 0.05),
    drawn as ElasticArcFacePartialFC's."""

    def __init__(self, embedding_dim: int, num_classes: int, *, margin: float = 0.35,
                 std: float = 0.05, scale: float = 64.0, plus: bool = False,
                 plus_order: str = "paper", **sharding) -> None:
        super().__init__(embedding_dim, num_classes, scale=scale, **sharding)
        self.init_rule(margin, std, plus, plus_order, self.seed)


class CurricularFacePartialFC(CurricularFaceRule, TargetPartialFC):
    """Sharded CurricularFace (heads/curricularface.py: m = 0.5, s = 64, momentum 0.01): the
    EMA t follows the mean target cosine of the global batch, the same on every rank, and
    the hard negatives are re-weighted on each shard by the chunked sweeps (impl "auto" or
    "chunked": the Triton kernels have no such transform)."""

    def __init__(self, embedding_dim: int, num_classes: int, *, margin: float = 0.5,
                 scale: float = 64.0, momentum: float = 0.01, **sharding) -> None:
        if sharding.get("impl") == "triton":
            raise ValueError("CurricularFacePartialFC has no Triton path (the kernels have no "
                             "hard-negative transform); use impl='auto' or 'chunked'")
        super().__init__(embedding_dim, num_classes, scale=scale, **sharding)
        self.init_rule(margin, momentum)


class AdaCosPartialFC(AdaptiveScale, TargetPartialFC):
    """Sharded AdaCos (heads/adacos.py): no margin, the scale from the global batch. Each
    training step first sums exp(s_old cos_ij) over every non-target (i, j), as log-sum-exps
    per shard combined across ranks (one more pass over the shard's classes), and takes the
    median target angle of the global batch; then the loss at the new scale. dynamic=False
    keeps the scale (None: the fixed sqrt(2) log(C - 1)). The update needs every class, so
    dynamic with sample_rate < 1 is refused."""

    def __init__(self, embedding_dim: int, num_classes: int, *, scale: float | None = None,
                 dynamic: bool = True, **sharding) -> None:
        fixed, dynamic = self.fixed_scale(num_classes), self.check_dynamic(dynamic)
        super().__init__(embedding_dim, num_classes, scale=fixed if scale is None else scale,
                         **sharding)
        if dynamic and self.sample_rate < 1:
            raise ValueError(f"AdaCosPartialFC(dynamic=True) needs every class for its scale "
                             f"update, got sample_rate={self.sample_rate}; use sample_rate=1 "
                             "or dynamic=False")
        self.dynamic = dynamic

    def target_logit(self, cos_target, embeddings):
        return self.scale * cos_target

    def update_sharded_state(self, cos, labels, rows, weight, local_target) -> None:
        if not self.dynamic:
            return
        with torch.autocast(rows.device.type, enabled=False):  # a float32 statistic
            x_hat = normalize(rows.to(compute_dtype(rows.dtype)))  # (N, D)
            r = torch.full_like(x_hat[:, 0], self.scale)  # (N,) s_old
            other = shard_logsumexp(x_hat, weight, local_target, r, r, self.block_size,
                                    with_target=False, matmul_dtype=x_hat.dtype)  # (N,)
        everything = all_gather_stack(other, self.group).logsumexp((0, 1))  # over all (i, j)
        self.set_dynamic_scale(everything - math.log(rows.shape[0]), cos)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dynamic={self.dynamic}"


class SubCenterArcFacePartialFC(TargetPartialFC):
    """Sharded Sub-center ArcFace (heads/subcenter.py: m = 0.5, s = 64, K = 3, the seed
    fallback): ``weight`` ((stop - start) K, D), class c in rows cK ... cK + K - 1, the
    single-device head's order, so load_full gives its weight. cos_ij = the max over class
    j's K sub-centres, the target s psi(cos_iy) (ArcFace). Class sampling keeps or drops a
    class's K rows together. Without WeSpeaker's inter-top-k penalty (a selection over all
    classes of a row) and without a Triton path."""

    def __init__(self, embedding_dim: int, num_classes: int, *, margin: float = 0.5,
                 scale: float = 64.0, sub_centers: int = 3, fallback: str = "seed",
                 straight_through: bool = False, **sharding) -> None:
        if sharding.get("impl") == "triton":
            raise ValueError("SubCenterArcFacePartialFC has no Triton path; use impl='auto' "
                             "or 'chunked'")
        sub_centers = check_positive_int("sub_centers", sub_centers)
        super().__init__(embedding_dim, num_classes, scale=scale, rows_per_class=sub_centers,
                         **sharding)
        check_choice("fallback", fallback, ARC_FALLBACKS)
        self.sub_centers, self.margin = sub_centers, margin
        self.fallback, self.straight_through = fallback, straight_through
        self.margin_spec()

    def margin_spec(self) -> Margin:
        """The target's Margin (validates ``margin``, which a scheduler may change)."""
        check_float("margin", self.margin, 0.0, torch.pi, high_open=True)
        fallback = "none" if self.margin == 0 else self.fallback
        return Margin(m2=self.margin, fallback=fallback, straight_through=self.straight_through)

    def target_logit(self, cos_target, embeddings):
        return self.scale * apply_margin(cos_target, self.margin_spec())

    def shard_classes(self, weight, local_target, cos) -> ShardClasses:
        return ShardClasses(local_target, self.block_size, sub_centers=self.sub_centers)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, margin={self.margin}, sub_centers={self.sub_centers}, "
                f"fallback={self.fallback!r}")
