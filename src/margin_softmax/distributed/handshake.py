"""The first collective of every step: agree on batch sizes and fail together.

Each rank checks its own inputs (and, through ``check``, the head's parameters, which a
scheduler may have changed on one rank only), then all ranks exchange (batch size, error
flag, needs-grad flags, the fingerprint of the head's configuration) in one small
all-gather of the same shape for every head. If any rank found a problem, every rank raises
it (named by rank), so a bad label on one rank is a ValueError everywhere instead of one
rank raising while the others wait in a collective until the timeout; heads that differ
(agreement.py: type, sizes, margins, scale, sampling, seed, dtype) are a ValueError on
every rank naming the fields, before any rank's loss could mix two configurations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..validation import check_embeddings, check_labels
from .agreement import disagreement, fingerprint
from .comm import all_gather_objects, all_gather_stack


@dataclass(frozen=True)
class BatchLayout:
    """What every rank knows after the handshake."""

    sizes: list[int]  # rows held by each rank, in rank order
    embeddings_need_grad: bool  # some rank's embeddings require grad: backward reduces them

    @property
    def total(self) -> int:
        return sum(self.sizes)


def _local_problem(embeddings, labels, weight, num_classes: int, check) -> Exception | None:
    try:
        if check is not None:
            check()
        check_embeddings(embeddings, weight)
        check_labels(labels, embeddings.shape[0], num_classes, embeddings.device)
    except (TypeError, ValueError) as error:
        return error
    return None


def handshake(
    embeddings: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, num_classes: int, group,
    check=None, config: dict | None = None,
) -> BatchLayout:
    """Validate this rank's (N_r, D) embeddings and (N_r,) labels (and call ``check``, which
    may raise TypeError or ValueError), share sizes and flags. Raises the same error on every
    rank when any rank's input is bad, or when the ranks' ``config`` (agreement.head_config)
    differ."""
    problem = _local_problem(embeddings, labels, weight, num_classes, check)
    rows = embeddings.shape[0] if problem is None else 0
    grad_on = torch.is_grad_enabled()
    x_grad = problem is None and grad_on and embeddings.requires_grad
    graph = x_grad or (grad_on and weight.requires_grad)
    config = config or {}
    flags = [rows, int(problem is not None), int(x_grad), int(graph), fingerprint(config)]
    flags = torch.tensor(flags, dtype=torch.int64, device=weight.device)
    table = all_gather_stack(flags, group).tolist()  # (W, 5)
    if any(row[1] for row in table):
        report = (type(problem).__name__, str(problem)) if problem is not None else None
        reports = all_gather_objects(report, group)
        rank, (kind, message) = next((r, x) for r, x in enumerate(reports) if x is not None)
        error = TypeError if kind == "TypeError" else ValueError
        raise error(f"rank {rank}: {message}")
    if len({row[4] for row in table}) > 1:  # the next collectives could abort gloo
        raise ValueError(disagreement(all_gather_objects(config, group)))
    if len({row[3] for row in table}) > 1:
        raise ValueError(
            "some ranks build an autograd graph for the loss and others do not (no_grad or a "
            f"frozen weight on some ranks only: {[bool(row[3]) for row in table]}); every "
            "rank must run the same forward and backward"
        )
    return BatchLayout([row[0] for row in table], any(row[2] for row in table))
