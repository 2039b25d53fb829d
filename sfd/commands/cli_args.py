"""What every `sfd` subcommand module shares: the parser that answers bad arguments in one line, typed numbers, and
running a parsed command with one-line errors (`sfd <command>: error: ...`, exit status 2, no traceback).

The subcommand modules (sfd/commands/cli.py, sfd/commands/cli_audit.py, sfd/commands/cli_demo.py, sfd/commands/cli_export.py) import this one and not each
other, so that the command line has no import cycle.
"""

from __future__ import annotations

import argparse
import math
import sys

from sfd.kernel.errors import Interrupted, SFDError

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def nonneg_int(name: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"{name} must be >= 0, got {v}")
        return v

    return parse


def pos_int(name: str):
    def parse(text: str) -> int:
        v = nonneg_int(name)(text)
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v

    return parse


def float_arg(name: str, positive: bool = False):
    """A finite float argument, >= 0 (or > 0 with `positive`); bad values are argparse's one-line errors."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(v) or v < 0 or (positive and v == 0):
            raise argparse.ArgumentTypeError(f"{name} must be a {'positive' if positive else 'non-negative'} number, got {text!r}")
        return v

    return parse


def main_with(add_parsers, argv: list[str] | None = None) -> int:
    """The `sfd` command line with only the subcommands `add_parsers(subparsers)` adds (`python -m` of one commands
    module; `sfd` itself has every command)."""
    parser = Parser(prog="sfd")
    add_parsers(parser.add_subparsers(dest="command", required=True, parser_class=Parser))
    return run_command(parser, argv)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse `argv` and run the chosen subcommand's `func`; user errors become one line on stderr and exit status 2,
    Ctrl-C 130 (after a training state was saved, the message says how to continue)."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Interrupted as e:
        print(f"sfd {args.command}: {e}; the training state is saved, continue with --resume", file=sys.stderr)
        return 130
    except SFDError as e:
        print(f"sfd {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"sfd {args.command}: interrupted", file=sys.stderr)
        return 130
