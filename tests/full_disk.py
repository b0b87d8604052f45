"""A disk that fills up: a file wrapper whose writes fail with ENOSPC once its room is spent."""

from __future__ import annotations

import errno
import os


class Room:
    """Bytes (characters in text mode) left on a disk; one Room may serve many files."""

    def __init__(self, size: int) -> None:
        self.size = size


class FullDisk:
    """A file open for writing that writes while ``room`` lasts, then fails as a full disk
    does: the part that fits is written, then OSError(ENOSPC)."""

    def __init__(self, handle, room: Room) -> None:
        self.handle, self.room = handle, room

    def write(self, data):
        if not isinstance(data, str):
            data = memoryview(data).cast("B")
        if len(data) > self.room.size:
            self.handle.write(data[: self.room.size])
            self.room.size = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room.size -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()
