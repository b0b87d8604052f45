"""The trainer's settings, apart from the trainer so that the command line's parsers read
their defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

CHECKPOINT_NAME = "checkpoint.pt"  # the file fit writes in its checkpoint folder


@dataclass(frozen=True)
class TrainConfig:
    """Network size and optimisation settings."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    hidden_dim: int = 256
    embedding_dim: int = 64
    seed: int = 0
    device: str = "auto"  # "auto" (cuda when available, else cpu), "cpu", "cuda", "cuda:N"
