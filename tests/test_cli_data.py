"""margin-softmax data: the training and held-out identities are disjoint, the trials'
labels are those of the test rows they name, and bad sizes or existing files are one-line
errors naming the option or the file."""

import numpy as np
import pytest

from margin_softmax.cli.main import main


def test_data_writes_disjoint_identities_and_trials_that_match_their_rows(tmp_path):
    argv = ["data", str(tmp_path), "--identities", "20", "--samples-per-identity", "4",
            "--trials", "300"]
    assert main(argv) == 0
    train, test = np.load(tmp_path / "train.npz"), np.load(tmp_path / "test.npz")
    assert train["features"].shape == (14 * 4, 32) and test["features"].shape == (6 * 4, 32)
    assert not set(train["labels"]) & set(test["labels"])
    rows = [line.split() for line in (tmp_path / "trials.txt").read_text().splitlines()]
    labels = test["labels"]
    assert len(rows) == 300 and sum(kind == "target" for _, _, kind in rows) == 150
    assert all((labels[int(a)] == labels[int(b)]) == (kind == "target") for a, b, kind in rows)


@pytest.mark.parametrize("option, value, message", [
    ("--identities", "4", "--identities must be at least 5; got 4"),
    ("--samples-per-identity", "1", "--samples-per-identity must be at least 2"),
])
def test_data_refuses_sizes_that_make_no_trials(tmp_path, capsys, option, value, message):
    assert main(["data", str(tmp_path / "d"), option, value]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "d").exists()


def test_data_replaces_files_only_with_force(tmp_path, capsys):
    argv = ["data", str(tmp_path), "--identities", "5", "--trials", "10"]
    assert main(argv) == 0
    before = (tmp_path / "trials.txt").read_text()
    assert main([*argv, "--seed", "1"]) == 2
    assert f"OUTDIR {tmp_path / 'train.npz'}: exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "trials.txt").read_text() == before
    assert main([*argv, "--seed", "1", "--force"]) == 0
    assert (tmp_path / "trials.txt").read_text() != before
