"""Checkpoints of sharded class centres, and their optimizer state, for any world size.

On disk: a directory with one file per shard, ``classes-{start}-{stop}.pt``, each holding
{"start", "stop", "num_classes", "weight" ((stop - start) K, D), "rows_per_class" K (1, or
SubCenterArcFacePartialFC's sub-centres)}, the head's sampling ``step``
when it has one, its running state when it has any ("state": the rest of its state_dict,
AdaFace's EMAs or ElasticFace's generator, the same on every rank), and, when saved with an
optimizer, "optimizer": {"rows": the state tensors of the weight shaped like it, as (stop -
start, D) slices (momentum_buffer, exp_avg, exp_avg_sq), "other": the rest (Adam's step, the
same on every rank), "type": the optimizer's class name (loading into another type is
refused; files without it are not checked)}. A rank loads the rows of its own block from
whichever files overlap it, so a checkpoint written by 2 ranks loads into 3, and a single-
process head's full weight is just a checkpoint with one shard. The directory must be
visible to every rank (a shared file system) when loading into another layout. Everything
else in the optimizer (the backbone's state, the hyperparameters) is its ordinary
state_dict: see optimizer_state_without_head.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from .comm import rank_and_world_size
from .sampled_optimizer import SampledRowsOptimizer
from .sharding import class_ranges


def _shard_path(directory: Path, start: int, stop: int) -> Path:
    return directory / f"classes-{start}-{stop}.pt"


def _split_state(state: dict, weight: torch.Tensor) -> dict:
    """{"rows": state tensors shaped like ``weight``, "other": everything else}, copied."""
    rows, other = {}, {}
    for key, value in state.items():
        if torch.is_tensor(value):
            value = value.detach().cpu().clone()
        if torch.is_tensor(value) and value.shape == weight.shape:
            rows[key] = value
        else:
            other[key] = value
    return {"rows": rows, "other": other}


def running_state(state_dict: dict) -> dict:
    """A head's state_dict without ``weight`` and the sampling ``step``: its running state
    (AdaFace's EMAs, ElasticFace's generator), copied to the CPU; {} for PartialFC."""
    return {key: value.detach().cpu().clone() if torch.is_tensor(value) else value
            for key, value in state_dict.items() if key not in ("weight", "step")}


def save_weight_shard(directory: str | Path, weight: torch.Tensor, start: int,
                      num_classes: int, step: int | None = None,
                      optimizer_state: dict | None = None,
                      optimizer_type: str | None = None, state: dict | None = None,
                      rows_per_class: int = 1) -> Path:
    """Write the class centres of classes [start, start + len(weight) / rows_per_class) (no
    collective; K = rows_per_class rows per class, sub-centres), with the head's sampling
    ``step``, its running ``state`` (running_state) and the weight's optimizer state (of an
    ``optimizer_type`` optimizer, e.g. "SGD") when given."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stop = start + weight.shape[0] // rows_per_class
    path = _shard_path(directory, start, stop)
    record = {"start": start, "stop": stop, "num_classes": num_classes,
              "weight": weight.detach().cpu().clone(), "rows_per_class": rows_per_class}
    if step is not None:
        record["step"] = step
    if state:
        record["state"] = state
    if optimizer_state is not None:
        record["optimizer"] = {**_split_state(optimizer_state, weight), "type": optimizer_type}
    torch.save(record, path)
    return path


def check_save_directory(directory: str | Path, num_classes: int, world_size: int) -> None:
    """ValueError unless ``directory`` can take a checkpoint of ``num_classes`` classes in
    ``world_size`` shards: it must not be a file, nor hold shard files of another layout
    (they would stay beside the new ones, and no load could read the directory again)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"checkpoint directory {directory} is a file")
    ours = {_shard_path(directory, a, b).name for a, b in class_ranges(num_classes, world_size)}
    others = sorted(p.name for p in directory.glob("classes-*-*.pt") if p.name not in ours)
    if others:
        names = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise ValueError(f"{directory} holds shard files of another checkpoint ({names}), which "
                         f"this save ({world_size} shard(s) of {num_classes} classes) would not "
                         "replace; save into an empty directory or remove them")


def save_sharded(directory: str | Path, head, optimizer=None) -> None:
    """Every rank writes its block of ``head.weight`` (and, with ``optimizer``, that block's
    optimizer state); returns once all ranks have. Raises ValueError on every rank, before
    writing, when ``directory`` holds the shard files of another layout."""
    check_save_directory(directory, head.num_classes, rank_and_world_size(head.group)[1])
    step = int(head.step) if hasattr(head, "step") else None
    state = None if optimizer is None else optimizer.state.get(head.weight, {})
    kind = None if optimizer is None else _optimizer_type(optimizer)
    save_weight_shard(directory, head.weight, head.start, head.num_classes, step, state, kind,
                      running_state(head.state_dict()), getattr(head, "rows_per_class", 1))
    if rank_and_world_size(head.group)[1] > 1:
        dist.barrier(group=head.group)


def save_full(directory: str | Path, weight: torch.Tensor, state: dict | None = None,
              rows_per_class: int = 1) -> None:
    """Write a full (C, D) weight, e.g. a single-process head's, as a one-shard checkpoint
    ((C K, D) with rows_per_class K: SubCenterArcFace's, sub_centers=K); with ``state``
    (that head's state_dict()), its running state too, for load_sharded."""
    classes = weight.shape[0] // rows_per_class
    check_save_directory(directory, classes, 1)
    state = None if state is None else running_state(state)
    save_weight_shard(directory, weight, 0, classes, state=state, rows_per_class=rows_per_class)


def load_state(directory: str | Path) -> dict:
    """The running state saved with a checkpoint ({} if none), for a single-process head:
    ``head.load_state_dict({"weight": load_full(directory), **load_state(directory)})``."""
    return _load(_shards(Path(directory))[0][2]).get("state", {})


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
    record = torch.load(path, map_location="cpu", weights_only=True)
    record["path"] = path
    return record


def _block(directory: str | Path, start: int, stop: int) -> list[tuple[dict, slice]]:
    """(record, its weight rows of classes [start, stop)) of every shard file that overlaps
    the block, in class order; for an empty block, the first file with no rows."""
    shards = _shards(Path(directory))
    parts, filled = [], 0
    for low, high, path in shards:
        low, high = max(start, low), min(stop, high)
        if low < high:
            record = _load(path)
            k = record.get("rows_per_class", 1)
            parts.append((record, slice((low - record["start"]) * k,
                                        (high - record["start"]) * k)))
            filled += high - low
    if filled != stop - start:
        raise ValueError(f"the shards in {directory} do not cover classes [{start}, {stop}) "
                         f"exactly once (found {filled} of {stop - start} rows)")
    return parts or [(_load(shards[0][2]), slice(0, 0))]


def load_rows(directory: str | Path, start: int, stop: int) -> torch.Tensor:
    """The class centres of classes [start, stop): ((stop - start) K, D) for K rows per
    class (sub-centres; K = 1 otherwise); reads only the shard files that overlap them."""
    return torch.cat([record["weight"][rows] for record, rows in _block(directory, start, stop)])


def load_full(directory: str | Path) -> torch.Tensor:
    """The full (C, D) weight, e.g. for margin_softmax.ArcFace(...).weight."""
    return load_rows(directory, 0, _num_classes(Path(directory)))


def _num_classes(directory: Path) -> int:
    """C as every shard file records it; ValueError when the files end before it (the last
    shards are missing), which the file names alone would not show."""
    _, stop, path = _shards(directory)[-1]
    recorded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["num_classes"]
    if stop != recorded:
        raise ValueError(f"{path} belongs to a checkpoint of {recorded} classes, but the shard "
                         f"files in {directory} end at class {stop}: shard files are missing")
    return recorded


def _optimizer_type(optimizer) -> str:
    """The class name of a torch optimizer, or of the one a SampledRowsOptimizer wraps."""
    if isinstance(optimizer, SampledRowsOptimizer):
        optimizer = optimizer.optimizer
    return type(optimizer).__name__


def _optimizer_state(parts: list[tuple[dict, slice]], weight: torch.Tensor, group: dict,
                     kind: str):
    """The optimizer state of this block's rows for a ``kind`` optimizer: row tensors joined
    in class order and moved to the weight, the other entries from the first file."""
    for record, _ in parts:
        if record.get("optimizer") is None:
            raise ValueError(f"{record['path']} holds no optimizer state (saved without an "
                             f"optimizer); load with optimizer=None to restore the weight alone")
        saved = record["optimizer"].get("type")
        if saved is not None and saved != kind:
            raise ValueError(f"{record['path']} holds optimizer state saved from {saved} "
                             f"(keys {sorted(record['optimizer']['rows'])}), but the optimizer "
                             f"given is {kind}; load into {saved}, or with optimizer=None to "
                             "restore the weight alone")
    keys = {tuple(sorted(record["optimizer"]["rows"])) for record, _ in parts}
    if len(keys) > 1:
        raise ValueError(f"the shard files disagree on the optimizer state's keys: {keys}")
    state = {}
    for key in keys.pop():
        value = torch.cat([record["optimizer"]["rows"][key][rows] for record, rows in parts])
        state[key] = value.to(weight) if value.is_floating_point() else value.to(weight.device)
    on_device = group.get("capturable") or group.get("fused")  # torch keeps step there too
    for key, value in parts[0][0]["optimizer"]["other"].items():
        state[key] = value.to(weight.device) if on_device and torch.is_tensor(value) else value
    return state


def _check_state(saved: dict, head, path: Path) -> None:
    """ValueError unless the saved running state has the head's keys (another head kind's
    would load nothing, or fail halfway)."""
    expected = set(running_state(head.state_dict()))
    if set(saved) != expected:
        raise ValueError(f"{path} holds the running state {sorted(saved)}, but the head "
                         f"({type(head).__name__}) has {sorted(expected)}: the checkpoint was "
                         "saved from another kind of head")


def load_sharded(directory: str | Path, head, optimizer=None) -> None:
    """Copy this rank's block [head.start, head.stop) into ``head.weight``, the sampling step
    into ``head.step``, the running state where the checkpoint has one (a checkpoint
    without, e.g. PartialFC's or save_full's of a weight alone, leaves it as it is), and,
    with ``optimizer``, the block's optimizer state into
    ``optimizer.state[head.weight]``. Call it after ``optimizer.load_state_dict`` (which
    replaces the whole state). Raises ValueError naming the file when ``optimizer`` is given
    and a shard was saved without one."""
    num_classes = _num_classes(Path(directory))
    if num_classes != head.num_classes:
        raise ValueError(f"the checkpoint in {directory} has {num_classes} classes, "
                         f"the head has {head.num_classes}")
    parts = _block(directory, head.start, head.stop)
    saved_k, k = parts[0][0].get("rows_per_class", 1), getattr(head, "rows_per_class", 1)
    if saved_k != k:
        raise ValueError(f"the checkpoint in {directory} has {saved_k} weight row(s) per class "
                         f"(sub-centres), the head has {k}")
    dim = parts[0][0]["weight"].shape[1]
    if dim != head.weight.shape[1]:
        raise ValueError(f"the checkpoint in {directory} has embedding_dim {dim}, the head has "
                         f"{head.weight.shape[1]}")
    state = None
    if optimizer is not None:
        group = next((g for g in optimizer.param_groups
                      if any(p is head.weight for p in g["params"])), None)
        if group is None:
            raise ValueError("the head's weight is not among the optimizer's parameters")
        state = _optimizer_state(parts, head.weight, group, _optimizer_type(optimizer))
    saved = parts[0][0].get("state")
    if saved is not None:
        _check_state(saved, head, parts[0][0]["path"])
    if saved:  # first: a state that refuses this head (ElasticFace's kind) loads nothing
        head.load_state_dict(saved, strict=False)
    with torch.no_grad():
        head.weight.copy_(torch.cat([record["weight"][rows] for record, rows in parts]))
        if "step" in parts[0][0] and hasattr(head, "step"):
            head.step.fill_(parts[0][0]["step"])
    if state is not None:
        optimizer.state[head.weight] = state


def optimizer_state_without_head(optimizer, head) -> dict:
    """``optimizer.state_dict()`` without the state of ``head.weight``, which save_sharded
    writes shard by shard: the backbone's state and every group's hyperparameters. It is the
    same on every rank of a DDP backbone, so rank 0 saves it; load it with
    ``optimizer.load_state_dict`` before load_sharded."""
    state = optimizer.state_dict()
    flat = [p for group in optimizer.param_groups for p in group["params"]]
    index = next(i for i, p in enumerate(flat) if p is head.weight)
    state["state"].pop(index, None)
    return state
