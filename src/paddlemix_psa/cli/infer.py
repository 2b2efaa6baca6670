"""`paddlemix-psa infer`: answer a prompt about an image or a video with Qwen2.5-VL, PSA on or off.

Exit codes: 0 success; 2 usage (argparse); 3 unusable input (missing, empty, corrupt, unsupported, failed
download); 4 invalid --psa-config or option value; 5 model could not be loaded or run; 1 anything else.
Errors are one line on stderr (`PADDLEMIX_PSA_DEBUG=1` re-raises with the traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

EXIT_INPUT, EXIT_CONFIG, EXIT_MODEL, EXIT_OTHER = 3, 4, 5, 1
DEBUG_ENV = "PADDLEMIX_PSA_DEBUG"


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by `infer` and `demo`."""
    p.add_argument("--psa-config", metavar="PRESET_OR_JSON", default=None,
                   help="PSA settings: a preset name (default, paper), a JSON object, or a path to a JSON file "
                        "(default: AttentionConfig(); for --model tiny, a config whose short prompts run sparse)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=None, metavar="N",
                   help="tokens to generate (greedy)")
    p.add_argument("--stats-out", metavar="stats.json", default=None,
                   help="write the per-layer statistics and the run as JSON")
    p.add_argument("--plot", metavar="levels.png", default=None,
                   help="write a PNG: the level map of one LLM layer/head beside the per-layer sparsity")
    p.add_argument("--plot-layer", type=int, default=0, metavar="L", help="LLM layer for --plot (default 0)")
    p.add_argument("--plot-head", type=int, default=0, metavar="H", help="head for --plot (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or host log chatter")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ..app.inference import DEFAULT_MODEL, HOSTS

    p = subparsers.add_parser(
        "infer", help="image/video understanding with Qwen2.5-VL and PSA",
        description="Answer a prompt about an image or a video with Qwen2.5-VL, PSA on or off, and report "
                    "per-layer PSA statistics. --model tiny runs offline on a tiny random-weight model "
                    "(meaningless text).",
        epilog="exit codes: 0 ok, 2 usage, 3 bad input, 4 bad --psa-config/option, 5 model load/run failed")
    p.add_argument("--type", choices=("image", "video"), default=None,
                   help="input kind (default: guessed from the file suffix)")
    p.add_argument("--input", required=True, metavar="PATH_OR_URL", help="local file or http(s) URL")
    p.add_argument("--prompt", required=True, metavar="TEXT")
    p.add_argument("--fps", type=_positive_float, default=1.0, help="video frames sampled per second (1.0)")
    p.add_argument("--max-frames", type=_positive_int, default=None, metavar="N",
                   help="at most N sampled video frames (64)")
    p.add_argument("--max-pixels", type=_positive_int, default=None, metavar="N",
                   help="pixel budget per image / video frame (Qwen2.5-VL smart resize, multiples of 28)")
    psa = p.add_mutually_exclusive_group()
    psa.add_argument("--use-psa", dest="use_psa", action="store_true", default=True,
                     help="attn_implementation='psa' (default)")
    psa.add_argument("--no-psa", dest="use_psa", action="store_false",
                     help="the host's dense attention instead (baseline)")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="ID_OR_PATH|tiny",
                   help=f"model for the host's from_pretrained, or 'tiny' (default {DEFAULT_MODEL})")
    p.add_argument("--host", choices=HOSTS, default="paddleformers")
    add_common_arguments(p)
    p.set_defaults(func=run, run=run)
    return p


# ------------------------------------------------------------------------------------------ helpers
class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def parse_psa_config(value: str | None, *, tiny: bool) -> Any:
    """--psa-config: preset name, JSON text or a JSON file; None keeps the default (tiny: TINY_PSA_CONFIG)."""
    from ..config import AttentionConfig

    if value is None:
        if tiny:
            from ..app.tiny import TINY_PSA_CONFIG

            return AttentionConfig.coerce(TINY_PSA_CONFIG)
        return AttentionConfig()
    text = value.strip()
    if not text.startswith("{") and (text.endswith(".json") or os.path.sep in text) :
        try:
            with open(text, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as e:
            raise CliError(f"invalid --psa-config: cannot read {value!r}: {e.strerror or e}", EXIT_CONFIG) from None
    try:
        return AttentionConfig.coerce(text)
    except json.JSONDecodeError as e:
        raise CliError(f"invalid --psa-config: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})",
                       EXIT_CONFIG) from None
    except (ValueError, TypeError) as e:
        raise CliError(f"invalid --psa-config: {str(e).splitlines()[0]}", EXIT_CONFIG) from None


def quiet_hosts() -> None:
    """Silence import-time warnings and INFO logs of Paddle, PaddleFormers and transformers (--quiet).

    Must run before the hosts are imported: PaddleFormers' logger resets its level when created, so a filter
    (which survives that) drops its records below ERROR.
    """
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("PaddleFormers", "paddlemix_psa", "paddle"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _BelowError) for f in lg.filters):
            lg.addFilter(_BelowError())


class _BelowError:
    """logging filter: keep ERROR and above only."""

    def filter(self, record) -> bool:
        import logging

        return record.levelno >= logging.ERROR


def write_json(path: str, data: Any) -> None:
    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=_json_default)
            fh.write("\n")
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}", EXIT_OTHER) from None


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def guarded(fn, args: argparse.Namespace, prog: str) -> int:
    """Run `fn(args)`, turning every expected failure into one stderr line and an exit code."""
    from ..app.media import MediaError

    try:
        return fn(args)
    except CliError as e:
        err = (str(e), e.code)
    except MediaError as e:
        err = (str(e), EXIT_INPUT)
    except KeyboardInterrupt:
        err = ("interrupted", 130)
    except Exception as e:  # noqa: BLE001 - the contract is one line, never a traceback
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        from ..app.inference import InferenceError

        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if isinstance(e, InferenceError):
            err = (first, EXIT_MODEL)
        elif isinstance(e, (ValueError, TypeError)):
            err = (first, EXIT_CONFIG)
        else:
            err = (f"{type(e).__name__}: {first} (set {DEBUG_ENV}=1 for the traceback)", EXIT_OTHER)
    sys.stdout.flush()
    print(f"{prog}: error: {err[0]}", file=sys.stderr)
    return err[1]


def describe_media(info: dict[str, Any], kind: str) -> str:
    if kind == "image":
        w, h = info["size"]
        return f"image {w}x{h} px -> {info['tokens']} visual tokens"
    w, h = info["size"]
    dur = f"{info['duration_s']:.1f} s" if info.get("duration_s") else "unknown length"
    return (f"video ({dur}) -> {info['frames']} frames at {info['sample_fps']:.2f} fps, {w}x{h} px -> "
            f"{info['tokens']} visual tokens")


# ------------------------------------------------------------------------------------------ command
def run(args: argparse.Namespace) -> int:
    return guarded(_run, args, "paddlemix-psa infer")


def _run(args: argparse.Namespace) -> int:
    from ..app import media

    if args.quiet:
        quiet_hosts()
    kind = args.type or media.guess_kind(args.input)
    if kind is None:
        raise CliError(f"cannot tell whether {args.input!r} is an image or a video: pass --type image|video",
                       EXIT_INPUT)
    tiny = args.model == "tiny"
    cfg = parse_psa_config(args.psa_config, tiny=tiny)
    if args.max_pixels is not None and args.max_pixels < media.FACTOR ** 2:
        raise CliError(f"--max-pixels {args.max_pixels} is below one {media.FACTOR}x{media.FACTOR} token",
                       EXIT_CONFIG)
    # Decode the input before loading the model: bad inputs fail fast and cleanly.
    if kind == "image":
        loaded = media.load_image(args.input, max_pixels=args.max_pixels, quiet=args.quiet)
    else:
        loaded = media.load_video(args.input, fps=args.fps, max_frames=args.max_frames or media.DEFAULT_MAX_FRAMES,
                                  max_pixels=args.max_pixels, quiet=args.quiet)
    from ..app.inference import DEFAULT_MAX_NEW_TOKENS, QwenVLInference

    app = QwenVLInference(use_psa=args.use_psa, model=args.model, psa_config=cfg, host=args.host,
                          max_pixels=args.max_pixels, quiet=args.quiet, plot_layer=args.plot_layer)
    n_new = args.max_new_tokens or (16 if tiny else DEFAULT_MAX_NEW_TOKENS)
    if kind == "image":
        res = app.inference_image(loaded, args.prompt, max_new_tokens=n_new)
    else:
        res = app.inference_video(loaded, args.prompt, max_new_tokens=n_new)
    res.input = args.input
    print_result(app, res)
    finish_outputs(app, args)
    return 0


def print_result(app, res) -> None:
    from ..app.tiny import MEANINGLESS

    model = f"{app.model_name} ({MEANINGLESS})" if app.is_tiny else app.model_name
    print(f"model: {model}; host {app.host}; attention: {'PSA' if app.use_psa else 'dense (PSA off)'}")
    print(f"input: {res.input}: {describe_media(res.media, res.kind)}")
    print(f"answer: {res.text!r}" if app.is_tiny else f"answer: {res.text}")
    # the first token comes from the prefill; decode_s covers the remaining steps
    rate = f" ({(res.new_tokens - 1) / res.decode_s:.1f} tok/s)" if res.decode_s > 0 and res.new_tokens > 1 else ""
    print(f"tokens: prompt {res.prompt_tokens}, generated {res.new_tokens}; time: prefill {res.prefill_s:.2f} s, "
          f"decode {res.decode_s:.2f} s{rate}")
    print(app.format_stats())


def finish_outputs(app, args: argparse.Namespace) -> None:
    if args.stats_out:
        write_json(args.stats_out, app.report())
        print(f"statistics written to {args.stats_out}")
    if args.plot:
        try:
            app.plot(args.plot, head=args.plot_head)
        except OSError as e:
            raise CliError(f"cannot write {args.plot}: {e.strerror or e}", EXIT_OTHER) from None
        note = "" if app.level_map(args.plot_head) is not None else " (no PSA level map: PSA off or dense fallback)"
        print(f"plot written to {args.plot}{note}")


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m paddlemix_psa.cli.infer ...`); normally reached via `paddlemix-psa infer`."""
    parser = argparse.ArgumentParser(prog="paddlemix-psa")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
