"""The ``lstmkit`` command: a thin layer that builds configs and calls library functions.

Subcommands: ``reference`` (the NumPy character-LM demo) and one per module of
:mod:`lstmkit.tasks` that defines ``register(subparsers)``; such a function adds its parser and
sets ``func(args) -> int`` as the parser's default.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from . import __version__, tasks
from .reference import main as reference_main

__all__ = ["build_parser", "main"]


def _run_reference(args: argparse.Namespace) -> int:
    return reference_main(args.rest, prog="lstmkit reference")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lstmkit", description="LSTM networks: train, evaluate, generate, benchmark.")
    parser.add_argument("--version", action="version", version=f"lstmkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    ref = sub.add_parser(
        "reference",
        help="train the NumPy reference LSTM as a character LM (see 'lstmkit reference --help')",
        add_help=False,
    )
    ref.add_argument("rest", nargs=argparse.REMAINDER)
    ref.set_defaults(func=_run_reference)
    from . import bench

    bench.register(sub)
    for info in sorted(pkgutil.iter_modules(tasks.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{tasks.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["reference"]:  # its own parser, flags included (argparse.REMAINDER would eat --help)
        return _guarded(lambda: reference_main(argv[1:], prog="lstmkit reference"))
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return _guarded(lambda: args.func(args))


def _guarded(run) -> int:
    """Run a subcommand; a user error becomes one line on stderr and exit status 2."""
    try:
        return int(run() or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"lstmkit: error: {e}", file=sys.stderr)
        return 2
