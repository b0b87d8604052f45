"""`margin-softmax eval` in-process: metrics from hand-made files, errors as one line + exit 2."""

import json

import numpy as np
import pytest

from margin_softmax import metrics, score_norm
from margin_softmax.cli.main import main

# Targets 0.9, 0.8, 0.3; non-targets 0.7, 0.5, 0.2, 0.1: EER = 1/3 by hand (FRR is 1/3
# while FAR goes from 1/4 to 1/2), minDCF(0.01) = 1/3, TAR at FAR 0.1% = 2/3.
LABEL_SCORES = "1 0.9\n1 0.8\n1 0.3\n0 0.7\n0 0.5\n0 0.2\n0 0.1\n"


def run(argv):
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse errors
        return exit_.code


@pytest.fixture
def files(tmp_path):
    (tmp_path / "ls.txt").write_text(LABEL_SCORES)
    pairs = [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d"), ("e", "f")]
    labels = [line.split()[0] for line in LABEL_SCORES.splitlines()]
    scores = [line.split()[1] for line in LABEL_SCORES.splitlines()]
    words = {"1": "target", "0": "nontarget"}
    (tmp_path / "trials").write_text(
        "".join(f"{e} {t} {words[y]}\n" for (e, t), y in zip(pairs, labels, strict=True))
    )
    rows = reversed(list(zip(pairs, scores, strict=True)))  # another order than the trials
    (tmp_path / "scores").write_text(  # and one score that no trial uses
        "x y 0.0\n" + "".join(f"{e} {t} {s}\n" for (e, t), s in rows)
    )
    return tmp_path


def test_label_score_file_json(files, capsys):
    assert run(["eval", "--scores", files / "ls.txt", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["trials"], result["targets"], result["nontargets"]) == (7, 3, 4)
    assert result["eer"] == pytest.approx(1 / 3)
    assert result["min_dcf_0.01"] == result["min_dcf"] == pytest.approx(1 / 3)
    assert result["tar_at_far_1e-3"] == pytest.approx(2 / 3)


def test_kaldi_files_give_the_same_numbers_as_a_table(files, capsys):
    assert run(["eval", "--trials", files / "trials", "--scores", files / "scores"]) == 0
    out = capsys.readouterr().out
    assert "7 (3 targets, 4 non-targets)" in out
    assert "EER             33.33%" in out
    assert "minDCF(0.01)    0.3333" in out
    assert "TAR@FAR=0.001   66.67%" in out


def test_embeddings_and_trials(tmp_path, capsys):
    np.save(tmp_path / "e.npy", np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]))
    (tmp_path / "t").write_text("0 1 target\n0 2 nontarget\n0 3 nontarget\n2 3 target\n")
    assert run(["eval", "--embeddings", tmp_path / "e.npy", "--trials", tmp_path / "t",
                "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["eer"] == pytest.approx(0.25)  # see test_scoring


@pytest.fixture
def speakers(tmp_path):
    """Six embeddings of three speakers, a trial list over all pairs, a cohort of ten."""
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(6, 4)) + np.repeat(rng.normal(size=(3, 4)), 2, axis=0)
    names = [f"u{k}" for k in range(6)]
    np.savez(tmp_path / "e.npz", embeddings=emb, names=np.array(names))
    pairs = [(a, b) for a in range(6) for b in range(a + 1, 6)]
    words = {True: "target", False: "nontarget"}
    (tmp_path / "t").write_text(
        "".join(f"u{a} u{b} {words[a // 2 == b // 2]}\n" for a, b in pairs)
    )
    cohort = rng.normal(size=(10, 4))
    np.save(tmp_path / "c.npy", cohort)
    e, t = np.array(pairs).T
    return tmp_path, emb, cohort, e, t


def _eval_json(capsys, *argv):
    assert run(["eval", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_folds_give_the_kfold_accuracy(files, capsys):
    got = _eval_json(capsys, "--scores", files / "ls.txt", "--folds", "7")
    # 7 trials, 7 folds: each trial judged at the best threshold of the other six (targets
    # 0.9, 0.8, 0.3; non-targets 0.7, 0.5, 0.2, 0.1). By hand: without 0.9 the best accepts
    # >= 0.8 (5/6), halfway to 0.7 is 0.75: 0.9 right; without 0.8: >= 0.9, t = 0.8, right;
    # without 0.3: >= 0.8 (6/6), t = 0.75, 0.3 wrong; without 0.7: >= 0.8 and >= 0.3 tie at
    # 5/6, the first gives t = 0.65, 0.7 wrong; without 0.5, 0.2 or 0.1: t = 0.75, right.
    assert got["folds"] == 7
    assert got["kfold_accuracy"] == pytest.approx(5 / 7)
    assert run(["eval", "--scores", files / "ls.txt", "--folds", "7"]) == 0
    assert "7-fold acc      71.43% ± 45.18%" in capsys.readouterr().out
    assert run(["eval", "--scores", files / "ls.txt", "--folds", "3"]) == 2  # 3 targets first
    assert "fold 1 of 3: the other folds hold only non-targets" in capsys.readouterr().err
    assert run(["eval", "--scores", files / "ls.txt", "--folds", "8"]) == 2
    assert "--folds must lie in [2, 7] (the trials); got 8" in capsys.readouterr().err


def test_cohort_normalises_the_cosine_scores(speakers, capsys):
    path, emb, cohort, e, t = speakers
    base = ["--embeddings", path / "e.npz", "--trials", path / "t"]
    labels = np.array([a // 2 == b // 2 for a, b in zip(e, t, strict=True)], dtype=int)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    raw = (unit[e] * unit[t]).sum(1)
    for k, name in ((4, "as-norm"), (None, "s-norm")):
        got = _eval_json(capsys, *base, "--cohort", path / "c.npy", "--top-k", k or "all")
        want = score_norm.normalize_scores(raw, e, t, emb, cohort, k)
        assert got["eer"] == pytest.approx(metrics.eer(want, labels))
        assert (got["score_norm"], got["top_k"], got["cohort_size"]) == (name, k, 10)
    # the table names what was done
    assert run(["eval", *base, "--cohort", path / "c.npy", "--top-k", "4"]) == 0
    assert f"cosine, AS-norm (top 4 of 10 in {path / 'c.npy'})" in capsys.readouterr().out


def test_write_scores_gives_the_scores_the_metrics_used(speakers, capsys):
    """The AS-normed scores, written as 'enroll test score' in trial order, give the same
    metrics when evaluated as a scores file; an existing file is kept unless --force."""
    path, emb, cohort, e, t = speakers
    out = path / "sub" / "scores.txt"
    argv = ["--embeddings", path / "e.npz", "--trials", path / "t", "--cohort", path / "c.npy",
            "--top-k", "4", "--write-scores", out]
    normed = _eval_json(capsys, *argv)
    assert normed["scores_file"] == str(out)
    lines = out.read_text().splitlines()
    pairs = [[f"u{a}", f"u{b}"] for a, b in zip(e, t, strict=True)]
    assert [line.split()[:2] for line in lines] == pairs
    again = _eval_json(capsys, "--trials", path / "t", "--scores", out)
    for key in ("eer", "min_dcf", "min_dcf_0.05", "tar_at_far_1e-3"):
        assert again[key] == normed[key]  # the same floats, so exactly the same metrics
    before = out.read_text()
    assert run(["eval", *argv]) == 2
    assert f"--write-scores {out}: exists; pass --force to replace it" in capsys.readouterr().err
    assert out.read_text() == before
    assert run(["eval", *argv, "--top-k", "all", "--force"]) == 0
    assert out.read_text() != before
    assert run(["eval", "--scores", path / "x", "--write-scores", path / "y"]) == 2
    assert "--write-scores needs --trials" in capsys.readouterr().err
    assert run(["eval", *argv[:-1], path / "new.txt", "--folds", "99"]) == 2  # 15 trials
    assert "--folds must lie in [2, 15]" in capsys.readouterr().err
    assert not (path / "new.txt").exists()  # an option error leaves no file behind


def test_cohort_labels_mean_one_member_per_label(speakers, capsys):
    path, emb, cohort, e, t = speakers
    np.savez(path / "c.npz", embeddings=cohort, labels=np.array(list("aabbbccdde")))
    got = _eval_json(capsys, "--embeddings", path / "e.npz", "--trials", path / "t",
                     "--cohort", path / "c.npz", "--top-k", "all")
    assert got["cohort_size"] == 5
    np.savez(path / "bad.npz", embeddings=cohort, labels=np.arange(9))
    assert run(["eval", "--embeddings", path / "e.npz", "--trials", path / "t",
                "--cohort", path / "bad.npz"]) == 2
    assert "bad.npz: labels has shape (9,); expected (10,)" in capsys.readouterr().err


def test_center_subtracts_the_mean_before_the_cosine(speakers, capsys):
    path, emb, cohort, e, t = speakers
    got = _eval_json(capsys, "--embeddings", path / "e.npz", "--trials", path / "t",
                     "--center", path / "c.npy")
    centred = emb - cohort.mean(0)
    scores = [np.dot(centred[a], centred[b]) / np.linalg.norm(centred[a])
              / np.linalg.norm(centred[b]) for a, b in zip(e, t, strict=True)]
    labels = [int(a // 2 == b // 2) for a, b in zip(e, t, strict=True)]
    assert got["eer"] == pytest.approx(metrics.eer(np.array(scores), np.array(labels)))
    assert got["center"] == str(path / "c.npy")


def test_cohort_errors_name_the_file(speakers, capsys):
    path, emb, cohort, e, t = speakers
    base = ["eval", "--embeddings", path / "e.npz", "--trials", path / "t"]
    np.save(path / "narrow.npy", cohort[:, :3])
    for option in ("--cohort", "--center"):
        assert run([*base, option, path / "narrow.npy"]) == 2
        err = capsys.readouterr().err
        assert (f"{option} {path / 'narrow.npy'} has 3 columns but --embeddings "
                f"{path / 'e.npz'} has 4") in err
    np.save(path / "same.npy", np.repeat(cohort[:1], 3, axis=0))  # three equal scores each
    assert run([*base, "--cohort", path / "same.npy", "--top-k", "all"]) == 2
    assert (f"--embeddings {path / 'e.npz'}, --cohort {path / 'same.npy'}: embedding row 0: "
            f"its top 3 cohort scores are all equal") in capsys.readouterr().err
    assert run([*base, "--cohort", path / "c.npy"]) == 2  # default --top-k 300 > 10
    err = capsys.readouterr().err
    assert (f"--top-k 300 exceeds the cohort: {path / 'c.npy'} holds 10 embeddings; pass "
            "--top-k 10 or less, or --top-k all") in err and err.count("\n") == 1
    np.savez(path / "labelled.npz", embeddings=np.tile(cohort, (4, 1)),
             labels=np.tile(np.arange(10), 4))  # 40 rows, and the cohort is 10 class means
    assert run([*base, "--cohort", path / "labelled.npz", "--top-k", "20"]) == 2
    assert (f"{path / 'labelled.npz'} holds 40 embeddings with labels, and the cohort is the "
            "mean embedding of each label: 10 class means; pass --top-k 10 or less"
            ) in capsys.readouterr().err
    assert run([*base, "--cohort", path / "missing.npy"]) == 2
    assert "missing.npy: no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, line, fragment",
    [
        ("1 0.9\n0 0.1\n0 abc\n", 3, "score is not a number: 'abc'"),
        ("1 0.9\nyes 0.1\n", 2, "label must be target, nontarget, 1 or 0; got 'yes'"),
        ("1 0.9\n0 0.1 7\n", 2, "expected 2 fields"),
        ("1 0.9\n0 NaN\n", 2, "score must be finite"),
    ],
)
def test_malformed_file_one_line_error(tmp_path, capsys, content, line, fragment):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    assert run(["eval", "--scores", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{path}:{line}: {fragment}" in err


def test_missing_score_and_one_class(files, tmp_path, capsys):
    (tmp_path / "few").write_text("a b 0.9\n")
    assert run(["eval", "--trials", files / "trials", "--scores", tmp_path / "few"]) == 2
    assert f"{files / 'trials'}:2: trial a c has no score in" in capsys.readouterr().err
    (tmp_path / "targets").write_text("1 0.5\n1 0.7\n")
    assert run(["eval", "--scores", tmp_path / "targets"]) == 2
    assert "no non-target trials" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        ([], "nothing to evaluate"),
        (["--embeddings", "e.npy"], "--embeddings needs --trials"),
        (["--scores", "missing.txt"], "missing.txt: no such file"),
        (["--scores", "x", "--p-target", "2"], "--p-target must lie in (0, 1)"),
        (["--scores", "x", "--far", "abc"], "argument --far: invalid float value"),
        (["--scores", "x", "--cohort", "c.npy"], "--cohort needs --embeddings"),
        (["--scores", "x", "--center", "c.npy"], "--center needs --embeddings"),
        (["--scores", "x", "--top-k", "1"], "argument --top-k: must be at least 2"),
        (["--scores", "x", "--top-k", "many"], "argument --top-k: expected an integer >= 2"),
    ],
)
def test_argument_errors_exit_2(argv, fragment, capsys):
    assert run(["eval", *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_scores_written_for_a_list_that_repeats_a_pair_read_back(tmp_path, capsys):
    # one line per trial wrote the pair 0 1 twice, and eval --scores refused the file
    np.save(tmp_path / "e.npy", np.array([[1.0, 0.0], [0.9, 0.3], [0.0, 1.0]]))
    (tmp_path / "t").write_text("0 1 target\n0 2 nontarget\n0 1 target\n1 2 nontarget\n")
    out = tmp_path / "s"
    wrote = _eval_json(capsys, "--embeddings", tmp_path / "e.npy", "--trials", tmp_path / "t",
                       "--write-scores", out)
    assert len(out.read_text().splitlines()) == 4
    again = _eval_json(capsys, "--trials", tmp_path / "t", "--scores", out)
    assert (again["trials"], again["eer"]) == (4, wrote["eer"])


def test_a_zero_embedding_in_a_trial_is_an_error(tmp_path, capsys):
    # a zero row (a failed extraction) scored cosine 0 against everything, silently
    np.savez(tmp_path / "e.npz", embeddings=np.array([[1.0, 0.0], [0.0, 0.0], [0.5, 0.5]]),
             names=np.array(["a", "b", "c"]))
    (tmp_path / "t").write_text("a c target\na b nontarget\n")
    assert run(["eval", "--embeddings", tmp_path / "e.npz", "--trials", tmp_path / "t"]) == 2
    err = capsys.readouterr().err
    assert f"--embeddings {tmp_path / 'e.npz'}: row 1 (b) is all zeros; a trial uses it" in err
    (tmp_path / "t").write_text("a c target\na a nontarget\n")  # row 1 unused: fine
    assert run(["eval", "--embeddings", tmp_path / "e.npz", "--trials", tmp_path / "t"]) == 0


def test_cosine_scoring_does_not_depend_on_the_embeddings_scale(tmp_path, capsys):
    # x 1e-14 gave EER 10.8% against 6.8% (norms under the 1e-12 floor), and rows past a
    # norm of ~1e154 scored cosine 0; the cohort's statistics are cosines too
    rng = np.random.default_rng(3)
    emb, cohort = rng.normal(size=(24, 8)), rng.normal(size=(12, 8))
    pairs = [(i, j) for i in range(24) for j in range(i + 1, 24)]
    (tmp_path / "t").write_text("".join(
        f"{i} {j} {'target' if i % 4 == j % 4 else 'nontarget'}\n" for i, j in pairs))
    results = {}
    for scale in (1.0, 1e-14, 1e150, 1e160):
        np.save(tmp_path / "e.npy", emb * scale)
        np.save(tmp_path / "c.npy", cohort * scale)
        base = ["--embeddings", tmp_path / "e.npy", "--trials", tmp_path / "t"]
        results[scale] = (_eval_json(capsys, *base),
                          _eval_json(capsys, *base, "--cohort", tmp_path / "c.npy", "--top-k", 5))
    assert 0.1 < results[1.0][0]["eer"] < 0.9  # not a degenerate case
    for scale in (1e-14, 1e150, 1e160):
        assert results[scale] == results[1.0]
