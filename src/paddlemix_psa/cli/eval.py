"""`paddlemix-psa eval`: multiple-choice video QA (Video-MME layout), dense and PSA on the same items.

Per item and mode one JSONL record goes to `--out` (a rerun with the same `--out` skips what is done); the
summary (accuracy per duration class with Wilson 95% intervals, the paired PSA - dense difference with the
exact McNemar p-value) is printed and written as JSON.
"""
from __future__ import annotations

import argparse
from typing import Any

from . import exit_codes
from .infer import (CliError, _positive_float, _positive_int, check_model_name, check_output_path, guarded,
                    parse_psa_config, quiet_hosts, write_json)

DEFAULT_OUT = "eval_results.jsonl"
DEFAULT_MAX_NEW_TOKENS = 16        # a direct answer is a letter; room for "The answer is (B)."


def _modes(text: str) -> tuple[str, ...]:
    from ..app.evaluation import MODES

    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    if not modes or any(m not in MODES for m in modes) or len(set(modes)) != len(modes):
        raise argparse.ArgumentTypeError(f"expected a comma list of distinct modes from {list(MODES)}, "
                                         f"got {text!r}")
    return modes


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ..app.evaluation import ADAPTERS, FIELD_KEYS
    from ..app.inference import DEFAULT_MODEL, HOSTS

    p = subparsers.add_parser(
        "eval", help="multiple-choice video QA accuracy, dense vs PSA (Video-MME layout)",
        description="Evaluate Qwen2.5-VL on multiple-choice video questions with dense attention and with PSA on "
                    "the same items; one JSONL record per item and mode, resumable; prints accuracy per duration "
                    "class with Wilson 95% intervals and the paired difference with an exact McNemar test.",
        epilog=exit_codes.epilog())
    p.add_argument("--data", required=True, metavar="FILE", help=".json (a list), .jsonl or .parquet questions")
    p.add_argument("--video-dir", default=None, metavar="DIR",
                   help="folder of the videos ({videoID}.mp4; default: the data file's folder)")
    p.add_argument("--adapter", choices=sorted(ADAPTERS), default="videomme",
                   help="field names of the data file (default videomme)")
    p.add_argument("--field", action="append", default=[], metavar="KEY=NAME",
                   help=f"override one field name, KEY in {', '.join(FIELD_KEYS)} (repeatable)")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="ID_OR_PATH|tiny",
                   help=f"model for the host's from_pretrained, or 'tiny' (default {DEFAULT_MODEL})")
    p.add_argument("--host", choices=HOSTS, default="paddleformers")
    p.add_argument("--psa-config", metavar="PRESET_OR_JSON", default=None,
                   help="PSA settings: a preset name (default, paper), a JSON object or a JSON file")
    p.add_argument("--fps", type=_positive_float, default=1.0, help="video frames sampled per second (1.0)")
    p.add_argument("--max-frames", type=_positive_int, default=64, metavar="N", help="at most N frames (64)")
    p.add_argument("--max-pixels", type=_positive_int, default=None, metavar="N", help="pixel budget per frame")
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="only the first N records")
    p.add_argument("--modes", type=_modes, default=("dense", "psa"), metavar="dense,psa",
                   help="attention modes to run (default both)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=DEFAULT_MAX_NEW_TOKENS, metavar="N",
                   help=f"tokens to generate per answer (default {DEFAULT_MAX_NEW_TOKENS})")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="results.jsonl",
                   help=f"per-item records, appended; a rerun skips done items (default {DEFAULT_OUT})")
    p.add_argument("--summary", default=None, metavar="summary.json",
                   help="summary JSON (default: --out with .summary.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or host log chatter")
    p.set_defaults(func=run, run=run)
    return p


def run(args: argparse.Namespace) -> int:
    return guarded(_run, args, "paddlemix-psa eval")


def summary_path(out: str) -> str:
    return (out[:-len(".jsonl")] if out.endswith(".jsonl") else out) + ".summary.json"


def _run(args: argparse.Namespace) -> int:
    from ..app import evaluation as ev

    if args.quiet:
        quiet_hosts()
    cfg = parse_psa_config(args.psa_config, tiny=args.model == "tiny")
    check_output_path(args.out, "--out")
    check_output_path(args.summary or summary_path(args.out), "--summary")
    check_model_name(args.model)
    try:
        items, bad = ev.load_items(args.data, video_dir=args.video_dir, adapter=args.adapter, fields=args.field,
                                   limit=args.limit)
    except ev.EvalDataError as e:
        raise CliError(str(e), exit_codes.INPUT) from None
    except ValueError as e:
        raise CliError(str(e), exit_codes.CONFIG) from None
    if not items and not bad:
        raise CliError(f"--data {args.data} holds no records", exit_codes.INPUT)
    print(f"eval: {len(items)} items ({len(bad)} malformed records) from {args.data}; modes {','.join(args.modes)}; "
          f"{args.fps:g} fps, at most {args.max_frames} frames; results -> {args.out}")
    from ..app.inference import QwenVLInference

    app = QwenVLInference(use_psa="psa" in args.modes, model=args.model, psa_config=cfg, host=args.host,
                          max_pixels=args.max_pixels, quiet=True)
    try:
        counts = ev.evaluate(app, items, bad, args.out, modes=args.modes, fps=args.fps, max_frames=args.max_frames,
                             max_new_tokens=args.max_new_tokens, progress=not args.quiet)
    except OSError as e:
        raise CliError(f"cannot write --out {args.out}: {e.strerror or e}", exit_codes.OTHER) from None
    except ValueError as e:
        raise CliError(str(e), exit_codes.CONFIG) from None
    summary = ev.summarize(ev.read_results(args.out), args.modes)
    summary.update(model=app.model_name, host=app.host, psa_config=cfg.to_dict(), psa_config_id=ev.config_id(cfg),
                   data=str(args.data),
                   fps=args.fps, max_frames=args.max_frames, runs=counts)
    if app.is_tiny:
        from ..app.tiny import MEANINGLESS

        summary["note"] = MEANINGLESS
        print(f"note: {MEANINGLESS}; its accuracy is chance level or below")
    print(f"runs: {counts['new']} new, {counts['skipped']} already done, {counts['errors']} errors")
    print(ev.format_summary(summary))
    path = args.summary or summary_path(args.out)
    write_json(path, summary)
    print(f"summary written to {path}")
    return exit_codes.OK
