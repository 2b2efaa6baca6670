"""The one exit-code table of every `paddlemix-psa` subcommand (printed by `--help` and in the README)."""

from __future__ import annotations

OK = 0
OTHER = 1          # an unexpected failure (set PADDLEMIX_PSA_DEBUG=1 for the traceback)
USAGE = 2          # bad command line (argparse)
INPUT = 3          # bad input: missing/corrupt media, failed or refused download, unreadable data file
CONFIG = 4         # bad --psa-config or option value
MODEL = 5          # model load or run failed
CHECK_FAILED = 6   # `check`: at least one self-check failed
INTERRUPTED = 130  # Ctrl-C

TABLE = (
    (OK, "ok"),
    (OTHER, "unexpected failure (PADDLEMIX_PSA_DEBUG=1 shows the traceback)"),
    (USAGE, "bad command line"),
    (INPUT, "bad input: media, download or data file"),
    (CONFIG, "bad --psa-config or option value"),
    (MODEL, "model load or run failed"),
    (CHECK_FAILED, "a self-check failed (check)"),
    (INTERRUPTED, "interrupted"),
)


def epilog() -> str:
    """The table as one `--help` epilog paragraph."""
    return "exit codes: " + ", ".join(f"{code} {text}" for code, text in TABLE)
