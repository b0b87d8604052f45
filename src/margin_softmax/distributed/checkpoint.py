"""Checkpoints of sharded class centres that load into any world size.

On disk: a directory with one file per shard, ``classes-{start}-{stop}.pt``, each holding
{"start", "stop", "num_classes", "weight" (stop - start, D)}. A rank loads the rows of its
own block from whichever files overlap it, so a checkpoint written by 2 ranks loads into 3,
and a single-process head's full weight is just a checkpoint with one shard. The directory
must be visible to every rank (a shared file system) when loading into another layout.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from .comm import rank_and_world_size


def _shard_path(directory: Path, start: int, stop: int) -> Path:
    return directory / f"classes-{start}-{stop}.pt"


def save_weight_shard(
    directory: str | Path, weight: torch.Tensor, start: int, num_classes: int
) -> Path:
    """Write rows [start, start + len(weight)) of the class centres (no collective)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stop = start + weight.shape[0]
    path = _shard_path(directory, start, stop)
    record = {"start": start, "stop": stop, "num_classes": num_classes,
              "weight": weight.detach().cpu().clone()}
    torch.save(record, path)
    return path


def save_sharded(directory: str | Path, head) -> None:
    """Every rank writes its block of ``head.weight``; returns once all ranks have."""
    save_weight_shard(directory, head.weight, head.start, head.num_classes)
    if rank_and_world_size(head.group)[1] > 1:
        dist.barrier(group=head.group)


def save_full(directory: str | Path, weight: torch.Tensor) -> None:
    """Write a full (C, D) weight, e.g. a single-process head's, as a one-shard checkpoint."""
    save_weight_shard(directory, weight, 0, weight.shape[0])


def _shards(directory: Path) -> list[tuple[int, int, Path]]:
    """(start, stop, path) of every shard file, read from the file names."""
    found = []
    for path in directory.glob("classes-*-*.pt"):
        start, stop = path.stem.split("-")[1:]
        found.append((int(start), int(stop), path))
    if not found:
        raise FileNotFoundError(f"no classes-*-*.pt shard files in {directory}")
    return sorted(found)


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_rows(directory: str | Path, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of the class centres (stop - start, D); reads only the shard
    files that overlap them."""
    shards = _shards(Path(directory))
    parts, filled = [], 0
    for low, high, path in shards:
        low, high = max(start, low), min(stop, high)
        if low < high:
            record = _load(path)
            parts.append(record["weight"][low - record["start"] : high - record["start"]])
            filled += high - low
    if filled != stop - start:
        raise ValueError(f"the shards in {directory} do not cover classes [{start}, {stop}) "
                         f"exactly once (found {filled} of {stop - start} rows)")
    if not parts:  # an empty block
        return _load(shards[0][2])["weight"][:0]
    return torch.cat(parts)  # shards are sorted by start


def load_full(directory: str | Path) -> torch.Tensor:
    """The full (C, D) weight, e.g. for margin_softmax.ArcFace(...).weight."""
    return load_rows(directory, 0, _num_classes(Path(directory)))


def _num_classes(directory: Path) -> int:
    return max(stop for _, stop, _ in _shards(directory))


def load_sharded(directory: str | Path, head) -> None:
    """Copy this rank's block [head.start, head.stop) into ``head.weight``."""
    num_classes = _num_classes(Path(directory))
    if num_classes != head.num_classes:
        raise ValueError(f"the checkpoint in {directory} has {num_classes} classes, "
                         f"the head has {head.num_classes}")
    rows = load_rows(directory, head.start, head.stop)
    with torch.no_grad():
        head.weight.copy_(rows)
