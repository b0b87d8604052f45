"""atomic_files: a write that fails at any byte, hits a real file-size limit or is killed
with SIGKILL leaves the previous file byte for byte, and no temporary once the next write
has run."""

import errno
import os
import signal
import subprocess
import sys

import pytest

from margin_softmax import atomic_files
from margin_softmax.atomic_files import atomic_open, atomic_write_text, remove_stale_temporaries

OLD = b"the previous file\n" * 50
NEW = bytes(range(256)) * 40  # 10240 bytes


def temporaries(path):
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


@pytest.fixture
def old_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(OLD)
    return path


@pytest.mark.parametrize("k", [0, 1, len(NEW) // 2, len(NEW) - 1])
def test_a_write_failing_after_k_bytes_leaves_the_old_file(old_file, k):
    with pytest.raises(OSError, match="No space"), atomic_open(old_file) as handle:
        handle.write(NEW[:k])
        handle.flush()  # the k bytes reach the temporary on disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert old_file.read_bytes() == OLD
    assert list(old_file.parent.iterdir()) == [old_file]


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_a_failing_fsync_or_rename_leaves_the_old_file(old_file, monkeypatch, step):
    def fail(*args):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(atomic_files.os, step, fail)
    with pytest.raises(OSError, match="Input/output"), atomic_open(old_file) as handle:
        handle.write(NEW)
    monkeypatch.undo()
    assert old_file.read_bytes() == OLD
    assert list(old_file.parent.iterdir()) == [old_file]


SIZE_LIMITED = """
import resource, signal, sys
from margin_softmax.atomic_files import atomic_open
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit is then EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
try:
    with atomic_open(sys.argv[1]) as handle:
        handle.write(b"n" * 2**20)
except OSError as error:
    sys.exit(error.errno)
"""


def test_a_real_file_size_limit_leaves_the_old_file(old_file):
    pytest.importorskip("resource")
    done = subprocess.run([sys.executable, "-c", SIZE_LIMITED, str(old_file)], timeout=60)
    assert done.returncode == errno.EFBIG
    assert old_file.read_bytes() == OLD
    assert list(old_file.parent.iterdir()) == [old_file]


SLOW_WRITER = """
import sys, time
from margin_softmax.atomic_files import atomic_open
with atomic_open(sys.argv[1]) as handle:
    for _ in range(600):  # 600 MiB over a minute: killed long before the end
        handle.write(b"n" * 2**20)
        handle.flush()
        print("wrote 1 MiB", flush=True)
        time.sleep(0.1)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="no SIGKILL here")
def test_kill_9_mid_write_leaves_the_old_file_and_the_next_write_removes_its_temporary(
        old_file):
    child = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(old_file)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "wrote 1 MiB\n"
        [temporary] = temporaries(old_file)
        assert remove_stale_temporaries(old_file) == []  # its writer is alive: kept
    finally:
        child.kill()  # SIGKILL: no cleanup runs
        child.wait(timeout=60)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert old_file.read_bytes() == OLD
    assert temporaries(old_file) == [temporary] and temporary.stat().st_size >= 2**20
    atomic_write_text(old_file, "new\n")
    assert old_file.read_text() == "new\n"
    assert list(old_file.parent.iterdir()) == [old_file]


def test_a_probe_left_by_a_killed_process_is_removed_by_the_next_check(tmp_path):
    """check_writable creates and removes a probe; a kill between the two left it there for
    good (found by the before/after case run of issue 13). The next check removes a dead
    process's probe and keeps a live one's."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = tmp_path / f".write-probe.{atomic_files._HOST}.{2**22 + 12345}.tmp"
        alive = tmp_path / f".write-probe.{atomic_files._HOST}.{child.pid}.tmp"
        dead.touch()
        alive.touch()
        atomic_files.check_writable(tmp_path)
        assert sorted(tmp_path.iterdir()) == [alive]
    finally:
        child.kill()
        child.wait(timeout=60)
