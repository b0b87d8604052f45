"""`margin-softmax calibrate` in-process: the fused LLRs of Gaussian scores have the weights
of the exact LLR, the LLR file follows the evaluation scores, and bad input is one line."""

import json

import numpy as np
import pytest

from margin_softmax import calibration
from margin_softmax.cli.main import main


def run(argv):
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


def write_set(folder, prefix, n, seed):
    """Kaldi trials and two score files: a ~ N(1, 1) | N(0, 1) (llr = a - 0.5) and
    b ~ N(2, 1) | N(0, 1) (llr = 2 b - 2), targets first in each pair of lines."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2 == 0
    a = rng.normal(size=n) + labels
    b = rng.normal(size=n) + 2 * labels
    names = [(f"spk{k % 50}/e{k}", f"t{k}") for k in range(n)]
    words = {True: "target", False: "nontarget"}
    (folder / f"{prefix}_trials").write_text("".join(
        f"{e} {t} {words[bool(y)]}\n" for (e, t), y in zip(names, labels, strict=True)))
    for column, values in (("a", a), ("b", b)):
        (folder / f"{prefix}_{column}").write_text("".join(
            f"{e} {t} {float(v)!r}\n" for (e, t), v in zip(names, values, strict=True)))
    return names, labels, a, b


def test_fusion_finds_the_weights_of_the_exact_llr(tmp_path, capsys):
    write_set(tmp_path, "dev", 6000, 0)
    names, labels, a, b = write_set(tmp_path, "eval", 2000, 1)
    out = tmp_path / "llr.txt"
    assert run(["calibrate", "--trials", tmp_path / "dev_trials", "--scores", tmp_path / "dev_a",
                tmp_path / "dev_b", "--apply", tmp_path / "eval_a", tmp_path / "eval_b",
                "--write-llr", out, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["weights"] == pytest.approx([1.0, 2.0], rel=0.1)
    assert result["offset"] == pytest.approx(-2.5, rel=0.1)
    rows = [line.split() for line in out.read_text().splitlines()]
    assert [(e, t) for e, t, _ in rows] == names  # the evaluation file's trials, in order
    llr = np.array([float(v) for _, _, v in rows])
    w, offset = result["weights"], result["offset"]
    assert llr == pytest.approx(w[0] * a + w[1] * b + offset, rel=1e-12, abs=1e-12)
    exact = (a - 0.5) + (2 * b - 2)
    assert calibration.cllr(llr, labels) < calibration.cllr(exact, labels) + 0.01


def test_the_llr_file_is_what_eval_llr_reads(tmp_path, capsys):
    write_set(tmp_path, "dev", 2000, 2)
    write_set(tmp_path, "eval", 2000, 3)  # b is not an LLR (that is 2 b - 2)
    assert run(["calibrate", "--trials", tmp_path / "dev_trials", "--scores", tmp_path / "dev_b",
                "--apply", tmp_path / "eval_b", "--write-llr", tmp_path / "llr"]) == 0
    out = capsys.readouterr().out
    assert "LLRs written" in out and "(2000 trials)" in out
    assert run(["eval", "--trials", tmp_path / "eval_trials", "--scores", tmp_path / "llr",
                "--llr", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cllr"] - result["min_cllr"] < 0.02  # calibrated on held-out trials
    assert run(["eval", "--trials", tmp_path / "eval_trials", "--scores", tmp_path / "eval_b",
                "--llr", "--json"]) == 0
    raw = json.loads(capsys.readouterr().out)
    assert raw["cllr"] > result["cllr"] + 0.05 and raw["min_cllr"] == result["min_cllr"]


def test_a_sitw_key_is_a_development_key(tmp_path, capsys):
    write_set(tmp_path, "dev", 400, 4)
    kaldi = (tmp_path / "dev_trials").read_text()
    (tmp_path / "sitw").write_text(kaldi.replace("nontarget", "imp").replace("target", "tgt"))
    assert run(["calibrate", "--trials", tmp_path / "sitw", "--scores", tmp_path / "dev_a",
                "--json"]) == 0
    sitw = json.loads(capsys.readouterr().out)
    assert run(["calibrate", "--trials", tmp_path / "dev_trials", "--scores",
                tmp_path / "dev_a", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == sitw


@pytest.mark.parametrize("extra, message", [
    (["--apply", "eval_a"], "--apply and --write-llr go together"),
    (["--apply", "eval_a", "eval_b", "--write-llr", "x"], "one file per --scores"),
    (["--p-target", "0"], "--p-target must lie in (0, 1); got 0"),
    (["--apply", "eval_a", "--write-llr", "dev_b"], "dev_b: exists; pass --force"),
])
def test_bad_options_are_one_line(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    write_set(tmp_path, "dev", 40, 5)
    write_set(tmp_path, "eval", 40, 6)
    assert run(["calibrate", "--trials", "dev_trials", "--scores", "dev_a", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x").exists()


def test_a_pair_missing_from_another_apply_file_names_file_and_line(tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_set(tmp_path, "dev", 40, 5)
    write_set(tmp_path, "eval", 40, 6)
    lines = (tmp_path / "eval_b").read_text().splitlines()
    (tmp_path / "cut_b").write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # no pair 1
    assert run(["calibrate", "--trials", "dev_trials", "--scores", "dev_a", "dev_b",
                "--apply", "eval_a", "cut_b", "--write-llr", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval_a:2: trial spk1/e1 t1 has no score in cut_b" in err
    assert not (tmp_path / "x").exists()


def test_constant_scores_name_the_file(tmp_path, capsys):
    write_set(tmp_path, "dev", 40, 7)
    text = (tmp_path / "dev_a").read_text().splitlines()
    (tmp_path / "flat").write_text("".join(" ".join(line.split()[:2]) + " 0.5\n"
                                           for line in text))
    assert run(["calibrate", "--trials", tmp_path / "dev_trials", "--scores",
                tmp_path / "flat"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--scores" in err and "flat" in err and "0.5" in err
