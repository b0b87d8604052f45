"""`margin-softmax eval` --llr/--plot, --ci, --gallery/--probes, and the SITW and Kaldi
compute-eer layouts, in-process: numbers by hand, errors as one line + exit 2."""

import json
import math

import numpy as np
import pytest

from margin_softmax.cli.main import main

# The hand example of test_cli_eval.py: targets 0.9, 0.8, 0.3, non-targets 0.7, 0.5, 0.2,
# 0.1: EER 1/3, minDCF(0.01) 1/3, TAR at FAR 0.001 2/3.
PAIRS = [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d"), ("e", "f")]
LABELS = [1, 1, 1, 0, 0, 0, 0]
SCORES = [0.9, 0.8, 0.3, 0.7, 0.5, 0.2, 0.1]


def run(argv):
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


def run_json(argv, capsys):
    assert run([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def one_line_error(argv, capsys, message):
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_llr_metrics_by_hand(tmp_path, capsys):
    # targets 0 and ln 3, non-target -ln 3: Cllr = ((1 + log2 4/3) / 2 + log2 4/3) / 2. At
    # p = 0.2 (threshold ln 4) both targets miss: 0.2 * 1 / 0.2 = 1; at p = 0.5 (threshold
    # 0) every trial is right
    (tmp_path / "llr").write_text(f"1 0.0\n1 {math.log(3)!r}\n0 {-math.log(3)!r}\n")
    result = run_json(["eval", "--scores", tmp_path / "llr", "--llr", "--p-target", "0.2",
                       "0.5"], capsys)
    assert result["cllr"] == pytest.approx(((1 + math.log2(4 / 3)) / 2 + math.log2(4 / 3)) / 2)
    assert result["act_dcf"] == result["act_dcf_0.2"] == pytest.approx(1.0)
    assert result["act_dcf_0.5"] == 0.0
    assert result["min_cllr"] == 0.0  # the scores separate the classes


def test_llr_table_and_plot(tmp_path, capsys):
    (tmp_path / "llr").write_text("".join(f"{y} {s}\n" for y, s in zip(LABELS, SCORES,
                                                                         strict=True)))
    assert run(["eval", "--scores", tmp_path / "llr", "--llr", "--plot",
                tmp_path / "ber.png"]) == 0
    out = capsys.readouterr().out
    assert "Cllr" in out and "actDCF(0.01)" in out and "plot written" in out
    assert (tmp_path / "ber.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one_line_error(["eval", "--scores", tmp_path / "llr", "--llr", "--plot",
                    tmp_path / "ber.png"], capsys, "exists; pass --force")
    one_line_error(["eval", "--scores", tmp_path / "llr", "--plot", tmp_path / "b.png"],
                   capsys, "--plot needs --llr")


@pytest.fixture
def kaldi(tmp_path):
    words = {1: "target", 0: "nontarget"}
    (tmp_path / "trials").write_text("".join(f"{e} {t} {words[y]}\n" for (e, t), y in
                                             zip(PAIRS, LABELS, strict=True)))
    (tmp_path / "scores").write_text("".join(f"{e} {t} {s}\n" for (e, t), s in
                                             zip(PAIRS, SCORES, strict=True)))
    return tmp_path


def test_sitw_key_and_compute_eer_input_give_the_hand_numbers(kaldi, capsys):
    sitw = (kaldi / "trials").read_text().replace("nontarget", "imp").replace("target", "tgt")
    (kaldi / "sitw").write_text(sitw)
    (kaldi / "eer_in").write_text("".join(f"{s} {'target' if y else 'nontarget'}\n"
                                          for y, s in zip(LABELS, SCORES, strict=True)))
    for argv in (["--trials", kaldi / "sitw", "--scores", kaldi / "scores"],
                 ["--scores", kaldi / "eer_in"]):
        result = run_json(["eval", *argv], capsys)
        assert result["eer"] == pytest.approx(1 / 3) and result["targets"] == 3
        assert result["min_dcf_0.01"] == pytest.approx(1 / 3)
        assert result["tar_at_far_1e-3"] == pytest.approx(2 / 3)


def test_ci_by_trial(kaldi, capsys):
    (kaldi / "two").write_text("".join(f"{y} {s}\n" for y, s in zip(LABELS, SCORES,
                                                                      strict=True)))
    result = run_json(["eval", "--scores", kaldi / "two", "--ci", "--resamples", "50"], capsys)
    ci = result["ci"]
    assert (ci["by"], ci["units"], ci["resamples"], ci["level"]) == ("trial", 7, 50, 0.95)
    assert list(ci)[4:] == ["eer", "min_dcf_0.01", "min_dcf_0.05", "tar_at_far_1e-3"]
    assert all(ci[name][0] <= ci[name][1] for name in list(ci)[4:])
    one_line_error(["eval", "--scores", kaldi / "two", "--ci", "--ci-by", "speaker"], capsys,
                   "--ci-by speaker needs trial names")
    one_line_error(["eval", "--scores", kaldi / "two", "--ci-by", "trial"], capsys,
                   "--ci-by needs --ci")


def test_too_few_speakers_with_targets_is_one_line(kaldi, capsys):
    # only speaker a has targets: a resample without a has none
    one_line_error(["eval", "--trials", kaldi / "trials", "--scores", kaldi / "scores",
                    "--ci"], capsys, "resample trials instead (--ci-by trial)")


def test_ci_speakers_are_the_enroll_names_up_to_the_first_slash(tmp_path, capsys):
    rng = np.random.default_rng(0)
    words = ("nontarget", "target")
    (tmp_path / "trials").write_text("".join(f"spk{k % 5}/utt{k} x{k} {words[k % 2]}\n"
                                             for k in range(60)))
    (tmp_path / "scores").write_text("".join(f"spk{k % 5}/utt{k} x{k} {rng.normal()}\n"
                                             for k in range(60)))
    argv = ["eval", "--trials", tmp_path / "trials", "--scores", tmp_path / "scores", "--ci",
            "--resamples", "20"]
    assert run_json(argv, capsys)["ci"]["units"] == 5
    assert run(argv) == 0
    out = capsys.readouterr().out
    assert "20 resamples of the 5 speakers" in out and "  minDCF(0.05)  [" in out


def save(path, embeddings, labels):
    np.savez(path, embeddings=np.asarray(embeddings, dtype=float), labels=np.asarray(labels))
    return path


def test_identification_by_hand(tmp_path, capsys):
    # templates: identity 0 along x (the mean of two rows), 1 along y. Probes: (1, 0.1)
    # labelled 0 -> rank 1 (score 0.995); (0.1, 1) labelled 0 -> rank 2; (1, 1) labelled 1
    # ties -> rank 2 (ties count against); (0.6, 0.8) non-mated, top score 0.8.
    # rank-1 = 1/3, rank-2 = 1; TPIR is 1/3 at FPIR 0 (threshold above 0.8) and at FPIR 1.
    gallery = save(tmp_path / "g.npz", [[2, 0], [1, 0], [0, 3]], [0, 0, 1])
    probes = save(tmp_path / "p.npz", [[1, 0.1], [0.1, 1], [1, 1], [0.6, 0.8]], [0, 0, 1, 7])
    result = run_json(["eval", "--gallery", gallery, "--probes", probes, "--rank", "1", "2",
                       "--fpir", "0", "1"], capsys)
    assert (result["templates"], result["mated"], result["non_mated"]) == (2, 3, 1)
    assert result["rank1"] == pytest.approx(1 / 3) and result["rank2"] == 1.0
    assert result["cmc"] == pytest.approx([1 / 3, 1.0])
    assert result["tpir@0"] == pytest.approx(1 / 3) and result["tpir@1"] == pytest.approx(1 / 3)
    assert run(["eval", "--gallery", gallery, "--probes", probes]) == 0
    out = capsys.readouterr().out
    assert "rank-1          33.33%" in out and "TPIR@FPIR=0.01" in out


def test_closed_set_probes_get_no_tpir_by_default(tmp_path, capsys):
    gallery = save(tmp_path / "g.npz", [[1, 0], [0, 1]], ["a", "b"])
    probes = save(tmp_path / "p.npz", [[1, 0.2], [0.2, 1]], ["a", "b"])
    result = run_json(["eval", "--gallery", gallery, "--probes", probes, "--rank", "1"],
                      capsys)
    assert result["rank1"] == 1.0 and not any(k.startswith("tpir") for k in result)
    one_line_error(["eval", "--gallery", gallery, "--probes", probes, "--rank", "1",
                    "--fpir", "0.01"], capsys, "need non-mated probes")


@pytest.mark.parametrize("argv, message", [
    (["--gallery", "{g}"], "needs both --gallery and --probes"),
    (["--gallery", "{g}", "--probes", "{p}", "--scores", "{g}"], "--scores belongs to"),
    (["--gallery", "{g}", "--probes", "{p}", "--rank", "3"], "--rank 3 exceeds the 2 ident"),
    (["--gallery", "{g}", "--probes", "{p}", "--fpir", "2"], "--fpir must lie in [0, 1]"),
    (["--gallery", "{nolabels}", "--probes", "{p}"], "needs a 'labels' array of shape (3,)"),
    (["--gallery", "{g}", "--probes", "{wide}"], "has 3 columns but --gallery"),
    (["--gallery", "{g}", "--probes", "{zero}"], "probes row 1 is all zeros"),
])
def test_identification_errors_are_one_line(tmp_path, capsys, argv, message):
    files = {"g": save(tmp_path / "g.npz", [[1, 0], [0, 1], [1, 1]], [0, 1, 1]),
             "p": save(tmp_path / "p.npz", [[1, 0.2]], [0]),
             "wide": save(tmp_path / "w.npz", [[1, 0, 0]], [0]),
             "zero": save(tmp_path / "z.npz", [[1, 0], [0, 0]], [0, 1])}
    np.savez(tmp_path / "n.npz", embeddings=np.eye(3)[:, :2])
    files["nolabels"] = tmp_path / "n.npz"
    one_line_error(["eval", *[a.format(**files) for a in argv]], capsys, message)
