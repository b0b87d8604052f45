"""Helpers shared by the subcommands: the one-line error, argument types, output folders."""

from __future__ import annotations

import argparse
import ast
import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..atomic_files import check_writable
from ..registry import resolve_name


class CliError(Exception):
    """A problem with the user's arguments or files: printed as one line, exit status 2."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


SEED_MAX = 2**64 - 1  # torch.manual_seed takes [0, 2**64 - 1]; NumPy's default_rng no negatives


def seed_int(text: str, high: int = SEED_MAX) -> int:
    """An integer seed in [0, high] (functools.partial sets another high)."""
    message = f"expected an integer in [0, {high}], got {text!r}"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if not 0 <= value <= high:
        raise argparse.ArgumentTypeError(message)
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def loss_names(text: str) -> list[str]:
    """'arcface,cosface' -> ['arcface', 'cosface'] (registered names; aliases resolved)."""
    try:
        return [resolve_name(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_value(text: str) -> Any:
    """A parameter value from the command line: 4 -> int, 0.2 -> float, true -> True,
    none -> None, anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text
    return value if isinstance(value, (int, float)) else text


def number(text: str) -> int | float:
    """A finite number from the command line: 4 -> int, 0.2 -> float."""
    value = parse_value(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    return value


def key_value(text: str) -> tuple[str, Any]:
    """'m3=0.1' -> ('m3', 0.1)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key.strip(), parse_value(value)


def set_threads(threads: int | None) -> None:
    """Fix torch's intra-op threads. One thread is fastest for these small networks on a
    shared machine (two threads fighting other processes can be 10-20x slower)."""
    if threads is not None:
        import torch  # here, not above: the parsers (and --help) need no torch

        torch.set_num_threads(threads)


def check_folder(option: str, value, folder: Path) -> None:
    """Fail before the work, not after it, where no file can be written in ``folder``: it,
    or the nearest of its parents that exists, is a file, or creating a file there fails
    (a read-only file system, no permission). Folders made for the probe are removed again,
    so a run refused later for another reason leaves nothing behind."""
    made = []
    for path in (folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                raise CliError(f"{option} {value}: {path} is a file, not a folder")
            break
        made.append(path)  # deepest first
    try:
        check_writable(folder)
    except OSError as error:
        raise CliError(f"{option} {value}: cannot write in {folder} "
                       f"({error.strerror or error})") from None
    finally:
        for path in made:
            with contextlib.suppress(OSError):
                path.rmdir()


@contextlib.contextmanager
def writing(option: str, path) -> Iterator[None]:
    """An OSError while ``option`` writes ``path`` (a full disk, a size limit) as one
    CliError line. The files are written with atomic_files, so the previous file is intact."""
    try:
        yield
    except OSError as error:
        raise CliError(f"{option} {path}: cannot write ({error.strerror or error}); "
                       "any previous file there is unchanged") from None


def output_file(option: str, path: str | os.PathLike, force: bool) -> Path:
    """The file ``path`` that ``option`` will write, checked before the work: not a folder,
    not an existing file unless ``force``, its folder writable."""
    out = Path(path)
    if out.is_dir():
        raise CliError(f"{option} {out}: is a folder; name a file")
    if out.exists() and not force:
        raise CliError(f"{option} {out}: exists; pass --force to replace it")
    check_folder(option, out, out.parent)
    return out


def output_folder(path: str | os.PathLike, force: bool) -> Path:
    """Create the folder ``path`` for results; refuse one that holds files unless ``force``
    (then only files with the names we write are replaced; nothing is deleted), or one where
    no file can be created."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CliError(
            f"--out {out}: folder is not empty; choose a new folder or pass --force "
            "(files with the names compare writes are replaced, others are kept)"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CliError(f"--out {out}: cannot create the folder ({error.strerror})") from None
    check_folder("--out", out, out)
    return out
