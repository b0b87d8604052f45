"""score_formats: SITW/VOiCES keys (tgt|imp) and Kaldi's compute-eer input (score first)
read as the equivalent scoring layouts, and every bad line is one error naming file:line."""

import pytest

from margin_softmax import score_formats, scoring


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_sitw_key_reads_as_the_kaldi_key(tmp_path):
    sitw = write(tmp_path, "sitw", "a b tgt\na c imp\n\nb c IMP\n")
    kaldi = write(tmp_path, "kaldi", "a b target\na c nontarget\n\nb c nontarget\n")
    got, want = score_formats.read_key(sitw), scoring.read_trials(kaldi)
    assert (got.enroll, got.test, got.lines) == (want.enroll, want.test, want.lines)
    assert got.labels.tolist() == want.labels.tolist() == [1, 0, 0]


def test_other_keys_go_to_read_trials(tmp_path):
    voxceleb = write(tmp_path, "vox", "1 a b\n0 a c\n")
    assert score_formats.read_key(voxceleb).labels.tolist() == [1, 0]


def test_compute_eer_input_reads_score_first(tmp_path):
    kaldi = write(tmp_path, "eer_in", "0.53 target\n-1.5 nontarget\n2 tgt\n1e-3 imp\n")
    scores, labels = score_formats.read_label_scores(kaldi)
    assert scores.tolist() == [0.53, -1.5, 2.0, 1e-3] and labels.tolist() == [1, 0, 1, 0]


def test_label_first_files_read_as_before(tmp_path):
    # "1 0" fits both orders; a label word in the second field is what makes it score first
    path = write(tmp_path, "ls", "1 0\n0 1\n1 0.5\n")
    got = score_formats.read_label_scores(path)
    want = scoring.read_label_scores(path)
    assert got[0].tolist() == want[0].tolist() == [0.0, 1.0, 0.5]
    assert got[1].tolist() == want[1].tolist() == [1, 0, 1]


@pytest.mark.parametrize("reader, text, message", [
    ("read_key", "a b tgt\na c target\n", "key:2: label must be tgt or imp"),
    ("read_key", "a b tgt\na c\n", "key:2: expected 3 fields 'enroll test tgt|imp', got 2"),
    ("read_key", "a b tgt\n\na b imp\n", "key:3: trial a b is labelled otherwise on line 1"),
    ("read_label_scores", "0.5 target\nx nontarget\n", "key:2: score is not a number: 'x'"),
    ("read_label_scores", "0.5 target\n0.1 nan\n", "key:2: label must be target or nontarget"),
    ("read_label_scores", "0.5 target\ninf target\n", "key:2: score must be finite"),
    ("read_label_scores", "0.5 target\n0.4 target x\n", "key:2: expected 2 fields"),
])
def test_each_bad_line_names_file_and_line(tmp_path, reader, text, message):
    path = write(tmp_path, "key", text)
    with pytest.raises(scoring.ScoreFileError) as error:
        getattr(score_formats, reader)(path)
    assert str(error.value).startswith(f"{path.parent}/{message}")


def test_an_empty_file_is_the_scoring_readers_error(tmp_path):
    path = write(tmp_path, "empty", "\n\n")
    with pytest.raises(scoring.ScoreFileError, match="no trials"):
        score_formats.read_key(path)
    with pytest.raises(scoring.ScoreFileError, match="no scores"):
        score_formats.read_label_scores(path)
