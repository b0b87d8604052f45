"""What the ranks must agree on: the head's configuration, checked at every step.

Ranks whose heads differ in a margin, the scale, the sampling or the dtype train on with a
loss that matches neither configuration, and heads of different types exchange tensors of
different shapes, which aborts gloo in C++. So every step's handshake carries a 64-bit
fingerprint of head_config (the same size for every head: the first exchange cannot abort),
and where the fingerprints differ every rank gathers the configurations and raises the
same ValueError naming each differing field with every rank's value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import numbers

import torch

from ..margins import Margin

# attributes that differ between ranks by design, or do not change the loss
RANK_LOCAL = frozenset({"rank", "world_size", "start", "stop", "group", "impl", "block_size",
                        "sampled_rows", "rows_since_step"})


def head_config(head: torch.nn.Module, dtype: torch.dtype) -> dict:
    """{field: value}: the head's type, its scalar attributes (num_classes, embedding_dim,
    rows_per_class, scale, sample_rate, seed, training, every margin parameter, fallback,
    straight_through, ...), a Margin's fields by name, and the ``dtype`` it computes in."""
    config = {"head": type(head).__name__, "dtype": str(dtype).removeprefix("torch.")}
    scale = getattr(head, "scale", None)  # AdaCos's is a property over its running state
    if isinstance(scale, (numbers.Real, torch.Tensor)):
        config["scale"] = float(scale)
    for key, value in sorted(vars(head).items()):
        if key.startswith("_") or key in RANK_LOCAL:
            continue
        if isinstance(value, Margin):
            config.update(dataclasses.asdict(value))
        elif value is None or isinstance(value, (bool, numbers.Number, str)):
            config[key] = value
    return config


def fingerprint(config: dict) -> int:
    """A signed 64-bit hash of ``config`` (equal configurations, equal hashes; repr keeps
    every float exactly and tells 1 from 1.0 and True)."""
    text = repr(sorted(config.items())).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little", signed=True)


def disagreement(configs: list[dict], what: str = "head") -> str | None:
    """None when every rank's config is equal; else a message naming each differing field
    and its value on every rank, in rank order."""
    fields = sorted({key for config in configs for key in config})
    differ = [key for key in fields if len({repr(c.get(key, "<none>")) for c in configs}) > 1]
    if not differ:
        return None
    values = "; ".join(f"{key} {[c.get(key, '<none>') for c in configs]}" for key in differ)
    return (f"the ranks disagree on the {what}: {values} (in rank order); every rank needs "
            f"the same {what}")
