"""The first collective of every step: agree on batch sizes and fail together.

Each rank checks its own inputs (and, through ``check``, the head's parameters, which a
scheduler may have changed on one rank only), then all ranks exchange (batch size, error
flag, needs-grad flags, embedding_dim, num_classes, the dtypes) in one small all-gather. If
any rank found a problem, every rank raises it (named by rank), so a bad label on one rank
is a ValueError everywhere instead of one rank raising while the others wait in a collective
until the timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..validation import check_embeddings, check_labels
from .comm import all_gather_objects, all_gather_stack


@dataclass(frozen=True)
class BatchLayout:
    """What every rank knows after the handshake."""

    sizes: list[int]  # rows held by each rank, in rank order
    embeddings_need_grad: bool  # some rank's embeddings require grad: backward reduces them

    @property
    def total(self) -> int:
        return sum(self.sizes)


DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dtype_code(dtype: torch.dtype) -> int:
    return DTYPES.index(dtype) if dtype in DTYPES else -1


def _local_problem(embeddings, labels, weight, num_classes: int, check) -> Exception | None:
    try:
        if check is not None:
            check()
        check_embeddings(embeddings, weight)
        check_labels(labels, embeddings.shape[0], num_classes)
        if labels.device != embeddings.device:
            raise ValueError(f"labels are on {labels.device} but embeddings on {embeddings.device}")
    except (TypeError, ValueError) as error:
        return error
    return None


def handshake(
    embeddings: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, num_classes: int, group,
    check=None,
) -> BatchLayout:
    """Validate this rank's (N_r, D) embeddings and (N_r,) labels (and call ``check``, which
    may raise TypeError or ValueError), share sizes and flags. Raises the same error on every
    rank when any rank's input is bad, or when the ranks' dtypes differ."""
    problem = _local_problem(embeddings, labels, weight, num_classes, check)
    rows = embeddings.shape[0] if problem is None else 0
    grad_on = torch.is_grad_enabled()
    x_grad = problem is None and grad_on and embeddings.requires_grad
    graph = x_grad or (grad_on and weight.requires_grad)
    flags = [rows, int(problem is not None), int(x_grad), int(graph), weight.shape[1],
             num_classes, _dtype_code(weight.dtype)]
    flags = torch.tensor(flags, dtype=torch.int64, device=weight.device)
    table = all_gather_stack(flags, group).tolist()  # (W, 7)
    if any(row[1] for row in table):
        report = (type(problem).__name__, str(problem)) if problem is not None else None
        reports = all_gather_objects(report, group)
        rank, (kind, message) = next((r, x) for r, x in enumerate(reports) if x is not None)
        error = TypeError if kind == "TypeError" else ValueError
        raise error(f"rank {rank}: {message}")
    if len({row[6] for row in table}) > 1:  # the all-gather of the rows would abort gloo
        dtypes = [str(DTYPES[row[6]]) if row[6] >= 0 else "?" for row in table]
        raise ValueError(f"the ranks' heads compute in different dtypes ({dtypes} in rank "
                         "order: a .double() or .half(), or autocast, on some ranks only); "
                         "every rank needs the same one")
    for column, name in ((4, "embedding_dim"), (5, "num_classes")):
        # embedding_dim: gathering the rows would abort gloo in C++; num_classes: the ranks
        # would shard the classes differently, and the loss would be silently wrong
        if len({row[column] for row in table}) > 1:
            raise ValueError(
                f"the ranks' heads were built with different {name} "
                f"({[row[column] for row in table]} in rank order); every rank needs the same one"
            )
    if len({row[3] for row in table}) > 1:
        raise ValueError(
            "some ranks build an autograd graph for the loss and others do not (no_grad or a "
            f"frozen weight on some ranks only: {[bool(row[3]) for row in table]}); every "
            "rank must run the same forward and backward"
        )
    return BatchLayout([row[0] for row in table], any(row[2] for row in table))
