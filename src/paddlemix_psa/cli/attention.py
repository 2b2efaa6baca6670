"""`paddlemix-psa attention`: PSA on a structured synthetic long sequence, compared with dense attention."""
from __future__ import annotations

import argparse
import json
import time

from . import exit_codes
from .infer import add_verbose_argument, check_output_path, guarded, parse_psa_config


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "attention", help="run PSA on a structured synthetic long sequence and compare with dense attention",
        description="Runs PSA (estimate -> levels -> pyramid attention) on synthetic q/k/v built by "
                    "paddlemix_psa.synthetic.structured_qkv (semantic runs, locality, smooth values), then dense "
                    "attention on the same inputs, and prints the level histogram, FLOP-equivalent sparsity, "
                    "cosine similarity, relative L2 error and times. Offline; runs on CPU or GPU.",
        epilog=exit_codes.epilog())
    p.add_argument("--length", type=int, default=4096, help="sequence length L (default 4096)")
    p.add_argument("--heads", type=int, default=8, help="query heads (default 8; Qwen2.5-VL-7B has 28)")
    p.add_argument("--kv-heads", type=int, default=2, help="key/value heads (default 2; Qwen2.5-VL-7B has 4)")
    p.add_argument("--head-dim", type=int, default=128, help="head dim: 64, 80, 96 or 128 (default 128)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="input dtype (default float32; the Triton kernels need float16/bfloat16 on GPU)")
    p.add_argument("--config", default="default",
                   help="AttentionConfig preset name ('default', 'paper') or a JSON object (default: default)")
    p.add_argument("--device", default=None, help="paddle device, e.g. cpu or gpu:0 (default: Paddle's current)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the results to this JSON file")
    add_verbose_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return guarded(_run, args, "paddlemix-psa attention")


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    import paddle

    from ..ops.attention import psa_attention
    from ..reference import dense_attention_ref
    from ..synthetic import structured_qkv

    config = parse_psa_config(args.config, tiny=False, option="--config")
    check_output_path(args.json_out, "--json")
    if args.length < 1:
        raise ValueError(f"--length={args.length} is invalid: must be >= 1")
    if args.device:
        paddle.device.set_device(args.device)
    q, k, v = structured_qkv(args.length, q_heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim,
                             seed=args.seed)
    q, k, v = (paddle.to_tensor(x).astype(args.dtype) for x in (q, k, v))

    on_gpu = not q.place.is_cpu_place()

    def timed(fn):
        if on_gpu:
            paddle.device.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if on_gpu:
            paddle.device.synchronize()
        return out, (time.perf_counter() - t0) * 1e3

    (out, stats), psa_ms = timed(lambda: psa_attention(q, k, v, config=config, return_stats=True))
    dense, dense_ms = timed(lambda: dense_attention_ref(q, k, v))
    a = out.astype("float64").numpy().ravel()
    b = dense.astype("float64").numpy().ravel()
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    rel = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    total = sum(stats.histogram.values())
    place = str(q.place)
    print(f"PSA on structured synthetic inputs: L={args.length}, heads {args.heads}/{args.kv_heads}, "
          f"head_dim {args.head_dim}, {args.dtype}, causal, {place}")
    print(f"config: query_block={config.query_block} key_block={config.key_block} mask_mode={config.mask_mode} "
          f"xattn_stride={config.xattn_stride} dense_tail_tokens={config.dense_tail_tokens}")
    print("level histogram (valid block pairs):")
    for key, name in (("1", "level 1 (full)"), ("2", "level 2 (2x pooled)"), ("4", "level 4 (4x pooled)"),
                      ("8", "level 8 (8x pooled)"), ("0", "skipped")):
        n = stats.histogram[key]
        print(f"  {name:<22} {n:>8}  {100 * n / total:5.1f}%")
    print(f"FLOP-equivalent density {stats.density:.4f}  sparsity {stats.sparsity:.4f}")
    print(f"vs dense attention: cosine similarity {cos:.5f}  relative L2 error {rel:.4f}")
    times = "  ".join(f"{k[:-3]} {v:.1f} ms" for k, v in stats.times.items())
    print(f"time ({stats.backend} backend): PSA {psa_ms:.1f} ms [{times}]  dense reference {dense_ms:.1f} ms")
    if stats.backend == "reference":
        print("note: the pure-Paddle reference is a correctness oracle, not a fast path; "
              "speed claims come from the Triton kernels on GPU (benchmarks/RESULTS.md)")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(dict(length=args.length, heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim,
                           dtype=args.dtype, place=place, config=config.to_dict(), stats=stats.to_dict(),
                           cosine=cos, rel_l2=rel, psa_ms=psa_ms, dense_ms=dense_ms), f, indent=2)
    return exit_codes.OK
