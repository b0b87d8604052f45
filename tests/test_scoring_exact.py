"""Score files (scoring.py): each reader's exact message, whose 'file:line:' is the interface,
and the choices it makes on hand-made files."""

import numpy as np
import pytest
from exact_message import exactly

from margin_softmax import scoring


def write(tmp_path, text: str, name: str = "f"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    path = tmp_path / "t"
    path.write_bytes("\ufeffa b target\n".encode())
    assert scoring.read_trials(path).enroll == ["a"]


@pytest.mark.parametrize(
    "text, kaldi",
    [
        ("0 1 target\n1 0 nontarget\n", True),  # labels last only
        ("1 a b\n0 a c\n", False),  # labels first only
        ("0 1 1\n1 0 0\n", False),  # both fit, digits last: VoxCeleb
        ("1 0 Target\n0 1 nontarget\n", True),  # both fit, a word last: Kaldi
        ("target a 1\nnontarget a c\n", False),  # words first fit, the first line both ways
        ("1 a 0\n0 a b\n", False),  # labels first fit, the first line both ways
    ],
)
def test_the_order_every_line_fits(tmp_path, text, kaldi):
    trials = scoring.read_trials(write(tmp_path, text))
    first = text.split()
    if kaldi:
        assert (trials.enroll[0], trials.test[0]) == (first[0], first[1])
    else:
        assert (trials.enroll[0], trials.test[0]) == (first[1], first[2])


@pytest.mark.parametrize(
    "text, line, message",
    [
        # neither order fits every line: the first line decides, the first bad line is named
        ("a b target\n1 c d\n", 2, "label must be target, nontarget, 1 or 0; got 'd'"),
        ("1 c d\na b target\n", 2, "label must be target, nontarget, 1 or 0; got 'a'"),
        ("a b c\n1 c d\n", 1, "label must be target, nontarget, 1 or 0; got 'c'"),
        ("target b c\na b d\n", 2, "label must be target, nontarget, 1 or 0; got 'a'"),
        ("1 b target\nc d e\n", 2, "label must be target, nontarget, 1 or 0; got 'e'"),
        ("a b target\na b\n", 2, "expected 3 fields 'enroll test target|nontarget', got 2"),
        ("a b target\na b nontarget\n", 2, "trial a b is labelled otherwise on line 1"),
    ],
)
def test_bad_trials_name_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(scoring.ScoreFileError, match=exactly(f"{path}:{line}: {message}")):
        scoring.read_trials(path)


def test_a_repeated_trial_with_the_same_label_is_kept(tmp_path):
    trials = scoring.read_trials(write(tmp_path, "a b target\na b TARGET\nc d 0\n"))
    assert trials.labels.tolist() == [1, 1, 0] and trials.lines == [1, 2, 3]
    assert trials.labels.dtype == np.int64


@pytest.mark.parametrize(
    "reader, text, message",
    [
        ("read_trials", "\n \n", "no trials (the file is empty)"),
        ("read_scores", "", "no scores (the file is empty)"),
        ("read_label_scores", "\n", "no scores (the file is empty)"),
    ],
)
def test_empty_files_are_named(tmp_path, reader, text, message):
    path = write(tmp_path, text)
    with pytest.raises(scoring.ScoreFileError, match=exactly(f"{path}: {message}")):
        getattr(scoring, reader)(path)


def test_a_folder_or_a_missing_file_is_named(tmp_path):
    for reader in (scoring.read_trials, scoring.read_embeddings):
        with pytest.raises(scoring.ScoreFileError, match=exactly(f"{tmp_path}: not a file")):
            reader(tmp_path)
        with pytest.raises(scoring.ScoreFileError, match=exactly(
                f"{tmp_path / 'no'}: no such file")):
            reader(tmp_path / "no")


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("a b 0.5\na b\n", 2, "expected 3 fields 'enroll test score', got 2"),
        ("a b 0.5\na c 1,5\n", 2, "score is not a number: '1,5'"),
        ("a b -inf\n", 1, "score must be finite; got '-inf'"),
        ("a b 0.5\na b 0.25\n", 2, "pair a b is already scored 0.5 on line 1"),
    ],
)
def test_bad_scores_name_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(scoring.ScoreFileError, match=exactly(f"{path}:{line}: {message}")):
        scoring.read_scores(path)


def test_a_pair_scored_twice_alike_keeps_its_first_line(tmp_path):
    assert scoring.read_scores(write(tmp_path, "a b 0.5\nc d 1\na b 5e-1\n")) == {
        ("a", "b"): (0.5, 1), ("c", "d"): (1.0, 2)}


@pytest.mark.parametrize(
    "text, message",
    [
        ("1 0.5\n1 a 0.5\n", "expected 2 fields 'label score', got 3; a 3-field scores file "
                             "needs --trials"),
        ("1 0.5\n1\n", "expected 2 fields 'label score', got 1"),
        ("1 0.5\nyes 0.5\n", "label must be target, nontarget, 1 or 0; got 'yes'"),
    ],
)
def test_bad_label_scores_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(scoring.ScoreFileError, match=exactly(f"{path}:2: {message}")):
        scoring.read_label_scores(path)


def test_label_scores_are_float64_and_int64(tmp_path):
    scores, labels = scoring.read_label_scores(write(tmp_path, "Target 1\nnon-target 2\n"))
    assert scores.tolist() == [1.0, 2.0] and scores.dtype == np.float64
    assert labels.tolist() == [1, 0] and labels.dtype == np.int64


@pytest.mark.parametrize(
    "save, message",
    [
        (lambda p: p.write_bytes(b""),
         "the file is empty (0 bytes); expected a .npy or .npz file"),
        (lambda p: np.savez(p, embeddings=np.ones((2, 3)), names=np.array(["a"])),
         "1 names for 2 embeddings"),
        (lambda p: np.savez(p, embeddings=np.array([["a", "b"]])),
         "embeddings must be a 2-D numeric array; got shape (1, 2), dtype <U1"),
        (lambda p: np.savez(p, embeddings=np.zeros((2, 2, 2))),
         "embeddings must be a 2-D numeric array; got shape (2, 2, 2), dtype float64"),
        (lambda p: np.savez(p, embeddings=np.array([[0.0, 1.0], [2.0, np.inf]])),
         "row 1 is not finite"),
        (lambda p: np.savez(p, embeddings=np.array([[1, 2]], dtype=object)),
         "array 'embeddings' cannot be read (ValueError: Object arrays cannot be loaded when "
         "allow_pickle=False)"),
    ],
)
def test_bad_embeddings_files_are_named(tmp_path, save, message):
    path = tmp_path / "e.npz"
    save(path)
    with pytest.raises(scoring.ScoreFileError, match=exactly(f"{path}: {message}")):
        scoring.read_embeddings(path)


def test_embeddings_as_npy_or_npz_are_float64(tmp_path):
    np.save(tmp_path / "e.npy", np.eye(2, dtype=np.float32))
    embeddings, names = scoring.read_embeddings(tmp_path / "e.npy")
    assert embeddings.dtype == np.float64 and names is None
    assert embeddings.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    np.savez(tmp_path / "e.npz", embeddings=np.eye(2, dtype=np.int32), names=["x", "y"])
    embeddings, names = scoring.read_embeddings(tmp_path / "e.npz")
    assert embeddings.dtype == np.float64 and names == ["x", "y"]


def test_trial_rows_by_index_and_by_name(tmp_path):
    trials = scoring.read_trials(write(tmp_path, "0 2 target\n2 1 nontarget\n", "t"))
    i, j = scoring.trial_rows(3, None, trials, "t", "e")
    assert (i.tolist(), j.tolist()) == ([0, 2], [2, 1]) and i.dtype == np.int64
    with pytest.raises(scoring.ScoreFileError, match=exactly(
            "t:2: '2' is not a row index 0..1 of e (which has no names)")):
        scoring.trial_rows(2, None, trials, "t", "e")
    i, j = scoring.trial_rows(3, ["2", "0", "1"], trials, "t", "e")
    assert (i.tolist(), j.tolist()) == ([1, 0], [0, 2])
    with pytest.raises(scoring.ScoreFileError, match=exactly("t:2: '1' is not a name in e")):
        scoring.trial_rows(3, ["2", "0"], trials, "t", "e")


def test_cosine_scores_do_not_depend_on_scale():
    embeddings = np.array([[3.0, 4.0], [1e-200, 0.0], [0.0, 1e200]])
    i, j = np.array([0, 0, 1]), np.array([1, 2, 2])
    assert scoring.pair_cosines(embeddings, i, j).tolist() == pytest.approx([0.6, 0.8, 0.0])


def test_a_cohort_with_labels_is_the_mean_of_each_speaker(tmp_path):
    np.savez(tmp_path / "c.npz", embeddings=np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0]]),
             labels=np.array(["b", "a", "b"]))
    assert scoring.read_cohort(tmp_path / "c.npz").tolist() == [[3.0, 2.0], [0.5, 2.5]]
    np.save(tmp_path / "c.npy", np.eye(2))
    assert scoring.read_cohort(tmp_path / "c.npy").tolist() == [[1.0, 0.0], [0.0, 1.0]]
    np.savez(tmp_path / "d.npz", embeddings=np.ones((2, 3)), labels=np.array([0, 1, 1]))
    with pytest.raises(scoring.ScoreFileError, match=exactly(
            f"{tmp_path / 'd.npz'}: labels has shape (3,); expected (2,), one per embedding")):
        scoring.read_cohort(tmp_path / "d.npz")
    np.save(tmp_path / "n.npy", np.array([[1.0], [np.nan]]))
    with pytest.raises(scoring.ScoreFileError, match=exactly(
            f"{tmp_path / 'n.npy'}: row 1 is not finite")):
        scoring.read_cohort(tmp_path / "n.npy")


def test_write_scores_makes_the_folders_and_writes_kaldi_lines(tmp_path):
    trials = scoring.read_trials(write(tmp_path, "a b target\nc d nontarget\n", "t"))
    path = tmp_path / "new" / "deeper" / "s"
    scoring.write_scores(path, trials, np.array([0.1, -2.0]))
    assert path.read_text() == "a b 0.1\nc d -2.0\n"
    with pytest.raises(ValueError):  # one score short: nothing written, the old file kept
        scoring.write_scores(path, trials, np.array([0.5]))
    assert path.read_text() == "a b 0.1\nc d -2.0\n"


def test_pair_cosines_gathers_blocks_of_trials(monkeypatch):
    rows = []
    einsum = np.einsum

    def counted(subscripts, a, b):
        rows.append(len(a))
        return einsum(subscripts, a, b)

    monkeypatch.setattr(scoring, "PAIR_BLOCK", 3)
    monkeypatch.setattr(np, "einsum", counted)
    i = np.zeros(8, dtype=np.int64)
    assert scoring.pair_cosines(np.ones((1, 2)), i, i).tolist() == pytest.approx([1.0] * 8)
    assert rows == [3, 3, 2]


def test_summary_keys_and_the_first_p_target_is_min_dcf():
    # one target (4) among non-targets 1, 2, 3, 5: accepting it costs one false accept of 4
    scores, labels = np.array([1, 5, 2, 4, 3]), np.array([0, 0, 0, 1, 0])
    out = scoring.summary(scores, labels, p_targets=(0.25, 0.01), fars=(0.2, 0.25))
    assert list(out) == ["eer", "min_dcf", "min_dcf_0.25", "min_dcf_0.01", "tar_at_far_2e-1",
                         "tar_at_far_2.5e-1"]
    assert out["eer"] == 0.25  # from (FAR, FRR) = (1/4, 1) at 5 to (1/4, 0) at 4
    # p = 0.25: 0.75 * 1/4 / 0.25 beats accepting nothing (1); p = 0.01: nothing is best
    assert (out["min_dcf"], out["min_dcf_0.25"], out["min_dcf_0.01"]) == (0.75, 0.75, 1.0)
    assert (out["tar_at_far_2e-1"], out["tar_at_far_2.5e-1"]) == (0.0, 1.0)


def test_check_both_classes_names_the_missing_kind():
    scoring.check_both_classes(np.array([0, 1]), "t")
    with pytest.raises(scoring.ScoreFileError, match=exactly(
            "t: no target trials among 2; need both kinds")):
        scoring.check_both_classes(np.array([0, 0]), "t")
    with pytest.raises(scoring.ScoreFileError, match=exactly(
            "t: no non-target trials among 3; need both kinds")):
        scoring.check_both_classes(np.array([1, 1, 1]), "t")
