"""Key and score layouts of other toolkits that ``scoring``'s readers do not take:

- SITW and VOiCES keys (their scoring scripts): ``enroll test tgt|imp``;
- Kaldi's ``compute-eer`` input, as its recipes' ``local/prepare_for_eer.py`` prints it:
  ``score target|nontarget``, the score first.

BOSARIS's text files need nothing new: its key (``model segment target|nontarget``) and
score (``model segment score``) files are the Kaldi layouts ``scoring`` reads. Its HDF5 files
are not read (h5py is not a dependency).

``read_key`` and ``read_label_scores`` take any of these and the ``scoring`` layouts, decided
by the first line; every problem is a ScoreFileError 'file:line: ...'.
"""

from __future__ import annotations

import os

import numpy as np

from . import scoring
from .scoring import ScoreFileError, Trials, _rows, _score

SITW_LABELS = {"tgt": 1, "imp": 0}
WORD_LABELS = {"target": 1, "nontarget": 0, "non-target": 0, **SITW_LABELS}


def _first_fields(path: str | os.PathLike) -> list[str]:
    rows = _rows(path)
    try:
        return next(rows, (0, []))[1]
    finally:
        rows.close()


def read_key(path: str | os.PathLike) -> Trials:
    """Trials from a key in Kaldi, VoxCeleb (``scoring.read_trials``) or SITW layout."""
    first = _first_fields(path)
    if len(first) == 3 and first[2].lower() in SITW_LABELS:
        return _read_sitw_key(path)
    return scoring.read_trials(path)


def _read_sitw_key(path: str | os.PathLike) -> Trials:
    """``enroll test tgt|imp`` per line; a pair listed again must keep its label."""
    enroll, test, labels, lines = [], [], [], []
    seen: dict[tuple[str, str], tuple[int, int]] = {}  # pair -> (label, line)
    for line, fields in _rows(path):
        if len(fields) != 3:
            raise ScoreFileError(path, f"expected 3 fields 'enroll test tgt|imp', got "
                                 f"{len(fields)}", line)
        if fields[2].lower() not in SITW_LABELS:
            raise ScoreFileError(path, f"label must be tgt or imp (as on line 1); got "
                                 f"{fields[2]!r}", line)
        label = SITW_LABELS[fields[2].lower()]
        pair = (fields[0], fields[1])
        first = seen.setdefault(pair, (label, line))
        if first[0] != label:
            raise ScoreFileError(path, f"trial {pair[0]} {pair[1]} is labelled otherwise on "
                                 f"line {first[1]}", line)
        enroll.append(fields[0])
        test.append(fields[1])
        labels.append(label)
        lines.append(line)
    return Trials(enroll, test, np.asarray(labels, dtype=np.int64), lines)


def read_label_scores(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Scores (T,) float64 and labels (T,) int64 from two columns: ``label score``
    (``scoring.read_label_scores``) or, when the first line's second field is a label word,
    Kaldi's ``score target|nontarget`` (also tgt|imp)."""
    first = _first_fields(path)
    if len(first) != 2 or first[1].lower() not in WORD_LABELS:
        return scoring.read_label_scores(path)
    scores, labels = [], []
    for line, fields in _rows(path):
        if len(fields) != 2:
            raise ScoreFileError(path, f"expected 2 fields 'score target|nontarget' (as on "
                                 f"line 1), got {len(fields)}", line)
        if fields[1].lower() not in WORD_LABELS:
            raise ScoreFileError(path, f"label must be target or nontarget (as on line 1); "
                                 f"got {fields[1]!r}", line)
        scores.append(_score(path, line, fields[0]))
        labels.append(WORD_LABELS[fields[1].lower()])
    return np.asarray(scores), np.asarray(labels, dtype=np.int64)
