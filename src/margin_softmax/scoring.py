"""Readers for verification score files, cosine scoring of embeddings, and the summary of
metrics that ``eval`` and ``compare`` print.

Formats (UTF-8 text, a leading byte-order mark ignored; whitespace-separated, one trial per
line, blank lines ignored):

- trials, Kaldi:     ``enroll test target|nontarget``
- trials, VoxCeleb:  ``1|0 enroll test``
- scores, Kaldi:     ``enroll test score``  (joined to the trials on the (enroll, test) pair)
- two columns:       ``label score``        (label target|nontarget|1|0)
- embeddings:        .npy (N, D), the trials name rows by index 0..N-1; or .npz with
                     ``embeddings`` (N, D) and optional ``names`` (N,) the trials use.

Every problem raises ScoreFileError (a ValueError) whose message starts ``file:line:``.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import metrics
from .atomic_files import atomic_open
from .score_norm import class_means, unit_rows

LABELS = {"target": 1, "nontarget": 0, "non-target": 0, "1": 1, "0": 0}


class ScoreFileError(ValueError):
    """A missing, malformed or inconsistent input file: 'file:line: what is wrong'."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


@dataclass
class Trials:
    """Trials read from a file: enroll[t], test[t], label[t] (1 target, 0 non-target) and
    the line each came from."""

    enroll: list[str]
    test: list[str]
    labels: np.ndarray  # (T,) int64
    lines: list[int]


def _rows(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise ScoreFileError(path, "no such file" if not path.exists() else "not a file")
    with open(path, "rb") as handle:
        for line, raw in enumerate(handle, start=1):
            try:
                fields = raw.decode("utf-8-sig").split()  # a BOM starts some files
            except UnicodeDecodeError:
                raise ScoreFileError(path, "not UTF-8 text", line) from None
            if fields:
                yield line, fields


def _label(path, line: int, text: str) -> int:
    if text.lower() not in LABELS:
        raise ScoreFileError(path, f"label must be target, nontarget, 1 or 0; got {text!r}", line)
    return LABELS[text.lower()]


def _score(path, line: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ScoreFileError(path, f"score is not a number: {text!r}", line) from None
    if not math.isfinite(value):
        raise ScoreFileError(path, f"score must be finite; got {text!r}", line)
    return value


def _kaldi_order(rows: list[tuple[int, list[str]]]) -> bool:
    """True for Kaldi order (label last), False for VoxCeleb (label first): the order in which
    every line has a label. Where both fit (row indices 0 and 1 as names), words in the last
    field mean Kaldi, else VoxCeleb; where neither does, the first line decides."""
    last = all(fields[2].lower() in LABELS for _, fields in rows)
    first = all(fields[0].lower() in LABELS for _, fields in rows)
    if last and first:
        return any(not fields[2].isdigit() for _, fields in rows)
    if last or first:
        return last
    fields = rows[0][1]
    return fields[2].lower() in LABELS or fields[0].lower() not in LABELS


def read_trials(path: str | os.PathLike) -> Trials:
    """Trials in Kaldi (``enroll test target``) or VoxCeleb (``1 enroll test``) order, the
    order every line fits (so row indices 0 and 1 as names are not taken for labels)."""
    trials = Trials([], [], np.zeros(0, np.int64), [])
    rows = list(_rows(path))
    for line, fields in rows:
        if len(fields) != 3:
            raise ScoreFileError(
                path, f"expected 3 fields 'enroll test target|nontarget', got {len(fields)}", line
            )
    kaldi = _kaldi_order(rows) if rows else True
    labels, seen = [], {}  # seen: (enroll, test) -> (label, line)
    for line, fields in rows:
        enroll, test, label = fields if kaldi else (fields[1], fields[2], fields[0])
        labels.append(_label(path, line, label))
        first = seen.setdefault((enroll, test), (labels[-1], line))
        if first[0] != labels[-1]:
            raise ScoreFileError(path, f"trial {enroll} {test} is labelled otherwise on line "
                                 f"{first[1]}", line)
        trials.enroll.append(enroll)
        trials.test.append(test)
        trials.lines.append(line)
    if not labels:
        raise ScoreFileError(path, "no trials (the file is empty)")
    trials.labels = np.asarray(labels, dtype=np.int64)
    return trials


def read_scores(path: str | os.PathLike) -> dict[tuple[str, str], tuple[float, int]]:
    """Kaldi scores ``enroll test score``: (enroll, test) -> (score, line). A pair may repeat
    with the same score (write_scores writes one line per trial, and a trial list may repeat a
    pair), not with another."""
    scores: dict[tuple[str, str], tuple[float, int]] = {}
    for line, fields in _rows(path):
        if len(fields) != 3:
            raise ScoreFileError(path, f"expected 3 fields 'enroll test score', got {len(fields)}",
                                 line)
        pair, score = (fields[0], fields[1]), _score(path, line, fields[2])
        if pair in scores and scores[pair][0] != score:
            raise ScoreFileError(path, f"pair {pair[0]} {pair[1]} is already scored "
                                 f"{scores[pair][0]!r} on line {scores[pair][1]}", line)
        scores.setdefault(pair, (score, line))
    if not scores:
        raise ScoreFileError(path, "no scores (the file is empty)")
    return scores


def read_label_scores(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Two columns ``label score``: scores (T,) float64 and labels (T,) int64."""
    scores, labels = [], []
    for line, fields in _rows(path):
        if len(fields) != 2:
            hint = "; a 3-field scores file needs --trials" if len(fields) == 3 else ""
            raise ScoreFileError(path, f"expected 2 fields 'label score', got {len(fields)}"
                                 f"{hint}", line)
        labels.append(_label(path, line, fields[0]))
        scores.append(_score(path, line, fields[1]))
    if not scores:
        raise ScoreFileError(path, "no scores (the file is empty)")
    return np.asarray(scores), np.asarray(labels, dtype=np.int64)


def join_scores(
    trials: Trials, scores: dict[tuple[str, str], tuple[float, int]], trials_path, scores_path
) -> np.ndarray:
    """The score of each trial (T,); a trial without a score is an error."""
    out = np.empty(len(trials.enroll))
    for t, pair in enumerate(zip(trials.enroll, trials.test, strict=True)):
        if pair not in scores:
            raise ScoreFileError(trials_path, f"trial {pair[0]} {pair[1]} has no score in "
                                 f"{scores_path}", trials.lines[t])
        out[t] = scores[pair][0]
    return out


def _name(value) -> str:
    """A name from an .npz ``names`` array: bytes (dtype S, as h5py and Python 2 wrote them)
    decoded as UTF-8, anything else as str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# What NumPy raises on a file that is not a whole .npy/.npz: a cut-short zip (BadZipFile,
# zlib.error), a 0-byte or cut-short .npy (EOFError, ValueError), pickled data (ValueError).
NPY_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a .npy (under the key "") or a .npz (by name), read in full now, without
    pickles; a missing, empty, cut-short or otherwise unreadable file is a ScoreFileError
    naming it (no EOFError or BadZipFile from inside NumPy)."""
    path = Path(path)
    if not path.is_file():
        raise ScoreFileError(path, "no such file" if not path.exists() else "not a file")
    if path.stat().st_size == 0:
        raise ScoreFileError(path, "the file is empty (0 bytes); expected a .npy or .npz file")
    key = None
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            return {"": loaded}
        with loaded:
            arrays = {}
            for key in loaded.files:
                arrays[key] = loaded[key]
            return arrays
    except NPY_ERRORS as error:
        what = ("not a .npy or .npz file, or one cut short" if key is None
                else f"array {key!r} cannot be read")
        raise ScoreFileError(path, f"{what} ({type(error).__name__}: {error})") from None


def read_embeddings(path: str | os.PathLike) -> tuple[np.ndarray, list[str] | None]:
    """Embeddings (N, D) and their names (N,) when the .npz has ``names``, else None."""
    return embeddings_in(load_arrays(path), path)


def embeddings_in(
    arrays: dict[str, np.ndarray], path: str | os.PathLike
) -> tuple[np.ndarray, list[str] | None]:
    """read_embeddings' checks on the arrays of ``path`` (load_arrays)."""
    names = None
    embeddings = arrays.get("", arrays.get("embeddings"))
    if embeddings is None:
        raise ScoreFileError(path, f"no 'embeddings' array; it holds {list(arrays)}")
    if "names" in arrays:
        names = [_name(n) for n in arrays["names"]]
    if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.number):
        raise ScoreFileError(path, f"embeddings must be a 2-D numeric array; got shape "
                             f"{embeddings.shape}, dtype {embeddings.dtype}")
    bad = ~np.isfinite(embeddings).all(axis=1)
    if bad.any():
        raise ScoreFileError(path, f"row {int(np.flatnonzero(bad)[0])} is not finite")
    if 0 in embeddings.shape:
        raise ScoreFileError(path, f"no embeddings: shape {embeddings.shape}")
    if names is not None and len(names) != embeddings.shape[0]:
        raise ScoreFileError(path, f"{len(names)} names for {embeddings.shape[0]} embeddings")
    if names is not None and len(set(names)) != len(names):
        first: dict[str, int] = {}
        for k, name in enumerate(names):
            if name in first:
                raise ScoreFileError(path, f"name {name!r} is on rows {first[name]} and {k}")
            first[name] = k
    return embeddings.astype(np.float64), names


def trial_rows(
    n: int, names: list[str] | None, trials: Trials, trials_path, emb_path
) -> tuple[np.ndarray, np.ndarray]:
    """The embedding rows (enroll (T,), test (T,)) of each trial: by ``names`` or, when the
    file has none, by index 0..n-1."""
    index = {name: k for k, name in enumerate(names)} if names is not None else None

    def row(key: str, t: int) -> int:
        if index is not None:
            if key not in index:
                raise ScoreFileError(trials_path, f"{key!r} is not a name in {emb_path}",
                                     trials.lines[t])
            return index[key]
        if not (key.isascii() and key.isdigit()) or int(key) >= n:  # not '²' or '١'
            raise ScoreFileError(trials_path, f"{key!r} is not a row index 0..{n - 1} of "
                                 f"{emb_path} (which has no names)", trials.lines[t])
        return int(key)

    i = np.array([row(k, t) for t, k in enumerate(trials.enroll)], dtype=np.int64)  # (T,)
    j = np.array([row(k, t) for t, k in enumerate(trials.test)], dtype=np.int64)  # (T,)
    return i, j


def cosine_scores(
    embeddings: np.ndarray, names: list[str] | None, trials: Trials, trials_path, emb_path
) -> np.ndarray:
    """cos(e_enroll, e_test) of each trial (T,); trials name rows by ``names`` or by index."""
    i, j = trial_rows(embeddings.shape[0], names, trials, trials_path, emb_path)
    return pair_cosines(embeddings, i, j)


PAIR_BLOCK = 1 << 16  # trials per block: two (block, D) gathers, not two (T, D)


def pair_cosines(embeddings: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """cos(e_i[t], e_j[t]) (T,) for rows i (T,) and j (T,) of embeddings (N, D), in blocks of
    trials: memory O(N D + T), also for the 10^7 trials of face benchmarks."""
    unit = unit_rows(embeddings)
    out = np.empty(len(i))
    for a in range(0, len(i), PAIR_BLOCK):
        b = a + PAIR_BLOCK
        out[a:b] = np.einsum("td,td->t", unit[i[a:b]], unit[j[a:b]])
    return out


def read_cohort(path: str | os.PathLike) -> np.ndarray:
    """A score-normalisation cohort (M, D): a .npy, or a .npz's ``embeddings``; where the
    .npz also has ``labels`` (M,), the mean embedding of each label (its speakers)."""
    arrays = load_arrays(path)
    embeddings, _ = embeddings_in(arrays, path)
    labels = arrays.get("labels")
    if labels is None:
        return embeddings
    if labels.shape != (embeddings.shape[0],):
        raise ScoreFileError(path, f"labels has shape {labels.shape}; expected "
                             f"({embeddings.shape[0]},), one per embedding")
    return class_means(embeddings, labels)


def write_scores(path: str | os.PathLike, trials: Trials, scores: np.ndarray) -> None:
    """Kaldi scores, ``enroll test score`` per trial in the trials' order, into ``path`` (its
    folder made if needed); each score in the fewest digits that read back as the same float,
    so the file gives exactly the metrics the scores gave. Written with atomic_open: a failure
    at any byte leaves the previous ``path`` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as handle:
        for enroll, test, score in zip(trials.enroll, trials.test, scores, strict=True):
            handle.write(f"{enroll} {test} {float(score)!r}\n")


def far_key(far: float) -> str:
    """'tar_at_far_1e-3' for far = 0.001."""
    return "tar_at_far_" + np.format_float_scientific(far, trim="-", exp_digits=1)


def summary(
    scores: np.ndarray,
    labels: np.ndarray,
    p_targets: Sequence[float] = (0.01, 0.05),
    fars: Sequence[float] = (1e-3,),
) -> dict[str, float]:
    """EER, minDCF at each p_target (``min_dcf`` is the first), TAR at each FAR; fractions."""
    out = {"eer": metrics.eer(scores, labels)}
    for k, p in enumerate(p_targets):
        value = metrics.min_dcf(scores, labels, p_target=p)
        if k == 0:
            out["min_dcf"] = value
        out[f"min_dcf_{p:g}"] = value
    for far in fars:
        out[far_key(far)] = metrics.tar_at_far(scores, labels, far=far)
    return out


def check_both_classes(labels: np.ndarray, path) -> None:
    """An error naming ``path`` when the trials lack targets or non-targets."""
    targets = int(labels.sum())
    if targets == 0 or targets == labels.size:
        kind = "target" if targets == 0 else "non-target"
        raise ScoreFileError(path, f"no {kind} trials among {labels.size}; need both kinds")
