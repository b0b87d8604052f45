"""Score-file readers, cosine scoring and the metric summary, on hand-made files."""

import re

import numpy as np
import pytest

from margin_softmax import scoring

# Targets score 0.9, 0.8, 0.3; non-targets 0.7, 0.5, 0.2, 0.1. By hand: FRR stays 1/3 while
# FAR runs from 1/4 to 1/2 (thresholds 0.7, 0.5), so FAR = FRR at 1/3: EER = 1/3.
# minDCF(0.01) = 0.01 * 1/3 / 0.01 = 1/3 (threshold 0.8, no false accepts); TAR@FAR=0 = 2/3.
TRIALS = (
    "a b target\na c nontarget\nb c nontarget\n"
    "d e target\nd f nontarget\ng h target\ng i nontarget\n"
)
SCORES = "g i 0.1\na b 0.9\na c 0.7\nb c 0.5\nd e 0.8\nd f 0.2\ng h 0.3\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_kaldi_trials_joined_to_scores_in_any_order(tmp_path):
    trials = scoring.read_trials(write(tmp_path, "trials", TRIALS))
    table = scoring.read_scores(write(tmp_path, "s", SCORES))
    scores = scoring.join_scores(trials, table, "t", "s")
    np.testing.assert_array_equal(trials.labels, [1, 0, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(scores, [0.9, 0.7, 0.5, 0.8, 0.2, 0.3, 0.1])
    summary = scoring.summary(scores, trials.labels, p_targets=(0.01,), fars=(1e-3,))
    assert summary["eer"] == pytest.approx(1 / 3)
    assert summary["min_dcf"] == summary["min_dcf_0.01"] == pytest.approx(1 / 3)
    assert summary["tar_at_far_1e-3"] == pytest.approx(2 / 3)


def test_voxceleb_order_trials(tmp_path):
    trials = scoring.read_trials(write(tmp_path, "t", "1 a b\n0 a c\n\n0 b c\n"))
    assert trials.enroll == ["a", "a", "b"] and trials.test == ["b", "c", "c"]
    np.testing.assert_array_equal(trials.labels, [1, 0, 0])
    assert trials.lines == [1, 2, 4]  # the blank line 3 is skipped but counted


def test_label_score_file(tmp_path):
    scores, labels = scoring.read_label_scores(write(tmp_path, "ls", "target 0.4\n0 -2\n1 1e-1\n"))
    np.testing.assert_array_equal(scores, [0.4, -2.0, 0.1])
    np.testing.assert_array_equal(labels, [1, 0, 1])


@pytest.mark.parametrize(
    "reader, text, line, fragment",
    [
        ("trials", "a b target\na b\n", 2, "expected 3 fields"),
        ("trials", "a b target\na c maybe\n", 2, "label must be"),
        ("trials", "1 a b\n0 a c\na d target\n", 3, "label must be"),  # order switched
        ("trials", "a b target\na c nontarget\na b nontarget\n", 3,
         "trial a b is labelled otherwise on line 1"),
        ("scores", "a b 0.5\na c x\n", 2, "not a number"),
        ("scores", "a b 0.5\na c nan\n", 2, "finite"),
        ("scores", "a b 0.5\na c 0.1\na b 0.7\n", 3, "already scored 0.5 on line 1"),
        ("label_scores", "1 0.5\n0 inf\n", 2, "finite"),
        ("label_scores", "1 0.5\n0 0.1\na b 0.2\n", 3, "needs --trials"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, reader, text, line, fragment):
    path = write(tmp_path, "bad.txt", text)
    read = getattr(scoring, f"read_{reader}")
    with pytest.raises(scoring.ScoreFileError, match=fragment) as error:
        read(path)
    assert str(error.value).startswith(f"{path}:{line}: ")


def test_missing_empty_and_binary_files(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.txt: no such file"):
        scoring.read_trials(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match=r"empty\.txt: no scores"):
        scoring.read_scores(write(tmp_path, "empty.txt", "\n\n"))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"a b 0.5\n\xff\xfe 1\n")
    with pytest.raises(ValueError, match=r"bin\.txt:2: not UTF-8"):
        scoring.read_scores(binary)


def test_trial_without_score_names_the_trials_line(tmp_path):
    trials = scoring.read_trials(write(tmp_path, "trials", "a b target\nc d nontarget\n"))
    table = scoring.read_scores(write(tmp_path, "scores", "a b 0.5\n"))
    with pytest.raises(ValueError, match=r"^trials.txt:2: trial c d has no score in sc.txt$"):
        scoring.join_scores(trials, table, "trials.txt", "sc.txt")


def test_one_class_only_is_an_error():
    with pytest.raises(ValueError, match="x.txt: no non-target trials among 2"):
        scoring.check_both_classes(np.array([1, 1]), "x.txt")


def test_cosine_scores_by_index_and_by_name_with_ties(tmp_path):
    # cosines: (0,1) = 1, (0,2) = 0, (0,3) = -1, (2,3) = 0 (a tie between a target and a
    # non-target). Sorted: 1 T, {0 T, 0 N}, -1 N -> points (0, 1/2) and (1/2, 0): EER 1/4.
    emb = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    trials = scoring.read_trials(
        write(tmp_path, "t", "0 1 target\n0 2 nontarget\n0 3 nontarget\n2 3 target\n")
    )
    scores = scoring.cosine_scores(emb, None, trials, "t", "e")
    np.testing.assert_allclose(scores, [1.0, 0.0, -1.0, 0.0], atol=1e-12)
    assert scoring.summary(scores, trials.labels)["eer"] == pytest.approx(0.25)

    np.savez(tmp_path / "e.npz", embeddings=emb, names=np.array(["w", "x", "y", "z"]))
    loaded, names = scoring.read_embeddings(tmp_path / "e.npz")
    named = scoring.read_trials(write(tmp_path, "n", "w x target\nw y nontarget\n"))
    np.testing.assert_allclose(scoring.cosine_scores(loaded, names, named, "n", "e"), [1, 0],
                               atol=1e-12)


def test_cosine_scores_reject_unknown_rows(tmp_path):
    trials = scoring.read_trials(write(tmp_path, "t", "0 1 target\n0 9 nontarget\n"))
    with pytest.raises(ValueError, match=r"^t:2: '9' is not a row index 0\.\.3 of e"):
        scoring.cosine_scores(np.eye(4), None, trials, "t", "e")
    with pytest.raises(ValueError, match=r"^t:1: '0' is not a name in e"):
        scoring.cosine_scores(np.eye(4), ["a", "b", "c", "d"], trials, "t", "e")
    # Unicode digits: '²' made int() fail without the file and line, '١' (Arabic one) was row 1
    for key in ("²", "١"):
        trials = scoring.read_trials(write(tmp_path, "t", f"0 {key} target\n0 2 nontarget\n"))
        with pytest.raises(ValueError, match=rf"^t:1: '{key}' is not a row index 0\.\.3 of e"):
            scoring.cosine_scores(np.eye(4), None, trials, "t", "e")


def test_read_embeddings_errors(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([[1.0, 0.0], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"nan\.npy: row 1 is not finite"):
        scoring.read_embeddings(tmp_path / "nan.npy")
    np.savez(tmp_path / "k.npz", feats=np.eye(2))
    with pytest.raises(ValueError, match=r"k\.npz: no 'embeddings' array; it holds \['feats'\]"):
        scoring.read_embeddings(tmp_path / "k.npz")
    write(tmp_path, "text.npy", "not numpy")
    with pytest.raises(ValueError, match=r"text\.npy: not a \.npy or \.npz file"):
        scoring.read_embeddings(tmp_path / "text.npy")


def test_far_key():
    assert scoring.far_key(1e-3) == "tar_at_far_1e-3"
    assert scoring.far_key(0.0025) == "tar_at_far_2.5e-3"


def test_pair_cosines_in_blocks_of_trials(monkeypatch):
    """Blocks of trials (two (block, D) gathers, not two (T, D)) give every trial's cosine."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(9, 4))
    i, j = rng.integers(0, 9, 20), rng.integers(0, 9, 20)
    monkeypatch.setattr(scoring, "PAIR_BLOCK", 3)  # 7 blocks, the last one partial
    want = [emb[a] @ emb[b] / np.linalg.norm(emb[a]) / np.linalg.norm(emb[b])
            for a, b in zip(i, j, strict=True)]
    np.testing.assert_allclose(scoring.pair_cosines(emb, i, j), want, rtol=1e-12)


def test_names_as_bytes_are_decoded_and_repeated_names_refused(tmp_path):
    # names saved as bytes (dtype S, as h5py writes them) were read as "b'w'", so no trial
    # found them; a repeated name silently scored the trials with its last row
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    zoe = "Zoë/utt-1.wav"
    np.savez(tmp_path / "b.npz", embeddings=emb, names=np.array([b"w", zoe.encode(), b"y"]))
    assert scoring.read_embeddings(tmp_path / "b.npz")[1] == ["w", zoe, "y"]
    trials = scoring.read_trials(write(tmp_path, "t", f"w {zoe} target\nw y nontarget\n"))
    loaded, names = scoring.read_embeddings(tmp_path / "b.npz")
    np.testing.assert_allclose(scoring.cosine_scores(loaded, names, trials, "t", "e"),
                               [0, 0.5 ** 0.5], atol=1e-12)
    np.savez(tmp_path / "d.npz", embeddings=emb, names=np.array(["w", "x", "w"]))
    with pytest.raises(ValueError, match=r"d\.npz: name 'w' is on rows 0 and 2"):
        scoring.read_embeddings(tmp_path / "d.npz")


@pytest.mark.parametrize("shape", [(0, 4), (3, 0)])
def test_embeddings_without_rows_or_columns_are_refused(tmp_path, shape):
    # an empty --center file gave a NaN mean, so every score was NaN
    np.save(tmp_path / "empty.npy", np.zeros(shape))
    with pytest.raises(ValueError, match=re.escape(f"empty.npy: no embeddings: shape {shape}")):
        scoring.read_embeddings(tmp_path / "empty.npy")


def test_written_scores_read_back_as_the_same_floats_and_metrics(tmp_path):
    # 8 significant digits made the target 0.12345678949 and the non-target 0.12345678912
    # one tie (0.12345679): the EER went from 0 to 1/4 when the file was evaluated
    trials = scoring.read_trials(write(tmp_path, "t", "a b target\nc d nontarget\n"
                                       "a c target\nb d nontarget\n"))
    scores = np.array([0.12345678949, 0.12345678912, 1 / 3, -2 / 7])
    scoring.write_scores(tmp_path / "s", trials, scores)
    read = scoring.join_scores(trials, scoring.read_scores(tmp_path / "s"), "t", "s")
    np.testing.assert_array_equal(read, scores)
    assert scoring.summary(read, trials.labels) == scoring.summary(scores, trials.labels)
