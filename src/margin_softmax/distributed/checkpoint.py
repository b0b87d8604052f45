"""Checkpoints of sharded class centres, and their optimizer state, for any world size.

On disk (commit.py): DIR/save-NNNNNN/, one folder per save, committed whole by its
manifest.json; loading takes the newest committed save and checks every file against the
manifest. Each rank writes one file per shard, ``classes-{start}-{stop}.pt``, holding
{"start", "stop", "num_classes", "weight" ((stop - start) K, D), "rows_per_class" K (1, or
SubCenterArcFacePartialFC's sub-centres)}, the head's sampling ``step``
when it has one, its running state when it has any ("state": the rest of its state_dict,
AdaFace's EMAs or ElasticFace's generator, the same on every rank), and, when saved with an
optimizer, "optimizer": {"rows": the state tensors of the weight shaped like it, as (stop -
start, D) slices (momentum_buffer, exp_avg, exp_avg_sq), "other": the rest (Adam's step, the
same on every rank), "type": the optimizer's class name (loading into another type is
refused; files without it are not checked)}. Rank 0 may add ``trainer.pt`` (the rest of a
training run's state: the step, the backbone, the optimizer without the head's rows) to the
same commit. A rank loads the rows of its own block from whichever files overlap it, so a
checkpoint written by 2 ranks loads into 3, and a single-process head's full weight is just
a checkpoint with one shard. The directory must be visible to every rank (a shared file
system) when loading into another layout. Everything else in the optimizer (the backbone's
state, the hyperparameters) is its ordinary state_dict: see optimizer_state_without_head.
A directory of shard files without save folders (written before manifests) still loads,
unchecked, with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .comm import object_gather, rank_and_world_size
from .commit import (
    check_keep_last,
    commit,
    committed_save,
    load_file,
    local_gather,
    next_save_number,
    on_every_rank,
    prepare_folder,
    remove_old_saves,
    save_folder,
    write_file,
)
from .sampled_optimizer import SampledRowsOptimizer

TRAINER = "trainer.pt"


def _shard_name(start: int, stop: int) -> str:
    return f"classes-{start}-{stop}.pt"


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


def shard_record(weight: torch.Tensor, start: int, num_classes: int, step: int | None = None,
                 optimizer_state: dict | None = None, optimizer_type: str | None = None,
                 state: dict | None = None, rows_per_class: int = 1) -> dict:
    """The shard file's content for the class centres of classes [start, start +
    len(weight) / rows_per_class) (K = rows_per_class rows per class, sub-centres), with
    the head's sampling ``step``, its running ``state`` (running_state) and the weight's
    optimizer state (of an ``optimizer_type`` optimizer, e.g. "SGD") when given."""
    stop = start + weight.shape[0] // rows_per_class
    record = {"start": start, "stop": stop, "num_classes": num_classes,
              "weight": weight.detach().cpu().clone(), "rows_per_class": rows_per_class}
    if step is not None:
        record["step"] = step
    if state:
        record["state"] = state
    if optimizer_state is not None:
        record["optimizer"] = {**_split_state(optimizer_state, weight), "type": optimizer_type}
    return record


def _layout(record: dict) -> tuple[int, int, int]:
    return record["num_classes"], record["rows_per_class"], record["weight"].shape[1]


def write_save(directory: str | Path, records: list[dict], *, trainer_state: dict | None = None,
               gather=local_gather, keep_last: int = 1) -> Path:
    """Commit a save of this rank's shard ``records`` (shard_record) and, from the first
    rank, ``trainer_state`` as trainer.pt; every rank of ``gather`` calls it. Returns the
    save's folder. A failure on any rank (a full disk, an unwritable directory) raises the
    same error on every rank and leaves the previous save the one loaded; saves older than
    the newest ``keep_last`` committed ones are removed once the new one is committed."""
    directory, keep_last = Path(directory), check_keep_last(keep_last)
    number = next_save_number(directory, gather)

    def write_files() -> list[dict]:
        folder, entries = prepare_folder(directory, number), []
        for record in records:
            entry = write_file(folder, _shard_name(record["start"], record["stop"]), record)
            entries.append({**entry, "start": record["start"], "stop": record["stop"],
                            "layout": _layout(record)})
        if trainer_state is not None:
            entries.append(write_file(folder, TRAINER, trainer_state))
        return entries

    files = [entry for part in gather(on_every_rank(write_files, gather)) for entry in part]
    shards = [entry for entry in files if "layout" in entry]
    layouts = {tuple(entry.pop("layout")) for entry in shards}
    if len(layouts) > 1:
        raise ValueError(f"the ranks save shards of different heads (num_classes, "
                         f"rows_per_class, embedding_dim: {sorted(layouts)})")
    (num_classes, rows_per_class, dim), = layouts
    manifest = {"world_size": len(shards), "num_classes": num_classes,
                "rows_per_class": rows_per_class, "embedding_dim": dim,
                "step": records[0].get("step"), "files": files}
    on_every_rank(lambda: commit(directory, number, manifest), gather)
    remove_old_saves(directory, number, keep_last)
    return save_folder(directory, number)


def save_sharded(directory: str | Path, head, optimizer=None, *,
                 trainer_state: dict | None = None, keep_last: int = 1) -> Path:
    """Every rank writes its block of ``head.weight`` (and, with ``optimizer``, that block's
    optimizer state) into a new save of ``directory``, rank 0 ``trainer_state`` with it;
    returns the save's folder once it is committed on every rank. A failure on any rank
    raises the same error on every rank, and the previous save stays the one loaded."""
    rank = rank_and_world_size(head.group)[0]
    step = int(head.step) if hasattr(head, "step") else None
    state = None if optimizer is None else optimizer.state.get(head.weight, {})
    kind = None if optimizer is None else _optimizer_type(optimizer)
    record = shard_record(head.weight, head.start, head.num_classes, step, state, kind,
                          running_state(head.state_dict()), getattr(head, "rows_per_class", 1))
    return write_save(directory, [record], trainer_state=trainer_state if rank == 0 else None,
                      gather=object_gather(head.group), keep_last=keep_last)


def save_full(directory: str | Path, weight: torch.Tensor, state: dict | None = None,
              rows_per_class: int = 1) -> Path:
    """Write a full (C, D) weight, e.g. a single-process head's, as a one-shard checkpoint
    ((C K, D) with rows_per_class K: SubCenterArcFace's, sub_centers=K); with ``state``
    (that head's state_dict()), its running state too, for load_sharded. No collective."""
    state = None if state is None else running_state(state)
    record = shard_record(weight, 0, weight.shape[0] // rows_per_class, state=state,
                          rows_per_class=rows_per_class)
    return write_save(directory, [record])


def _legacy(directory: Path) -> dict:
    """A manifest for shard files written before manifests (none to check them against)."""
    files = []
    for path in directory.glob("classes-*-*.pt"):
        start, stop = path.stem.split("-")[1:]
        if start.isdigit() and stop.isdigit():
            files.append({"name": path.name, "start": int(start), "stop": int(stop),
                          "bytes": None})
    if not files:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    warnings.warn(f"{directory}: a checkpoint without a manifest (written by an older "
                  "margin-softmax); whether it is whole cannot be checked", stacklevel=4)
    manifest = {"folder": directory, "save": None, "files": files}
    last = load_file(manifest, max(files, key=lambda entry: entry["stop"]))
    manifest.update(num_classes=last["num_classes"], embedding_dim=last["weight"].shape[1],
                    rows_per_class=last.get("rows_per_class", 1))
    return manifest


def _checkpoint(directory: str | Path) -> dict:
    """The manifest of the save to load from ``directory`` (commit.committed_save)."""
    directory = Path(directory)
    try:
        return committed_save(directory)
    except FileNotFoundError:
        if directory.is_dir() and not any(directory.glob("save-*")):
            return _legacy(directory)
        raise


def _shards(manifest: dict) -> list[dict]:
    """The manifest's shard entries in class order; ValueError unless they cover classes
    [0, C) exactly once."""
    shards = sorted((e for e in manifest["files"] if "start" in e), key=lambda e: e["start"])
    edge = 0
    for entry in shards:
        if entry["start"] != edge or entry["stop"] < entry["start"]:
            break
        edge = entry["stop"]
    else:
        if edge == manifest["num_classes"]:
            return shards
    ranges = [(entry["start"], entry["stop"]) for entry in shards]
    raise ValueError(f"the shard files in {manifest['folder']} ({ranges}) do not cover the "
                     f"checkpoint's {manifest['num_classes']} classes exactly once: shard "
                     "files are missing")


def _load_shard(manifest: dict, entry: dict) -> dict:
    """A shard file, checked, with its "path"; ValueError when its content disagrees with
    its name or the manifest."""
    record = load_file(manifest, entry)
    path = manifest["folder"] / entry["name"]
    recorded = (record.get("start"), record.get("stop"), record.get("num_classes"))
    if recorded != (entry["start"], entry["stop"], manifest["num_classes"]):
        raise ValueError(f"{path} holds classes [{recorded[0]}, {recorded[1]}) of "
                         f"{recorded[2]}, not what its name and the manifest say")
    record["path"] = path
    return record


def _block(manifest: dict, start: int, stop: int) -> list[tuple[dict, slice]]:
    """(record, its weight rows of classes [start, stop)) of every shard file that overlaps
    the block, in class order; for an empty block, the first file with no rows."""
    shards, parts = _shards(manifest), []
    for entry in shards:
        low, high = max(start, entry["start"]), min(stop, entry["stop"])
        if low < high:
            record = _load_shard(manifest, entry)
            k = record.get("rows_per_class", 1)
            parts.append((record, slice((low - record["start"]) * k,
                                        (high - record["start"]) * k)))
    return parts or [(_load_shard(manifest, shards[0]), slice(0, 0))]


def load_rows(directory: str | Path, start: int, stop: int) -> torch.Tensor:
    """The class centres of classes [start, stop): ((stop - start) K, D) for K rows per
    class (sub-centres; K = 1 otherwise); reads (and checks) only the shard files that
    overlap them."""
    return _rows(_block(_checkpoint(directory), start, stop))


def _rows(parts: list[tuple[dict, slice]]) -> torch.Tensor:
    return torch.cat([record["weight"][rows] for record, rows in parts])


def load_full(directory: str | Path) -> torch.Tensor:
    """The full (C, D) weight, e.g. for margin_softmax.ArcFace(...).weight."""
    manifest = _checkpoint(directory)
    return _rows(_block(manifest, 0, manifest["num_classes"]))


def load_state(directory: str | Path) -> dict:
    """The running state saved with a checkpoint ({} if none), for a single-process head:
    ``head.load_state_dict({"weight": load_full(directory), **load_state(directory)})``."""
    manifest = _checkpoint(directory)
    return _load_shard(manifest, _shards(manifest)[0]).get("state", {})


def load_trainer_state(directory: str | Path) -> dict:
    """The trainer_state that rank 0 saved with the committed save (checked like the
    shards); ValueError when the save has none."""
    manifest = _checkpoint(directory)
    entry = next((e for e in manifest["files"] if e["name"] == TRAINER), None)
    if entry is None:
        raise ValueError(f"the checkpoint in {manifest['folder']} holds no {TRAINER} (saved "
                         "without trainer_state)")
    return load_file(manifest, entry)


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


def _read_for(directory: str | Path, head, optimizer) -> tuple[dict, list, dict | None]:
    """(manifest, this rank's parts, its optimizer state or None), checked against the head:
    reads files, changes nothing."""
    manifest = _checkpoint(directory)
    checks = ((manifest["num_classes"], head.num_classes, "{} classes"),
              (manifest["rows_per_class"], getattr(head, "rows_per_class", 1),
               "{} weight row(s) per class (sub-centres)"),
              (manifest["embedding_dim"], head.weight.shape[1], "embedding_dim {}"))
    for saved, own, what in checks:
        if saved != own:
            raise ValueError(f"the checkpoint in {manifest['folder']} has {what.format(saved)}, "
                             f"the head has {own}")
    parts = _block(manifest, head.start, head.stop)
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
    return manifest, parts, state


def load_sharded(directory: str | Path, head, optimizer=None) -> None:
    """Copy this rank's block [head.start, head.stop) into ``head.weight``, the sampling step
    into ``head.step``, the running state where the checkpoint has one (a checkpoint
    without, e.g. PartialFC's or save_full's of a weight alone, leaves it as it is), and,
    with ``optimizer``, the block's optimizer state into
    ``optimizer.state[head.weight]``. Every rank calls it (after
    ``optimizer.load_state_dict``, which replaces the whole state). Nothing is changed on
    any rank unless every rank read the same committed save and checked it: otherwise the
    same ValueError on every rank, naming the file (a missing, truncated or changed shard,
    one saved without an optimizer, another head's) or the ranks' different saves."""
    gather = object_gather(head.group)
    manifest, parts, state = on_every_rank(lambda: _read_for(directory, head, optimizer), gather)
    seen = gather((str(manifest["folder"]), manifest["save"]))
    if len({number for _, number in seen}) > 1:
        raise ValueError(f"the ranks see different saves ({seen}: folder and save number in "
                         "rank order): a save committed on some ranks' file systems only")
    saved = parts[0][0].get("state")
    if saved:  # first: a state that refuses this head (ElasticFace's kind) loads nothing
        head.load_state_dict(saved, strict=False)
    with torch.no_grad():
        head.weight.copy_(_rows(parts))
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
