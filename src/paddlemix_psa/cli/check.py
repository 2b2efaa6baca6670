"""`paddlemix-psa check`: the self-test to run right after installing (see app/selfcheck.py for what it does)."""
from __future__ import annotations

import argparse
import json

from . import exit_codes


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="self-test: versions, the backend a GPU tensor gets, every kernel vs the reference, timing",
        description="Prints Paddle/Triton/CUDA/GPU/host versions and which backend psa_attention uses for a GPU "
                    "tensor and why; runs every Triton kernel (estimator, similarity cap, selection, index list, "
                    "pooling, attention) and the public op against the pure-Paddle reference, on the GPU when "
                    "Paddle has one (small ragged and Qwen2.5-VL-7B 8k shapes, then PSA timed against Paddle's "
                    "flash attention / SDPA / FA3 at 8k and 32k), else under the Triton interpreter on tiny "
                    "shapes without timing.",
        epilog=exit_codes.epilog() + ". 0 only when every check passes.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", dest="json_out", default=None, metavar="PATH", help="also write the whole report here")
    p.add_argument("--no-timing", action="store_true", help="on a GPU, skip the timing against dense attention")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..app.selfcheck import build_report, format_report

    report = build_report(timing=not args.no_timing)
    for line in format_report(report):
        print(line, flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"report written to {args.json_out}")
    return exit_codes.OK if report["passed"] else exit_codes.CHECK_FAILED
