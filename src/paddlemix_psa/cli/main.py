"""`paddlemix-psa` entry point: subcommands `attention`, `infer`, `demo`.

Errors a user can cause (bad arguments, missing files, invalid configs) print one line and exit non-zero.
"""
from __future__ import annotations

import argparse
import logging
import sys

from . import attention

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paddlemix-psa", description="Pyramid Sparse Attention for PaddlePaddle")
    parser.add_argument("--verbose", action="store_true", help="show INFO logs from paddlemix_psa")
    sub = parser.add_subparsers(dest="command", metavar="{attention,infer,demo,check}")
    sub.required = True
    attention.add_parser(sub)
    for name in ("infer", "demo", "check"):
        try:
            module = __import__(f"paddlemix_psa.cli.{name}", fromlist=["add_parser"])
        except ImportError:          # pragma: no cover - only while a subcommand is not installed
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("paddlemix_psa").setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("paddlemix-psa: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        print(f"paddlemix-psa {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
