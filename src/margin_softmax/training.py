"""The trainer shared by ``compare`` and ``train``: a small embedding network, AdamW with a
cosine learning rate, one progress bar per run, checkpoints that resume exactly.

    model = build_model(input_dim, config)         # seeds torch, then builds the network
    head = build_head("arcface", config.embedding_dim, num_classes)
    result = fit(model, head, features, labels, config)
    embeddings = embed(model, features)            # (N, embedding_dim) float32

Deterministic under ``config.seed`` on one machine: the weights are initialised right after
``torch.manual_seed(seed)`` and epoch e shuffles with ``numpy.random.default_rng([seed, e])``,
so a run resumed from the checkpoint of epoch e repeats the uninterrupted run bit for bit.

``config.device`` ("auto", "cpu", "cuda", "cuda:N") is where fit trains; the weights are
initialised on the CPU either way. Checkpoints load onto the CPU, so a run started on a GPU
can be resumed on a CPU-only machine and the other way round.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .atomic_files import atomic_open, check_writable
from .train_config import CHECKPOINT_NAME, TrainConfig

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


@dataclass
class TrainResult:
    """What ``fit`` did: the mean loss of each epoch and the wall-clock seconds it took."""

    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def epochs_done(self) -> int:
        return len(self.epoch_losses)


class EmbeddingNet(nn.Module):
    """x (N, ...) -> embedding (N, embedding_dim): x is flattened to (N, input_dim) and
    standardised, (x - mean) / std, then two hidden ReLU layers and a linear layer.
    mean and std are buffers (saved with the weights), set by ``set_input_scaling``."""

    def __init__(self, input_dim: int, embedding_dim: int = 64, hidden_dim: int = 256) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("std", torch.ones(input_dim))
        self.layers = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, embedding_dim),
        )

    def set_input_scaling(self, features: np.ndarray) -> None:
        """mean and std per input feature from training features (N, ...); std 0 -> 1."""
        x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)  # (N, input_dim)
        std = x.std(axis=0)
        self.mean.copy_(torch.as_tensor(x.mean(axis=0)))
        self.std.copy_(torch.as_tensor(np.where(std > 1e-8, std, 1.0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers((x.flatten(1) - self.mean) / self.std)  # (N, embedding_dim)


def resolve_device(device: str = "auto", name: str = "device") -> torch.device:
    """'auto' -> cuda when torch.cuda.is_available(), else cpu; 'cpu', 'cuda', 'cuda:N' as
    given. ValueError naming ``name`` and the value when it is malformed or not on this
    machine."""
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise ValueError(f"{name} {device!r}: expected auto, cpu, cuda or cuda:N")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {device}: CUDA is not available on this machine "
                             f"(use {name} cpu)")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"{name} {device}: this machine has {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")
    return resolved


def build_model(input_dim: int, config: TrainConfig) -> EmbeddingNet:
    """Seed torch with ``config.seed`` and build the network (build the head right after)."""
    torch.manual_seed(config.seed)
    return EmbeddingNet(input_dim, config.embedding_dim, config.hidden_dim)


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """lr(t) = base_lr * (1 + cos(pi t / T)) / 2: from base_lr down to 0 at the last step."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))


def fit(
    model: nn.Module,
    head: nn.Module,
    features: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    *,
    margin_scheduler: Any = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` and ``head`` on features (N, ...) float and labels (N,) int in [0, C).

    Each step: ``margin_scheduler.step()`` when one is given (a MarginScheduler; it sets the
    head's margin), embeddings = model(x), loss = head(embeddings, y), an AdamW step.
    With ``checkpoint_dir`` a checkpoint is written atomically after every epoch (the folder
    is checked writable before the first, OSError if not); ``resume`` loads it and continues
    from the next epoch.
    ``stop_after`` ends the run after that many epochs as if interrupted (resume it later).
    ``meta`` is stored in the checkpoint (the caller's settings, to check on resume).
    The model and the head are moved to ``config.device`` and stay there; so does each batch.
    """
    device = resolve_device(config.device)
    model.to(device)
    head.to(device)
    x_all = torch.as_tensor(np.asarray(features, dtype=np.float32))  # (N, ...)
    y_all = torch.as_tensor(np.asarray(labels, dtype=np.int64))  # (N,)
    n = x_all.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    result = TrainResult()
    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if path is not None:  # an unwritable folder fails now, not after the first epoch
        check_writable(path.parent)
    if resume:
        if path is None:
            raise ValueError("resume=True needs a checkpoint_dir")
        state = load_checkpoint(path)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        if margin_scheduler is not None and "margin_scheduler" in state:
            margin_scheduler.load_state_dict(state["margin_scheduler"])
        result.epoch_losses = list(state["epoch_losses"])
    last_epoch = config.epochs if stop_after is None else min(stop_after, config.epochs)

    start_time = time.perf_counter()
    bar = tqdm(
        range(result.epochs_done, last_epoch),
        desc=desc,
        initial=result.epochs_done,
        total=config.epochs,
        disable=not progress,
        leave=True,
        dynamic_ncols=True,
    )
    for epoch in bar:
        model.train()
        head.train()
        order = torch.as_tensor(np.random.default_rng([config.seed, epoch]).permutation(n))
        total = 0.0
        for i in range(steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(config.lr, epoch * steps_per_epoch + i, total_steps)
            if margin_scheduler is not None:
                margin_scheduler.step()  # before the forward, as WeSpeaker does
            batch = order[i * config.batch_size : (i + 1) * config.batch_size]  # (B,)
            x = x_all[batch].to(device)  # (B, ...)
            y = y_all[batch].to(device)  # (B,)
            loss = head(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * batch.numel()
        result.epoch_losses.append(total / n)
        bar.set_postfix(loss=f"{result.epoch_losses[-1]:.3f}", refresh=False)
        if path is not None:
            state = {
                "model": model.state_dict(),
                "head": head.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch_losses": result.epoch_losses,
                "config": asdict(config),
                "meta": meta or {},
            }
            if margin_scheduler is not None and hasattr(margin_scheduler, "state_dict"):
                state["margin_scheduler"] = margin_scheduler.state_dict()
            save_checkpoint(path, state)
    bar.close()
    result.seconds = time.perf_counter() - start_time
    model.eval()
    head.eval()
    return result


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """torch.save through atomic_open (its folder made if needed): a crash, a kill or a full
    disk leaves the previous checkpoint whole and no temporary beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as handle:
        try:
            torch.save(state, handle)
        except RuntimeError as error:  # torch's zip writer hides a failed write behind its own
            if isinstance(error.__context__, OSError):
                raise error.__context__ from None
            raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The state saved by ``fit``, its tensors on the CPU wherever they were saved (fit moves
    them to its device on resume); ValueError naming the file when it is missing or
    unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no checkpoint to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which
        raise ValueError(f"{path}: not a readable checkpoint ({error})") from None


@torch.no_grad()
def embed(model: nn.Module, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """model(features) in evaluation mode, on the model's device: (N, embedding_dim) float32
    NumPy array."""
    model.eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))  # (N, ...)
    parts = [model(x[i : i + batch_size].to(device)).cpu()
             for i in range(0, x.shape[0], batch_size)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, 0), np.float32)
