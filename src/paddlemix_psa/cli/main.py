"""`paddlemix-psa` entry point: subcommands `attention`, `infer`, `demo`, `eval`, `sweep`.

Errors a user can cause (bad arguments, missing files, invalid configs) print one line and exit non-zero.
"""
from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from . import attention, exit_codes

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paddlemix-psa", description="Pyramid Sparse Attention for PaddlePaddle",
                                     epilog=exit_codes.epilog())
    parser.add_argument("--version", action="version", version=f"paddlemix-psa {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show host log output (Paddle, PaddleFormers, transformers) and paddlemix_psa INFO logs")
    sub = parser.add_subparsers(dest="command", metavar="{attention,infer,demo,eval,sweep,check,cache}")
    sub.required = True
    attention.add_parser(sub)
    for name in ("infer", "demo", "eval", "sweep", "check", "cache"):
        try:
            module = __import__(f"paddlemix_psa.cli.{name}", fromlist=["add_parser"])
        except ImportError:          # pragma: no cover - only while a subcommand is not installed
            continue
        module.add_parser(sub)
    _same_conventions(sub)
    return parser


def _same_conventions(sub) -> None:
    """Every subcommand prints the exit-code table in `--help` and accepts `--verbose` after its name."""
    from .infer import add_verbose_argument

    for p in sub.choices.values():
        p.epilog = p.epilog or exit_codes.epilog()
        if "--verbose" not in p._option_string_actions:
            add_verbose_argument(p)


def main(argv: list[str] | None = None) -> int:
    from .infer import quiet_broken_pipe

    try:
        args = build_parser().parse_args(argv)
    except BrokenPipeError:              # `paddlemix-psa --help | head -1`
        return quiet_broken_pipe()
    logging.getLogger("paddlemix_psa").setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:
        return quiet_broken_pipe()
    except KeyboardInterrupt:
        print("paddlemix-psa: interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED
    except USER_ERRORS as exc:
        code = exit_codes.CONFIG if isinstance(exc, (ValueError, TypeError)) else exit_codes.INPUT
        print(f"paddlemix-psa {args.command}: error: {exc}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
