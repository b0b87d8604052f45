"""Checkpoint saves that are committed whole: a kill, a full disk or a lost file at any moment
leaves the previous save or the new one, and a torn set is refused, never loaded.

    DIR/save-000007/classes-0-500.pt      each rank's files (atomic_files), hashed as written
    DIR/save-000007/classes-500-1000.pt
    DIR/save-000007/trainer.pt            rank 0's training state, when given
    DIR/save-000007/manifest.json         the commit: written last, once every rank's files are

manifest.json holds the save's number, the world size, the class ranges, the step, and each
file's size and SHA-256. Loading takes the newest save that has a manifest (a newer one
without is a save that was cut short: it is ignored with a warning) and checks every file
it reads against the manifest. After a commit, every save but the newest ``keep_last``
committed ones is removed, and so is any save that was never committed.

Every rank writes the same manifest into its view of DIR (on a shared file system they
replace each other atomically), so a directory local to each node also commits. Steps that
can fail on one rank (a full disk, a bad file) end in all_gather_failures: every rank
raises the same error instead of some waiting for the others until the timeout. ``gather``
is the collective that does it: obj -> [every rank's obj], all_gather_objects over the
group, or local_gather in a single process.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch

from ..atomic_files import atomic_open, atomic_write_text, check_writable

FORMAT = "margin-softmax sharded checkpoint"
VERSION = 1
MANIFEST = "manifest.json"


def save_folder(directory: Path, number: int) -> Path:
    return directory / f"save-{number:06d}"


def save_folders(directory: Path) -> list[tuple[int, Path]]:
    """(number, folder) of every save-NNNNNN folder in ``directory``, oldest first."""
    found = []
    for path in directory.glob("save-*"):
        number = path.name[len("save-"):]
        if number.isdigit() and path.is_dir():
            found.append((int(number), path))
    return sorted(found)


def local_gather(obj) -> list:
    """The gather of a single process: [obj]."""
    return [obj]


def all_gather_failures(error: BaseException | None, gather=local_gather) -> None:
    """Raise on every rank when a rank's part failed: the first failing rank's error (its
    type when a ValueError, TypeError or OSError, else RuntimeError), prefixed by its rank.
    ``gather``: obj -> [every rank's obj] (all_gather_objects over the group)."""
    reports = gather(None if error is None else (type(error).__name__, str(error)))
    failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
    if failed:
        rank, (kind, message) = failed[0]
        prefix = f"rank {rank}: " if len(reports) > 1 else ""
        kind = getattr(builtins, kind, None)
        if not (isinstance(kind, type) and issubclass(kind, (ValueError, TypeError, OSError))):
            kind = RuntimeError
        raise kind(prefix + message)


def on_every_rank(work, gather=local_gather):
    """work()'s result; when it raised on any rank, the same error on every rank
    (all_gather_failures) instead of some ranks waiting for the others until the timeout."""
    result, error = None, None
    try:
        result = work()
    except Exception as failure:  # a rank's failure must reach every rank
        error = failure
    all_gather_failures(error, gather)
    return result


def next_save_number(directory: Path, gather=local_gather) -> int:
    """One more than the newest save any rank sees, committed or not: the same on every rank."""
    newest = max([number for number, _ in save_folders(directory)], default=0)
    return max(gather(newest)) + 1


class _HashingWriter:
    """A binary file's write(), counting and hashing the bytes on their way; keeps the
    OSError of a failed write (torch.save reports it as a RuntimeError from C++)."""

    def __init__(self, handle) -> None:
        self.handle, self.sha256, self.bytes = handle, hashlib.sha256(), 0
        self.error: OSError | None = None

    def write(self, data) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def write_file(folder: Path, name: str, record: dict) -> dict:
    """torch.save ``record`` to folder/name atomically; its manifest entry {name, bytes,
    sha256}. A failed write is an OSError naming the file (a full disk: ENOSPC)."""
    path = folder / name
    with atomic_open(path) as handle:
        writer = _HashingWriter(handle)
        try:
            torch.save(record, writer)
        except RuntimeError:
            if writer.error is None:
                raise
            raise OSError(writer.error.errno, writer.error.strerror, str(path)) from None
    return {"name": name, "bytes": writer.bytes, "sha256": writer.sha256.hexdigest()}


def commit(directory: Path, number: int, manifest: dict) -> None:
    """Write save-NNNNNN/manifest.json, atomically: from then on the save is the one loaded."""
    record = {"format": FORMAT, "version": VERSION, "save": number, **manifest}
    atomic_write_text(save_folder(directory, number) / MANIFEST,
                      json.dumps(record, indent=1) + "\n")


def remove_old_saves(directory: Path, number: int, keep_last: int) -> None:
    """Remove the saves up to ``number`` but the newest ``keep_last`` committed ones: older
    committed saves, and saves never committed (cut short by a kill or an error)."""
    kept = 0
    for older, path in reversed(save_folders(directory)):
        if older > number:
            continue
        if (path / MANIFEST).is_file() and kept < keep_last:
            kept += 1
            continue
        shutil.rmtree(path, ignore_errors=True)  # another rank may be removing it too


def check_keep_last(keep_last) -> int:
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(f"keep_last must be an int >= 1 (the committed saves to keep), "
                         f"got {keep_last!r}")
    return keep_last


def check_save_directory(directory: str | os.PathLike) -> None:
    """ValueError naming ``directory`` unless it is (or can be made as) a folder in which a
    file can be written: the check to run before hours of training, not after."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"checkpoint directory {directory} is a file")
    try:
        check_writable(directory)
    except OSError as error:
        raise ValueError(f"checkpoint directory {directory} is not writable "
                         f"({error.strerror or error})") from None


def prepare_folder(directory: Path, number: int) -> Path:
    """Make DIR/save-NNNNNN, after check_save_directory(DIR)."""
    check_save_directory(directory)
    folder = save_folder(directory, number)
    folder.mkdir(exist_ok=True)
    return folder


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable checkpoint manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a margin-softmax checkpoint manifest")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{path}: manifest version {manifest.get('version')!r}; this "
                         f"margin-softmax reads version {VERSION}")
    manifest["folder"] = folder
    return manifest


def committed_save(directory: str | os.PathLike) -> dict:
    """The manifest of the save to load, with its "folder": ``directory`` itself when it is
    a save folder, else the newest committed save in it. FileNotFoundError when there is
    none; a warning for newer saves that were never committed (they are ignored)."""
    directory = Path(directory)
    if (directory / MANIFEST).is_file():
        return _read_manifest(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint directory {directory}")
    saves = save_folders(directory)
    committed = [(n, path) for n, path in saves if (path / MANIFEST).is_file()]
    if not committed:
        cut = f" ({len(saves)} save(s) never committed)" if saves else ""
        raise FileNotFoundError(f"no committed checkpoint in {directory}{cut}")
    number, folder = committed[-1]
    newer = [path.name for n, path in saves if n > number]
    if newer:
        warnings.warn(f"{directory}: ignoring {', '.join(newer)}, never committed (a save cut "
                      f"short); loading {folder.name}", stacklevel=3)
    return _read_manifest(folder)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def load_file(manifest: dict, entry: dict) -> dict:
    """torch.load a file of the save after checking its size and SHA-256 against ``entry``
    (ValueError naming the file when it is missing, cut short, changed or unreadable)."""
    path = manifest["folder"] / entry["name"]
    if not path.is_file():
        raise ValueError(f"{path}: missing from the checkpoint (listed in its manifest)")
    size = path.stat().st_size
    if entry.get("bytes") is not None:  # None: a checkpoint of before manifests
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ValueError(f"{path}: {size} bytes, the manifest records {entry['bytes']} "
                             "(truncated or replaced)")
        if _sha256(path) != entry["sha256"]:
            raise ValueError(f"{path}: its SHA-256 differs from the manifest's (the file "
                             "changed after the save)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which
        raise ValueError(f"{path}: not a readable checkpoint file ({error})") from None
