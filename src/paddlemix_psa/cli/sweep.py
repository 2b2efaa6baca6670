"""`paddlemix-psa sweep`: PSA configs against dense attention on synthetic q/k/v or a `--qkv` capture; prints
density and error per config, plots density vs error with the Pareto front, `--json` writes every point."""
from __future__ import annotations

import argparse
from typing import Any

from . import exit_codes
from .infer import CliError, _positive_int, check_output_path, guarded, parse_psa_config, write_json

DEFAULT_PLOT = "psa_sweep.png"


def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        vals = ()
    if not vals or not all(0.0 < v < 1.0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected a comma list of numbers in (0, 1), got {text!r}")
    return vals


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        vals = ()
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}")
    return vals


def _modes(text: str) -> tuple[str, ...]:
    from ..app.sweep import MASK_MODES

    vals = tuple(x.strip() for x in text.split(",") if x.strip())
    if not vals or any(v not in MASK_MODES for v in vals):
        raise argparse.ArgumentTypeError(f"expected a comma list from {list(MASK_MODES)}, got {text!r}")
    return vals


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ..app import sweep as sw

    def csv(vals):
        return ",".join(f"{v:g}" for v in vals)

    p = subparsers.add_parser(
        "sweep", help="PSA configs vs dense attention: density, error, Pareto plot",
        description="Sweep PSA configs over mask_mode, tau1 (energybound) / topk share, key_block and stride on "
                    "synthetic q/k/v (default) or one layer of an `infer --capture-qkv` file; measure density, "
                    "cosine and relative L2 error against dense attention (and the time, on a GPU); plot density "
                    "vs error with the Pareto front and the default and paper configs labelled.",
        epilog=exit_codes.epilog())
    p.add_argument("--qkv", default=None, metavar="capture.npz", help="q/k/v from infer --capture-qkv")
    p.add_argument("--layer", type=int, default=None, metavar="L", help="captured layer (default: the first)")
    p.add_argument("--length", type=_positive_int, default=None, metavar="N",
                   help="synthetic sequence length (default 2048), or the first N tokens of the capture")
    p.add_argument("--heads", type=_positive_int, default=4, help="synthetic query heads (4)")
    p.add_argument("--kv-heads", type=_positive_int, default=2, help="synthetic KV heads (2)")
    p.add_argument("--head-dim", type=int, choices=(64, 80, 96, 128), default=64, help="synthetic head dim (64)")
    p.add_argument("--seed", type=int, default=0, help="synthetic generator seed (0)")
    p.add_argument("--base-config", default=None, metavar="PRESET_OR_JSON",
                   help="settings the sweep does not vary (default AttentionConfig())")
    p.add_argument("--mask-modes", type=_modes, default=sw.MASK_MODES, metavar="energybound,topk")
    p.add_argument("--tau1", type=_floats, default=sw.DEFAULT_TAU1, metavar=csv(sw.DEFAULT_TAU1),
                   help="energybound: energy kept at level 1")
    p.add_argument("--topk", type=_floats, default=sw.DEFAULT_TOPK, metavar=csv(sw.DEFAULT_TOPK),
                   help="topk: share of key blocks at level 1")
    p.add_argument("--key-blocks", type=_ints, default=sw.DEFAULT_KEY_BLOCKS, metavar=csv(sw.DEFAULT_KEY_BLOCKS))
    p.add_argument("--strides", type=_ints, default=sw.DEFAULT_STRIDES, metavar=csv(sw.DEFAULT_STRIDES),
                   help="estimator strides")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="input dtype (default float32 on CPU, bfloat16 on GPU)")
    p.add_argument("--device", default=None, help="paddle device, e.g. cpu or gpu:0 (default: Paddle's current)")
    p.add_argument("--repeats", type=_positive_int, default=3, help="timed repeats per config on GPU (3)")
    p.add_argument("--plot", default=DEFAULT_PLOT, metavar="sweep.png", help=f"plot path (default {DEFAULT_PLOT})")
    p.add_argument("--no-plot", dest="plot", action="store_const", const=None, help="no plot")
    p.add_argument("--json", dest="json_out", default=None, metavar="points.json", help="write every point")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, run=run)
    return p


def run(args: argparse.Namespace) -> int:
    return guarded(_run, args, "paddlemix-psa sweep")


def _run(args: argparse.Namespace) -> int:
    from ..app import sweep as sw

    base = parse_psa_config(args.base_config, tiny=False, option="--base-config")
    check_output_path(args.plot, "--plot")
    check_output_path(args.json_out, "--json")
    if args.device:
        import paddle

        paddle.device.set_device(args.device)
    if args.qkv:
        try:
            case = sw.capture_case(args.qkv, args.layer, args.length)
        except ValueError as e:
            raise CliError(str(e), exit_codes.INPUT) from None
    else:
        if args.heads % args.kv_heads:
            raise CliError(f"--heads {args.heads} must be a multiple of --kv-heads {args.kv_heads}", exit_codes.CONFIG)
        case = sw.synthetic_case(args.length or 2048, args.heads, args.kv_heads, args.head_dim, args.seed)
    configs, skipped = sw.sweep_configs(base, mask_modes=args.mask_modes, tau1=args.tau1, topk=args.topk,
                                        key_blocks=args.key_blocks, strides=args.strides)
    print(f"sweep: {len(configs)} configs on {case.name}")
    for s in skipped:
        print(f"  skipped (not a valid config): {s}")
    points = sw.run_sweep(case, configs, dtype=args.dtype, repeats=args.repeats, progress=not args.quiet)
    print(sw.format_points(points))
    front = sum(p["pareto"] for p in points)
    print(f"{front} configs on the Pareto front (*): none of the others is both sparser and closer to dense")
    if points[0]["backend"] == "reference":
        print("note: the pure-Paddle reference ran (CPU); times are measured on a GPU only")
    if args.json_out:
        write_json(args.json_out, {"case": case.info, "name": case.name, "base_config": base.to_dict(),
                                   "skipped": skipped, "points": points})
        print(f"points written to {args.json_out}")
    if args.plot:
        try:
            sw.plot_sweep(args.plot, points, title=f"PSA sweep on {case.name}")
        except OSError as e:
            raise CliError(f"cannot write {args.plot}: {e.strerror or e}", exit_codes.OTHER) from None
        print(f"plot written to {args.plot}")
    return exit_codes.OK
