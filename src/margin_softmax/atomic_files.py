"""Atomic file writes: a crash, a kill -9 or a full disk at any byte leaves the old file (byte
for byte) or the new one, never a part of either.

    with atomic_open(path, "wb") as handle:   # or "w" for text
        torch.save(state, handle)             # np.save, fig.savefig(handle, format="png"), ...

writes ``.{name}.{host}.{pid}.tmp`` in the same folder, flushes and fsyncs it, renames it over
``path`` with os.replace (atomic on POSIX and Windows), then fsyncs the folder so that the
rename itself survives a power cut. On an error the temporary is removed and ``path`` is
untouched. A kill -9 cannot run that cleanup, so every write to ``path`` first removes the
temporaries of ``path`` left by dead processes of this host.

check_writable(folder) creates and removes a probe file (removing dead processes' probes
first): the way to find a read-only or missing output folder before hours of work rather
than after.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_HOST = socket.gethostname().replace(".", "_") or "host"


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` that dead processes of this host left (a kill -9
    during a write); returns them. Other hosts' (a shared file system) are left alone."""
    path = Path(path)
    removed = []
    for stale in path.parent.glob(f".{path.name}.{_HOST}.*.tmp"):
        pid = stale.name[len(f".{path.name}.{_HOST}."):-len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
                removed.append(stale)
    return removed


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a rename or creation in ``folder`` durable (a no-op where folders cannot be
    opened, as on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb",
                encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary beside ``path`` for writing ("wb" or "w"); on a clean exit it
    replaces ``path`` atomically and durably, on an exception it is removed and ``path`` is
    left as it was."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    remove_stale_temporaries(path)
    tmp = _temporary(path)
    text = {"encoding": encoding, "newline": ""} if mode == "w" else {}
    try:
        with open(tmp, mode, **text) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_folder(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``Path(path).write_text(text)``, atomically (UTF-8)."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def check_writable(folder: str | os.PathLike) -> None:
    """OSError (errno and the folder in its message) unless a file can be created in
    ``folder`` (made with its parents if missing) and removed again."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder / "write-probe")  # probes of processes killed here
    probe = _temporary(folder / "write-probe")  # .write-probe.{host}.{pid}.tmp
    with open(probe, "wb"):
        pass
    probe.unlink()
