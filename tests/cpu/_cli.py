"""How the CLI tests call `paddlemix-psa`: in a subprocess through the console entry's `main`, falling back to
a parser with just the `infer` and `demo` subcommands while `cli/main.py` is not there."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

_RUNNER = """
import sys
sys.argv = ["paddlemix-psa"] + sys.argv[1:]
try:
    from paddlemix_psa.cli.main import main
except ImportError:
    from _cli import standalone_main as main
sys.exit(main())
"""


def standalone_main(argv=None) -> int:
    from paddlemix_psa.cli import demo, infer

    parser = argparse.ArgumentParser(prog="paddlemix-psa")
    sub = parser.add_subparsers(dest="command", required=True)
    infer.add_parser(sub)
    demo.add_parser(sub)
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    return args.func(args)


def run_cli(*args: str, cwd=None, timeout: float = 240, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", _RUNNER, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)
