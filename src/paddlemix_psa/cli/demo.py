"""`paddlemix-psa demo`: the offline tour. A tiny random-weight Qwen2.5-VL, the bundled sample image and a
short generated video, each run with PSA off and on; prints the comparison and writes the level-map plot.

Nothing is downloaded. The tiny model's weights are random, so its text is meaningless and its attention is
close to uniform (which makes PSA keep most blocks: expect low sparsity here, ~0.65 on the real 7B model per
the paper's Video-MME setup); the demo shows that the pipeline runs, what PSA chose, and how close the PSA
logits are to dense ones.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

import numpy as np

from . import exit_codes
from .infer import (CliError, add_common_arguments, check_output_path, check_plot_selectors, guarded,
                    parse_psa_config, write_json)

DEFAULT_PLOT = "psa_demo_levels.png"
DEMO_PROMPT_IMAGE = "Describe this image."
DEMO_PROMPT_VIDEO = "What happens in this video?"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo", help="offline demo: tiny model, sample image and video, PSA on vs off",
        description="Run the tiny random-weight Qwen2.5-VL offline on a bundled image and a generated video with "
                    "PSA off and on; print tokens, time, sparsity, fallbacks and logits similarity; write the "
                    "level-map plot.",
        epilog=exit_codes.epilog())
    add_common_arguments(p, command="demo")
    p.set_defaults(plot=DEFAULT_PLOT)
    p.add_argument("--no-plot", dest="plot", action="store_const", const=None, help="do not write the plot")
    p.add_argument("--skip-video", action="store_true", help="image only (faster)")
    p.add_argument("--fps", type=float, default=2.0, help="video sampling rate for the demo clip (2.0)")
    p.set_defaults(func=run, run=run)
    return p


def run(args: argparse.Namespace) -> int:
    return guarded(_run, args, "paddlemix-psa demo")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den else float("nan")


def compare(dense, psa) -> dict[str, Any]:
    """PSA vs dense on the same prompt: prefill-logits similarity and greedy agreement."""
    out: dict[str, Any] = {}
    if dense.prefill_logits is not None and psa.prefill_logits is not None:
        a, b = dense.prefill_logits, psa.prefill_logits
        out["logits_cosine"] = cosine(a, b)
        out["rel_l1"] = float(np.abs(a - b).sum() / max(np.abs(a).sum(), 1e-30))
        out["top1_agreement"] = float((a.argmax(-1) == b.argmax(-1)).mean())
    if dense.last_logits is not None and psa.last_logits is not None:
        out["last_logits_cosine"] = cosine(dense.last_logits, psa.last_logits)
    out["same_tokens"] = dense.token_ids == psa.token_ids
    return out


def _row(case: str, res, summary, cmp: dict[str, Any] | None) -> str:
    sp = f"{summary.sparsity:.3f}" if summary.valid_pairs else "-"
    fb = ",".join(f"{k}={v}" for k, v in sorted(summary.fallbacks.items())) or "none"
    cos = f"{cmp['logits_cosine']:.5f}" if cmp and "logits_cosine" in cmp else "(ref)"
    agree = f"{100 * cmp['top1_agreement']:.1f}%" if cmp and "top1_agreement" in cmp else "-"
    same = ("yes" if cmp["same_tokens"] else "no") if cmp else "-"
    return (f"{case:<7}{'PSA' if res.use_psa else 'dense':<7}{res.prompt_tokens:>7}{res.new_tokens:>5}"
            f"{res.prefill_s:>9.2f}{res.decode_s:>8.2f}{sp:>9}{summary.calls:>6}  {cos:>9} {agree:>7} {same:>5}  {fb}")


LEGEND = ("columns: logit cos = cosine similarity of PSA's and dense attention's prefill logits; top-1 agree = "
          "share of prompt positions where both pick the same next token; same text = identical greedy answers")
MATCH_COSINE = 0.99       # the demo test's bar for "PSA stays close to dense" on the tiny model


def verdict(comparisons: dict[str, dict[str, Any]]) -> str:
    """One line: does PSA match dense on every case (logits cosine and greedy text)?"""
    cos = {k: c["logits_cosine"] for k, c in comparisons.items() if "logits_cosine" in c}
    same = [k for k, c in comparisons.items() if c["same_tokens"]]
    worst = min(cos.values()) if cos else float("nan")
    matches = bool(cos) and worst >= MATCH_COSINE
    text = "same text" if len(same) == len(comparisons) else f"same text in {len(same)}/{len(comparisons)} cases"
    per_case = ", ".join(f"{k} {v:.4f}" for k, v in cos.items())
    return (f"verdict: PSA {'matches' if matches else 'differs from'} dense: logits cosine {worst:.4f}"
            f"{f' ({per_case})' if len(cos) > 1 else ''}, {text}")


HEADER = (f"{'case':<7}{'attn':<7}{'prompt':>7}{'new':>5}{'prefill':>9}{'decode':>8}{'sparsity':>9}{'PSA':>6}"
          f"  {'logit cos':>9} {'top-1':>7} {'same':>5}  dense fallbacks (this run)")
UNITS = (f"{'':<7}{'':<7}{'tokens':>7}{'tok':>5}{'s':>9}{'s':>8}{'':>9}{'calls':>6}  {'vs dense':>9} "
         f"{'agree':>7} {'text':>5}")


def _run(args: argparse.Namespace) -> int:
    cfg = parse_psa_config(args.psa_config, tiny=True)
    check_output_path(args.stats_out, "--stats-out")
    check_output_path(args.plot, "--plot")
    n_new = args.max_new_tokens or 8
    from ..app.inference import QwenVLInference
    from ..app.samples import make_sample_video, sample_image_path
    from ..app.tiny import MEANINGLESS, tiny_config_dict

    check_plot_selectors(args, tiny_config_dict(), cfg)

    print(f"paddlemix-psa demo: Qwen2.5-VL architecture, {MEANINGLESS}; offline.")
    print(f"PSA settings: {cfg.to_json()}")
    app = QwenVLInference(use_psa=True, model="tiny", psa_config=cfg, quiet=args.quiet, keep_prefill_logits=True,
                          plot_layer=args.plot_layer)
    report: dict[str, Any] = {"psa_config": cfg.to_dict(), "cases": {}}
    rows: list[str] = []
    plotted, plot_error = None, None
    with tempfile.TemporaryDirectory(prefix="paddlemix_psa_demo_") as tmp:
        cases = [("image", str(sample_image_path()))]
        if not args.skip_video:
            cases.append(("video", str(make_sample_video(os.path.join(tmp, "demo_clip.mp4"), seconds=4.0, fps=8,
                                                         width=448, height=336))))
        for kind, path in cases:
            loaded = app.load_image(path) if kind == "image" else app.load_video(path, fps=args.fps, max_frames=16)
            results = {}
            for use_psa in (False, True):
                app.use_psa = use_psa
                if kind == "image":
                    res = app.inference_image(loaded, DEMO_PROMPT_IMAGE, max_new_tokens=n_new)
                else:
                    res = app.inference_video(loaded, DEMO_PROMPT_VIDEO, max_new_tokens=n_new)
                res.input = os.path.basename(path)
                results[use_psa] = (res, app.summary(), app.stats(), app.fallbacks())
                if use_psa and args.plot and plotted is None and plot_error is None:
                    try:               # a plotting error is reported after the statistics are written
                        app.plot(args.plot, head=args.plot_head)
                        plotted = (kind, app.level_map(args.plot_head) is not None)
                    except Exception as e:  # noqa: BLE001
                        plot_error = getattr(e, "strerror", None) or (str(e).strip().splitlines() or [repr(e)])[0]
                if use_psa:
                    table = app.format_stats()
            (d_res, d_sum, _, _), (p_res, p_sum, p_layers, p_fb) = results[False], results[True]
            cmp = compare(d_res, p_res)
            from .infer import describe_media

            print(f"\n[{kind}] {res.input}: {describe_media(p_res.media, kind)}")
            print(f"  dense answer: {d_res.text}\n  PSA answer:   {p_res.text}")
            print("  " + table.replace("\n", "\n  "))
            rows += [_row(kind, d_res, d_sum, None), _row(kind, p_res, p_sum, cmp)]
            report["cases"][kind] = {
                "media": p_res.media, "comparison": cmp,
                "dense": {**d_res.to_dict(), "fallbacks": results[False][3]},
                "psa": {**p_res.to_dict(), "sparsity": p_sum.sparsity if p_sum.valid_pairs else None,
                        "density": p_sum.density if p_sum.valid_pairs else None, "fallbacks": p_fb,
                        "layers": {n: s.to_dict() for n, s in p_layers.items()}},
            }
    print("\nPSA vs dense (same tiny model and inputs; greedy decoding; PSA acts on the LLM prefill, decode and "
          "the vision tower stay dense)")
    print(HEADER)
    print(UNITS)
    print("-" * len(HEADER))
    for r in rows:
        print(r)
    print(LEGEND)
    print(f"note: {MEANINGLESS}; its near-uniform attention keeps PSA fairly dense. "
          "Real checkpoints: paddlemix-psa infer --model Qwen/Qwen2.5-VL-7B-Instruct ...")
    if args.stats_out:
        write_json(args.stats_out, report)
        print(f"statistics written to {args.stats_out}")
    if args.plot:
        if plot_error is not None or plotted is None:
            kept = f"; statistics were written to {args.stats_out}" if args.stats_out else ""
            raise CliError(f"cannot write the plot {args.plot}: {plot_error or 'no PSA run to plot'}{kept}",
                           exit_codes.OTHER)
        print(f"plot written to {args.plot} (LLM layer {args.plot_layer}, head {args.plot_head}, {plotted[0]})"
              + ("" if plotted[1] else " (no level map: the layer fell back to dense)"))
    print(verdict({kind: case["comparison"] for kind, case in report["cases"].items()}))
    sys.stdout.flush()
    return exit_codes.OK
