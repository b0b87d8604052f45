"""The README's usage example and its commands run as written and do what it says."""

import json
import math
import re
import shlex
from pathlib import Path

import numpy as np

from margin_softmax import report
from margin_softmax.cli.main import main
from margin_softmax.registry import DEFAULT_LOSSES

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    loss, prec1, embeddings = namespace["loss"], namespace["prec1"], namespace["embeddings"]
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert 0.0 <= prec1 <= 100.0
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0


def shell_lines() -> list[list[str]]:
    """The words of each line of the README's sh blocks, in order (continuations joined)."""
    blocks = re.findall(r"^```sh\n(.*?)^```$", README.read_text(), re.M | re.S)
    text = "".join(blocks).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in text.splitlines() if line.strip()]


def test_readme_commands_run_in_order_as_written(tmp_path, monkeypatch, capsys):
    """Every margin-softmax command of the README runs, in order, in an empty folder (the
    README makes the files it uses); the make and pip lines are the setup, not run here."""
    lines = shell_lines()
    commands = [words[1:] for words in lines if words[0] == ".venv/bin/margin-softmax"]
    others = [words for words in lines if words[0] != ".venv/bin/margin-softmax"]
    assert all(words[0] in ("make", "pip") for words in others), others
    assert [c[0] for c in commands] == ["compare", "data", "train", "train", "eval", "eval"]
    monkeypatch.chdir(tmp_path)
    outputs = []
    for argv in commands:
        assert main(argv) == 0, argv
        outputs.append(capsys.readouterr().out)

    # the numbers the README gives for the data, from the files
    train, test = np.load("runs/demo/train.npz"), np.load("runs/demo/test.npz")
    trials = Path("runs/demo/trials.txt").read_text().splitlines()
    text = " ".join(README.read_text().split())
    n, d = train["features"].shape
    assert f"`features` ({n}, {d}) and `labels` of {len(np.unique(train['labels']))} ids" \
        .replace("ids", "identities") in text
    assert f"({len(test['labels'])} samples of {len(np.unique(test['labels']))} other" in text
    assert f"({len(trials)} Kaldi trials" in text

    # the scores written by the first eval give the second the same metrics, and a trained
    # network tells unseen identities apart (chance is an EER of 50 %)
    scored = json.loads(outputs[-1])
    assert f"EER             {100 * scored['eer']:.2f}%" in outputs[-2]
    assert "AS-norm (top 300 of 350 in runs/demo/train_emb.npz)" in outputs[-2]
    assert scored["trials"] == len(trials) and scored["eer"] < 0.1


def results_table(text: str) -> list[str]:
    """The lines of the first code block that starts with the compare table's header."""
    block = re.search(r"```\n(loss .*?)```", text, re.S)
    assert block, "no compare table"
    return block.group(1).splitlines()


def test_readme_tables_are_mean_and_std_over_seeds_with_both_marks_as_in_docs():
    lines = results_table(README.read_text())
    n = len(DEFAULT_LOSSES)
    assert lines[2 + n] == "" and max(map(len, lines)) <= 100
    for table, columns in ((lines[:2 + n], report.COLUMNS),
                           (lines[3 + n:5 + 2 * n], report.HELD_OUT)):
        header, _ = report.table_rows({"losses": {}}, columns)
        assert re.split(r"  +", table[0].strip()) == header
        rows = table[2:]
        assert [row.split()[0] for row in rows] == list(DEFAULT_LOSSES)
        assert all(row.count(" ± ") == len(header) - 1 for row in rows)
    assert "†" in " ".join(lines[:2 + n])  # the bootstrap's mark, in the first table only
    assert "†" not in " ".join(lines[3 + n:5 + 2 * n])
    note = " ".join(lines[5 + 2 * n:])
    assert note.startswith("Mean ± sample standard deviation (ddof=1) over 3 seeds (0, 1, 2).")
    assert "† (EER, minDCF): against softmax, the 95% bootstrap interval" in note
    cli = results_table((README.parent / "docs" / "cli.md").read_text())
    assert cli[:len(lines)] == lines  # one run, quoted in both places
