"""`paddlemix-psa infer`: answer a prompt about an image or a video with Qwen2.5-VL, PSA on or off.

Exit codes are the shared table of `exit_codes` (printed by `--help`). Errors are one line on stderr
(`PADDLEMIX_PSA_DEBUG=1` re-raises with the traceback). Everything that can be checked before the model loads
(options, output paths, the model name, the input) is checked first.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from typing import Any

from . import exit_codes

DEBUG_ENV = "PADDLEMIX_PSA_DEBUG"
# A Hugging Face style model id: "name" or "namespace/name" (what the hosts' from_pretrained downloads).
MODEL_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _int_at_least(minimum: int, what: str):
    """argparse type: an integer >= ``minimum``, with a one-line error naming ``what`` was expected."""
    def convert(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    return convert


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "an integer >= 0")


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def add_verbose_argument(p: argparse.ArgumentParser) -> None:
    """`--verbose` after the subcommand too; SUPPRESS keeps a `--verbose` given before it."""
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show host log output (Paddle, PaddleFormers, transformers) and paddlemix_psa INFO logs")


def add_common_arguments(p: argparse.ArgumentParser, command: str = "infer") -> None:
    """Options shared by `infer` and `demo`."""
    default = ("a config whose short prompts run sparse on the tiny model" if command == "demo" else
               "AttentionConfig(); for --model tiny, a config whose short prompts run sparse")
    p.add_argument("--psa-config", metavar="PRESET_OR_JSON", default=None,
                   help=f"PSA settings: a preset name (default, paper), a JSON object, or a path to a JSON file "
                        f"(default: {default})")
    p.add_argument("--max-new-tokens", type=_positive_int, default=None, metavar="N",
                   help="tokens to generate (greedy)")
    p.add_argument("--stats-out", metavar="stats.json", default=None,
                   help="write the per-layer statistics and the run as JSON")
    p.add_argument("--plot", metavar="levels.png", default=None,
                   help="write a PNG: the level map of one LLM layer/head beside the per-layer sparsity")
    p.add_argument("--plot-layer", type=_nonnegative_int, default=0, metavar="L",
                   help="LLM layer for --plot (default 0; checked against the model before the run)")
    p.add_argument("--plot-head", type=_nonnegative_int, default=0, metavar="H",
                   help="mask head for --plot (default 0; a query head, or a KV head with gqa_mask=per_kv_group)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (host logs are quiet unless --verbose)")
    add_verbose_argument(p)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ..app.inference import DEFAULT_MODEL, HOSTS

    p = subparsers.add_parser(
        "infer", help="image/video understanding with Qwen2.5-VL and PSA",
        description="Answer a prompt about an image or a video with Qwen2.5-VL, PSA on or off, and report "
                    "per-layer PSA statistics. --model tiny runs offline on a tiny random-weight model "
                    "(meaningless text).",
        epilog=exit_codes.epilog())
    p.add_argument("--type", choices=("image", "video"), default=None,
                   help="input kind (default: guessed from the file suffix)")
    p.add_argument("--input", required=True, metavar="PATH_OR_URL", help="local file or http(s) URL")
    p.add_argument("--prompt", required=True, metavar="TEXT")
    p.add_argument("--fps", type=_positive_float, default=1.0, help="video frames sampled per second (1.0)")
    p.add_argument("--max-frames", type=_positive_int, default=None, metavar="N",
                   help="at most N sampled video frames (64)")
    p.add_argument("--max-pixels", type=_positive_int, default=None, metavar="N",
                   help="pixel budget per image / video frame (Qwen2.5-VL smart resize, multiples of 28)")
    p.add_argument("--max-download-mb", type=_positive_float, default=None, metavar="MB",
                   help="size cap for an http(s) --input (default 64 for images, 4096 for videos, or "
                        "$PADDLEMIX_PSA_MAX_DOWNLOAD_MB); larger downloads are refused and nothing is cached")
    psa = p.add_mutually_exclusive_group()
    psa.add_argument("--use-psa", dest="use_psa", action="store_true", default=True,
                     help="attn_implementation='psa' (default)")
    psa.add_argument("--no-psa", dest="use_psa", action="store_false",
                     help="the host's dense attention instead (baseline)")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="ID_OR_PATH|tiny",
                   help=f"model for the host's from_pretrained, or 'tiny' (default {DEFAULT_MODEL})")
    p.add_argument("--host", choices=HOSTS, default="paddleformers")
    p.add_argument("--capture-qkv", default=None, metavar="qkv.npz",
                   help="save the post-RoPE q/k/v of --capture-layers at prefill, with token types (text, image, "
                        "video) and the frame grid (input of `paddlemix-psa sweep --qkv`; --host paddleformers)")
    p.add_argument("--capture-layers", default=None, metavar="0,13,27",
                   help="LLM layers for --capture-qkv (default: first, middle and last)")
    add_common_arguments(p)
    p.set_defaults(func=run, run=run)
    return p


# ------------------------------------------------------------------------------------------ helpers
class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def parse_psa_config(value: str | None, *, tiny: bool, option: str = "--psa-config") -> Any:
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
            raise CliError(f"invalid {option}: cannot read {value!r}: {e.strerror or e}",
                           exit_codes.CONFIG) from None
    try:
        return AttentionConfig.coerce(text)
    except json.JSONDecodeError as e:
        raise CliError(f"invalid {option}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})",
                       exit_codes.CONFIG) from None
    except (ValueError, TypeError) as e:
        raise CliError(f"invalid {option}: {str(e).splitlines()[0]}", exit_codes.CONFIG) from None


def check_output_path(path: str | None, option: str) -> None:
    """Fail before any work when `path` cannot be written (missing or read-only folder, a directory)."""
    if not path:
        return
    full = os.path.abspath(os.path.expanduser(path))
    parent = os.path.dirname(full)
    if os.path.isdir(full):
        raise CliError(f"{option} {path}: is a directory, expected a file path", exit_codes.CONFIG)
    if not os.path.isdir(parent):
        raise CliError(f"{option} {path}: directory {parent} does not exist", exit_codes.CONFIG)
    if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(full) and not os.access(full, os.W_OK)):
        raise CliError(f"{option} {path}: not writable", exit_codes.CONFIG)


def check_model_name(value: str) -> None:
    """`--model`: "tiny", a local model directory, or a model id for the host to download."""
    if value == "tiny" or os.path.isdir(os.path.expanduser(value)):
        return
    if os.path.exists(value) or not MODEL_ID.fullmatch(value) or ".." in value:
        from ..app.inference import DEFAULT_MODEL

        raise CliError(f"--model {value!r}: not a local model directory or a model id (namespace/name, e.g. "
                       f"{DEFAULT_MODEL}; or 'tiny')", exit_codes.MODEL)


def text_dims(config: Any) -> tuple[int, int, int]:
    """(LLM layers, query heads, KV heads) of a Qwen2.5-VL config object or dict (text_config if present)."""
    get = (lambda c, k: c.get(k)) if isinstance(config, dict) else getattr
    text = get(config, "text_config") if isinstance(config, dict) else getattr(config, "text_config", None)
    text = text if text is not None else config
    heads = int(get(text, "num_attention_heads"))
    return int(get(text, "num_hidden_layers")), heads, int(get(text, "num_key_value_heads") or heads)


def check_plot_selectors(args: argparse.Namespace, config: Any, psa_config: Any) -> None:
    """--plot-layer / --plot-head within the model's LLM layers and mask heads (before the run)."""
    layers, q_heads, kv_heads = text_dims(config)
    heads = q_heads if psa_config.gqa_mask == "per_head" else kv_heads
    if args.plot_layer >= layers:
        raise CliError(f"--plot-layer {args.plot_layer} is out of range: the model has {layers} LLM layers "
                       f"(0..{layers - 1})", exit_codes.CONFIG)
    if args.plot_head >= heads:
        raise CliError(f"--plot-head {args.plot_head} is out of range: the level map has {heads} heads "
                       f"(0..{heads - 1}, gqa_mask={psa_config.gqa_mask!r})", exit_codes.CONFIG)


def quiet_hosts() -> None:
    """Silence the host noise the tool knows (the default; `--verbose` keeps it): Paddle's ccache warning and
    glog W-lines, transformers' "PyTorch was not found", PaddleFormers' coloured INFO/WARNING records.

    Must run before the hosts are imported: PaddleFormers' logger resets its level when created, so a filter
    (which survives that) drops its records below ERROR. paddlemix_psa's own warnings (unexpected fallbacks)
    stay visible.
    """
    import logging
    import warnings

    for module in ("paddle", "paddleformers", "paddlenlp", "paddlemix", "transformers", "_distutils_hack",
                   "setuptools"):
        warnings.filterwarnings("ignore", module=module + r"(\.|$)")
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("PaddleFormers", "paddle", "paddlenlp", "paddlemix"):
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
        raise CliError(f"cannot write {path}: {e.strerror or e}", exit_codes.OTHER) from None


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def quiet_broken_pipe() -> int:
    """stdout's reader went away (`| head -1`): send the rest to /dev/null so exiting prints nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    return exit_codes.OK


def guarded(fn, args: argparse.Namespace, prog: str) -> int:
    """Run `fn(args)`, turning every expected failure into one stderr line and an exit code.

    Host log noise is quiet unless `--verbose`."""
    from ..app.media import MediaError

    if not getattr(args, "verbose", False):
        quiet_hosts()
    try:
        return fn(args)
    except BrokenPipeError:
        return quiet_broken_pipe()
    except CliError as e:
        err = (str(e), e.code)
    except MediaError as e:
        err = (str(e), exit_codes.INPUT)
    except KeyboardInterrupt:
        err = ("interrupted", exit_codes.INTERRUPTED)
    except Exception as e:  # noqa: BLE001 - the contract is one line, never a traceback
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        from ..app.inference import InferenceError

        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if isinstance(e, InferenceError):
            err = (first, exit_codes.MODEL)
        elif isinstance(e, (ValueError, TypeError)):
            err = (first, exit_codes.CONFIG)
        else:
            err = (f"{type(e).__name__}: {first} (set {DEBUG_ENV}=1 for the traceback)", exit_codes.OTHER)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_broken_pipe()
    print(f"{prog}: error: {err[0]}", file=sys.stderr)
    return err[1]


def describe_media(info: dict[str, Any], kind: str) -> str:
    if kind == "image":
        w, h = info["size"]
        return f"image {w}x{h} px -> {info['tokens']} visual tokens"
    w, h = info["size"]
    dur = f"{info['duration_s']:.1f} s" if info.get("duration_s") else "unknown length"
    text = (f"video ({dur}) -> {info['frames']} frames at {info['sample_fps']:.2f} fps, {w}x{h} px -> "
            f"{info['tokens']} visual tokens")
    # why this many frames of this size (Qwen's even frame count, the stream, max-frames, the pixel budget)
    notes = [info[k] for k in ("sampling", "sizing") if info.get(k)]
    return "\n".join([text] + [f"  {n}" for n in notes])


# ------------------------------------------------------------------------------------------ command
def run(args: argparse.Namespace) -> int:
    return guarded(_run, args, "paddlemix-psa infer")


def _run(args: argparse.Namespace) -> int:
    from ..app import media

    kind = args.type or media.guess_kind(args.input)
    if kind is None:
        raise CliError(f"cannot tell whether {args.input!r} is an image or a video: pass --type image|video",
                       exit_codes.INPUT)
    tiny = args.model == "tiny"
    cfg = parse_psa_config(args.psa_config, tiny=tiny)
    if args.max_pixels is not None and args.max_pixels < media.FACTOR ** 2:
        raise CliError(f"--max-pixels {args.max_pixels} is below one {media.FACTOR}x{media.FACTOR} token",
                       exit_codes.CONFIG)
    check_output_path(args.stats_out, "--stats-out")
    check_output_path(args.plot, "--plot")
    check_model_name(args.model)
    check_output_path(args.capture_qkv, "--capture-qkv")
    if args.capture_qkv and args.host != "paddleformers":
        raise CliError("--capture-qkv needs --host paddleformers (PaddleMIX fixes attention classes at construction)",
                       exit_codes.CONFIG)
    if tiny:
        from ..app.tiny import tiny_config_dict

        check_plot_selectors(args, tiny_config_dict(), cfg)
        capture_layers(args, tiny_config_dict())
    # Decode the input before loading the model: bad inputs fail fast and cleanly.
    cap = int(args.max_download_mb * (1 << 20)) if args.max_download_mb else None
    if kind == "image":
        loaded = media.load_image(args.input, max_pixels=args.max_pixels, quiet=args.quiet, max_download_bytes=cap)
    else:
        loaded = media.load_video(args.input, fps=args.fps, max_frames=args.max_frames or media.DEFAULT_MAX_FRAMES,
                                  max_pixels=args.max_pixels, quiet=args.quiet, max_download_bytes=cap)
    from ..app.inference import DEFAULT_MAX_NEW_TOKENS, QwenVLInference

    app = QwenVLInference(use_psa=args.use_psa, model=args.model, psa_config=cfg, host=args.host,
                          max_pixels=args.max_pixels, quiet=args.quiet, plot_layer=args.plot_layer)
    check_plot_selectors(args, app.model.config, cfg)     # real weights: known once the config is loaded
    layers = capture_layers(args, app.model.config)
    from ..app.capture import QKVCapture

    capture = QKVCapture(app, layers) if layers else contextlib.nullcontext()
    n_new = args.max_new_tokens or (16 if tiny else DEFAULT_MAX_NEW_TOKENS)
    with capture:
        if kind == "image":
            res = app.inference_image(loaded, args.prompt, max_new_tokens=n_new)
        else:
            res = app.inference_video(loaded, args.prompt, max_new_tokens=n_new)
    res.input = args.input
    print_result(app, res)
    finish_outputs(app, args)
    if layers:
        save_capture(capture, args, res)
    return 0


def capture_layers(args: argparse.Namespace, config: Any) -> tuple[int, ...] | None:
    """--capture-layers checked against the model's LLM layers; None without --capture-qkv."""
    if not args.capture_qkv:
        if args.capture_layers is not None:
            raise CliError("--capture-layers needs --capture-qkv PATH", exit_codes.CONFIG)
        return None
    from ..app.capture import parse_layers

    try:
        return parse_layers(args.capture_layers, text_dims(config)[0])
    except ValueError as e:
        raise CliError(str(e), exit_codes.CONFIG) from None


def save_capture(capture, args: argparse.Namespace, res) -> None:
    try:
        path = capture.save(args.capture_qkv, extra={"input": args.input, "prompt": args.prompt, "kind": res.kind,
                                                     "media": res.media})
    except OSError as e:
        raise CliError(f"cannot write --capture-qkv {args.capture_qkv}: {e.strerror or e}", exit_codes.OTHER) from None
    layers = ",".join(map(str, capture.layers))
    print(f"q/k/v of LLM layers {layers} (post-RoPE, prefill, {res.prompt_tokens} tokens) written to {path}")


def print_result(app, res) -> None:
    from ..app.tiny import MEANINGLESS

    model = f"{app.model_name} ({MEANINGLESS})" if app.is_tiny else app.model_name
    print(f"model: {model}; host {app.host}; attention: {'PSA' if app.use_psa else 'dense (PSA off)'}")
    print(f"input: {res.input}: {describe_media(res.media, res.kind)}")
    print(f"answer: {res.text}")
    # the first token comes from the prefill; decode_s covers the remaining steps
    rate = f" ({(res.new_tokens - 1) / res.decode_s:.1f} tok/s)" if res.decode_s > 0 and res.new_tokens > 1 else ""
    if app.host == "paddlemix" and not res.prefill_s:       # one generate() call: no separate prefill time
        print(f"tokens: prompt {res.prompt_tokens}, generated {res.new_tokens}; time: generate {res.decode_s:.2f} s "
              f"(prefill and decode)")
    else:
        print(f"tokens: prompt {res.prompt_tokens}, generated {res.new_tokens}; time: prefill {res.prefill_s:.2f} "
              f"s, decode {res.decode_s:.2f} s{rate}")
    print(app.format_stats())


def finish_outputs(app, args: argparse.Namespace) -> None:
    if args.stats_out:
        write_json(args.stats_out, app.report())
        print(f"statistics written to {args.stats_out}")
    if args.plot:
        plot_or_fail(app, args)
        note = "" if app.level_map(args.plot_head) is not None else " (no PSA level map: PSA off or dense fallback)"
        print(f"plot written to {args.plot}{note}")


def plot_or_fail(app, args: argparse.Namespace) -> None:
    """Write the plot; a failure names what was kept (the statistics are written before the plot)."""
    try:
        app.plot(args.plot, head=args.plot_head)
    except Exception as e:  # noqa: BLE001 - plotting must never hide the run's results
        kept = f"; statistics were written to {args.stats_out}" if args.stats_out else ""
        why = getattr(e, "strerror", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CliError(f"cannot write the plot {args.plot}: {why}{kept}", exit_codes.OTHER) from None


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m paddlemix_psa.cli.infer ...`); normally reached via `paddlemix-psa infer`."""
    parser = argparse.ArgumentParser(prog="paddlemix-psa")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
