"""The command lines that README.md, docs/cli.md and docs/distributed.md show parse with the
parsers they name, the options their text names exist, and the defaults that
docs/distributed.md lists for the torchrun entry point are the parser's."""

import re
import shlex
from pathlib import Path

import pytest
import torch

from margin_softmax.cli.main import build_parser
from margin_softmax.distributed import train as distributed_train

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs" / "cli.md", ROOT / "docs" / "distributed.md"]


def command_lines(page: Path) -> list[str]:
    """The lines of the page's sh, bash and unlabelled fenced blocks (continuations joined)."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", page.read_text(), re.M | re.S)
    text = "".join(code for language, code in blocks if language in ("", "sh", "bash"))
    return [line for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(program, arguments) of every margin-softmax and distributed-train line."""
    commands = []
    for page in PAGES:
        for line in command_lines(page):
            if "margin-softmax " not in line and "margin_softmax." not in line:
                continue  # a table, an equation, the output of a run
            words = shlex.split(line, comments=True)
            if words and words[0].endswith("margin-softmax"):
                commands.append(("margin-softmax", words[1:]))
            elif "margin_softmax.distributed.train" in words:
                commands.append(("distributed.train", words[words.index(
                    "margin_softmax.distributed.train") + 1:]))
    return commands


COMMANDS = documented_commands()


def subcommand_options() -> dict[str, set[str]]:
    """margin-softmax's subcommands and their option strings."""
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if hasattr(a, "choices") and a.choices
                     and isinstance(a.choices, dict)]
    return {name: set(sub._option_string_actions) for name, sub in subparsers.choices.items()}


def test_the_pages_show_commands_of_both_programs():
    programs = [program for program, _ in COMMANDS]
    assert programs.count("margin-softmax") >= 12 and programs.count("distributed.train") == 3


@pytest.mark.parametrize("program, args", COMMANDS, ids=[" ".join(a)[:60] for _, a in COMMANDS])
def test_documented_command_parses(program, args, monkeypatch):
    if program == "margin-softmax":
        parsed = build_parser().parse_args(args)
        assert parsed.command == args[0]
    else:  # --device cuda is refused on a machine without CUDA, before anything runs
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        distributed_train.parse_args(args)


def test_options_named_in_cli_md_exist():
    text = (ROOT / "docs" / "cli.md").read_text()
    options = set().union(*subcommand_options().values())
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
    assert named and named <= options, sorted(named - options)


def test_distributed_md_lists_the_entry_points_options_and_defaults():
    text = (ROOT / "docs" / "distributed.md").read_text()
    section = text.split("## Running it: torchrun", 1)[1].split("\n## ", 1)[0]
    parsed = vars(distributed_train.parse_args([]))  # every option at its default
    named = set(re.findall(r"`(--[a-z][a-z0-9-]*)", section))
    assert named and {o[2:].replace("-", "_") for o in named} <= set(parsed), sorted(named)
    defaults = re.findall(r"`(--[a-z][a-z0-9-]*)` \((?:per rank, )?([0-9.e-]+)", section)
    assert len(defaults) >= 8
    for option, value in defaults:
        assert parsed[option[2:].replace("-", "_")] == float(value), option
