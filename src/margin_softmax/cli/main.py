"""``margin-softmax``: the entry point. Each subcommand lives in its own module and registers
its parser with ``add_parser``; ``main`` turns user errors into one line and exit status 2."""

from __future__ import annotations

import argparse
import sys

from . import calibrate, compare, data, train
from . import eval as evaluate
from .common import CliError


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: 'margin-softmax compare: error: ... (see --help)'."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    parser = Parser(
        prog="margin-softmax",
        description="Train, evaluate and compare softmax-family losses for embedding models.",
    )
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="{compare,data,train,eval,calibrate}",
        parser_class=Parser,
    )
    for module in (compare, data, train, evaluate, calibrate):
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad arguments or files, 1 a
    package of the cli extra missing)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (CliError, ValueError) as error:
        print(f"margin-softmax {args.command}: error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:  # the cli extra (matplotlib, tqdm, ...) is missing
        if error.name is None or error.name.partition(".")[0] == "margin_softmax":
            raise
        print(f"margin-softmax {args.command}: error: this command needs the package "
              f"{error.name!r}, which is not installed; install the command line's "
              f"dependencies with: pip install 'margin-softmax[cli]'", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"margin-softmax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
