#!/usr/bin/env python3
"""PSA attention benchmark on one GPU with torch tensors (the device machine has no Paddle).

Shapes: the Qwen2.5-VL-7B LLM (H_q=28, H_kv=4, D=128, bf16, causal, B=1) at several lengths.
Rows per length:
  dense          torch SDPA, fastest of the flash / cuDNN / efficient backends (named in the table)
  dense-fa2      torch's FlashAttention-2 backend, for context
  triton-dense   benchmarks/triton_dense.py: a dense causal Triton forward with TMA and the PSA tiles, the
                 ceiling a Triton kernel reaches on the card
  psa@d          PSA attention kernel alone on a fixed structured level map of FLOP density d (pool, lut and
                 level-1 runs prebuilt)
  psa-full:X     the whole kernel pipeline (estimate -> similarity -> select -> lut -> pool -> attention) with
                 configuration X (FULL_CONFIGS: default = AttentionConfig(), paper = AttentionConfig.preset
                 ("paper")), on paddlemix_psa.synthetic inputs; "plan" = estimate + similarity + select + index list
                 (the selection writes it) timed as psa_level_map_kernels alone; "graph" = the same forward
                 captured in a CUDA graph and replayed; "scratch" = peak device memory of the plan beyond the inputs
  original       with --original PATH: the original PSA (a ziplab/Pyramid-Sparse-Attention checkout the user
                 provides, imported at run time by benchmarks/original_psa.py) at the paper configuration, on
                 the same inputs as psa-full, with its own sparsity and its error vs dense
  X@sparse       dense, psa-full:paper and original again on inputs whose attention is concentrated
                 (paddlemix_psa.synthetic.SPARSE_SETTINGS: the paper preset skips ~90% of the work there)
Columns: median ms (triton.testing.do_bench), ratio = dense ms / row ms, TFLOP/s of the work done
(density x dense causal FLOPs / time), measured density, cosine and rel-L2 of the output vs dense.

    PYTHONPATH=src python3 benchmarks/bench_attention.py --lengths 8k,16k,32k,64k,128k [--original PATH]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (os.path.join(ROOT, "src"), os.path.join(ROOT, "tests", "gpu"), os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import torch_oracle as T  # noqa: E402
from paddlemix_psa.kernels.attn_fwd import psa_attn_fwd  # noqa: E402
from paddlemix_psa.kernels.pool import psa_pool_kv  # noqa: E402

HQ, HKV, D, B = 28, 4, 128, 1
QB, KB = 128, 32


def parse_len(s):
    s = s.strip().lower()
    return int(float(s[:-1]) * 1024) if s.endswith("k") else int(s)


def bench_ms(fn, rep_ms=300):
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est = (time.perf_counter() - t0) * 1e3
    rep = max(rep_ms, 5 * est)
    return float(do_bench(fn, warmup=max(25, 2 * est), rep=rep, return_mode="median"))


def synthetic_qkv(L, seed=0, dtype=torch.bfloat16, **settings):
    """The package's structured generator (paddlemix_psa.synthetic: semantic runs, locality, smooth values),
    the same inputs `paddlemix-psa attention` uses, moved to the GPU; ``settings`` override its defaults."""
    from paddlemix_psa.synthetic import structured_qkv
    q, k, v = structured_qkv(L, q_heads=HQ, kv_heads=HKV, head_dim=D, seed=seed, **settings)
    return tuple(torch.from_numpy(x).to("cuda", dtype).contiguous() for x in (q, k, v))


def pick_dense(q, k, v, only=None):
    """Fastest available SDPA backend (native GQA if it runs, else K/V repeated outside the timed region);
    returns (name, fn, choice). ``only``: a previous ``choice`` (backend name, gqa flag) to reuse."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    F = torch.nn.functional
    cands = []
    for name in ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"):
        be = getattr(SDPBackend, name, None)
        if be is None or (only is not None and only[0] != name):
            continue
        for gqa in (True, False):
            if only is not None and only[1] != gqa:
                continue
            if gqa:
                def fn(be=be):
                    with sdpa_kernel(be):
                        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:
                kr, vr = k.repeat_interleave(HQ // HKV, 1), v.repeat_interleave(HQ // HKV, 1)

                def fn(be=be, kr=kr, vr=vr):
                    with sdpa_kernel(be):
                        return F.scaled_dot_product_attention(q, kr, vr, is_causal=True)
            try:
                fn()
                torch.cuda.synchronize()
                ms = bench_ms(fn, rep_ms=100)
                cands.append((ms, f"sdpa-{name.split('_')[0].lower()}{'' if gqa else '(kv repeated)'}", fn,
                              (name, gqa)))
                break
            except Exception as e:  # backend unavailable for these inputs
                print(f"  dense backend {name} gqa={gqa}: unavailable ({type(e).__name__}: {str(e)[:80]})")
    cands.sort(key=lambda c: c[0])
    for c in cands:
        print(f"  dense candidate {c[1]}: {c[0]:.3f} ms")
    return cands[0][1], cands[0][2], cands[0][3]


def quality(out, ref):
    o, r = out.float().flatten(), ref.float().flatten()
    cos = float(torch.nn.functional.cosine_similarity(o, r, dim=0))
    rel = float((o - r).norm() / r.norm())
    return cos, rel


def dense_flops(L):
    return 4.0 * B * HQ * D * (L * (L + 1) / 2)


def psa_fixed(q, k, v, M, cfg):
    """The attention kernel alone on level map ``M``, with the pipeline's index list (level-1 runs included)."""
    from paddlemix_psa.kernels.attn_fwd import launch_config, run_blocks_for
    from paddlemix_psa.kernels.select import psa_build_lut

    levels = tuple(p for p in (2, 4, 8) if bool((M == p).any()))
    Lq, Lk = q.shape[2], k.shape[2]
    kp = {p: torch.empty((B, HKV, -(-Lk // p), D), device="cuda", dtype=k.dtype) for p in levels}
    vp = {p: torch.empty_like(kp[p]) for p in levels}
    psa_pool_kv(k, v, kp, vp)
    block_n = launch_config(D, QB, KB, "bfloat16", cfg)["block_n"]
    lut = torch.empty(M.shape, device="cuda", dtype=torch.int32)
    cnt = torch.empty(M.shape[:3] + (4,), device="cuda", dtype=torch.int32)
    runs = torch.empty(M.shape[:3], device="cuda", dtype=torch.int32)
    psa_build_lut(M, lut, cnt, Lq=Lq, Lk=Lk, query_block=QB, key_block=KB, causal=True, runs=runs,
                  run_blocks=run_blocks_for(block_n, KB))
    run_share = float(runs.sum()) * run_blocks_for(block_n, KB) / max(1.0, float(cnt[..., 0].sum()))
    out = torch.full_like(q, float("nan"))

    def fn():
        psa_attn_fwd(q, k, v, kp, vp, lut, cnt, out, query_block=QB, key_block=KB, causal=True,
                     levels=(1,) + levels, runs=runs, config=cfg)
        return out
    return fn, out, run_share


def dense_baseline(q, k, v, L, args, results, row_name="dense"):
    """Time the dense baseline (the backend the first length picked) on these inputs and record its row;
    returns (its output, the reference of every other row; its ms; dense causal FLOPs)."""
    name, dense_fn, args.dense_backend = pick_dense(q, k, v, only=args.dense_backend)
    ref = dense_fn().clone()
    dense_ms = bench_ms(dense_fn)
    F = dense_flops(L)
    row = dict(L=L, row=row_name, impl=name, ms=dense_ms, ratio=1.0, tflops=F / dense_ms / 1e9, density=1.0,
               cos=1.0, rel_l2=0.0, est_share=None)
    results.append(row)
    print_row(row)
    return ref, dense_ms, F


def run_length(L, args, results, cfg):
    print(f"\n=== L = {L} ===", flush=True)
    q, k, v = synthetic_qkv(L, seed=L)
    ref, dense_ms, F = dense_baseline(q, k, v, L, args, results)
    fa2_ms = None
    if args.dense_backend[0] != "FLASH_ATTENTION":  # FlashAttention-2 (torch's flash backend) for context
        try:
            fa2_name, fa2_fn, _ = pick_dense(q, k, v, only=("FLASH_ATTENTION", True))
            fa2_ms = bench_ms(fa2_fn)
            cos, rel = quality(fa2_fn(), ref)
            row = dict(L=L, row="dense-fa2", impl=fa2_name, ms=fa2_ms, ratio=dense_ms / fa2_ms,
                       tflops=F / fa2_ms / 1e9, density=1.0, cos=cos, rel_l2=rel, est_share=None)
            results.append(row)
            print_row(row)
        except Exception:
            traceback.print_exc()
    args.fa2_ms = fa2_ms
    try:
        from triton_dense import dense_causal_attention
        tout = torch.full_like(q, float("nan"))

        def tdense():
            return dense_causal_attention(q, k, v, tout, **TRITON_DENSE_CFG)
        tdense()
        cos, rel = quality(tout, ref)
        ms = bench_ms(tdense)
        row = dict(L=L, row="triton-dense", impl="triton_dense.py (TMA)", ms=ms, ratio=dense_ms / ms,
                   tflops=F / ms / 1e9, density=1.0, cos=cos, rel_l2=rel, est_share=None,
                   ratio_fa2=None if fa2_ms is None else fa2_ms / ms)
        results.append(row)
        print_row(row)
        del tout
    except Exception:
        traceback.print_exc()
    for dens in args.densities:
        try:
            M = T.structured_level_map(B, HQ, L, L, QB, KB, dens, seed=1)
            md = T.density(M, Lq=L, Lk=L, query_block=QB, key_block=KB)
            fn, out, run_share = psa_fixed(q, k, v, M, cfg)
            fn()
            assert not torch.isnan(out).any(), "NaN in the PSA output"
            cos, rel = quality(out, ref)
            ms = bench_ms(fn)
            row = dict(L=L, row=f"psa@{dens:g}", impl=f"psa_attn_fwd (runs {100 * run_share:.0f}% of L1)", ms=ms,
                       ratio=dense_ms / ms, tflops=md * F / ms / 1e9, density=md, cos=cos, rel_l2=rel,
                       est_share=None, level1_run_share=run_share,
                       ratio_fa2=None if args.fa2_ms is None else args.fa2_ms / ms)
            results.append(row)
            print_row(row)
            del M, fn, out
        except Exception:
            traceback.print_exc()
    if not args.no_full:
        try:
            run_full(q, k, v, L, ref, dense_ms, F, results, args)
        except Exception:
            traceback.print_exc()
            results.append(dict(L=L, row="psa-full", impl="not run (see the traceback in the log)", ms=None))
    del q, k, v, ref
    torch.cuda.empty_cache()
    if not args.no_full and "paper" in args.full_configs:
        try:
            run_sparse(L, args, results)
        except Exception:
            traceback.print_exc()
            results.append(dict(L=L, row="psa-full:paper@sparse", impl="not run (see the traceback in the log)",
                                ms=None))
        torch.cuda.empty_cache()


def run_sparse(L, args, results):
    """The paper preset (and the original) where they skip about 90% of the work: inputs whose attention is
    concentrated (``synthetic.SPARSE_SETTINGS``), the issue's "sparsity >= 0.9" operating point. Rows get the
    suffix ``@sparse``; their ratios are to cuDNN timed on these inputs."""
    from paddlemix_psa.synthetic import SPARSE_SETTINGS

    q, k, v = synthetic_qkv(L, seed=L, **SPARSE_SETTINGS)
    ref, dense_ms, F = dense_baseline(q, k, v, L, args, results, row_name="dense@sparse")
    run_full(q, k, v, L, ref, dense_ms, F, results, args, configs=("paper",), tag="@sparse")
    del q, k, v, ref


#: triton-dense launch config: the best of the H200 sweep (benchmarks/NOTES-attn.md)
TRITON_DENSE_CFG = dict(block_m=128, block_n=64, num_warps=4, num_stages=2)


def _full_configs():
    from paddlemix_psa.config import AttentionConfig

    out = {}
    for name in ("default", "paper"):
        c = AttentionConfig.preset(name)
        out[name] = dict(query_block=c.query_block, key_block=c.key_block, mask_mode=c.mask_mode,
                         mask_ratios=dict(c.mask_ratios), xattn_stride=c.xattn_stride,
                         dense_tail_tokens=c.dense_tail_tokens, force_sink=c.force_sink, sim_cap=c.sim_cap,
                         sim_thresholds=tuple(c.sim_thresholds), gqa_mask=c.gqa_mask)
    return out


#: full-pipeline configurations: the default AttentionConfig and the paper preset
FULL_CONFIGS = _full_configs()


def _graph_ms(fn):
    """Median replay time of ``fn`` captured in a CUDA graph (the forward has no host synchronisation)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return bench_ms(graph.replay), graph


def run_full(q, k, v, L, ref, dense_ms, F, results, args, configs=None, tag=""):
    from paddlemix_psa.kernels import pipeline
    from paddlemix_psa.kernels.geometry import call_geometry

    def alloc(shape, dt):
        return torch.empty(tuple(shape), device="cuda", dtype=getattr(torch, dt))

    for name in configs or args.full_configs:
        plan_kw = FULL_CONFIGS[name]

        def full():
            return pipeline.psa_forward_kernels(q, k, v, alloc=alloc, attn_config=args.cfg or None, **plan_kw)

        # what psa_forward_kernels plans: levels and the index list, written by the selection. The list is the
        # plan's output (the attention's input), allocated here so that "plan scratch" stays the plan's scratch
        g = call_geometry(q, k, v, layout="BHSD", query_block=plan_kw["query_block"], key_block=plan_kw["key_block"],
                          causal=True, gqa_mask=plan_kw["gqa_mask"])
        index = pipeline.index_list_buffers(g, alloc, args.cfg or None)

        def plan(index=index):
            return pipeline.psa_level_map_kernels(q, k, alloc=alloc, index_list=index, **plan_kw)

        out, M, lut, cnt = full()
        assert not torch.isnan(out).any(), "NaN in the PSA output"
        cos, rel = quality(out, ref)
        md = T.density(M, Lq=L, Lk=L, query_block=plan_kw["query_block"], key_block=plan_kw["key_block"])
        hist = {p: float((M == p).float().mean()) for p in (0, 1, 2, 4, 8)}
        del out, M, lut, cnt
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        plan()
        torch.cuda.synchronize()
        scratch = torch.cuda.max_memory_allocated() - base
        ms = bench_ms(full)
        plan_ms = bench_ms(plan)
        marks = []

        def mark(stage):
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            marks.append((stage, ev))

        start = torch.cuda.Event(enable_timing=True)
        start.record()
        pipeline.psa_forward_kernels(q, k, v, alloc=alloc, attn_config=args.cfg or None, on_stage=mark, **plan_kw)
        torch.cuda.synchronize()
        prev, split = start, {}
        for stage, ev in marks:  # a chunked plan marks its stages once per chunk: sum them per name
            split[stage] = split.get(stage, 0.0) + prev.elapsed_time(ev)
            prev = ev
        try:
            graph_ms, graph = _graph_ms(full)
            del graph
        except Exception as e:  # report, never hide: a capture failure is a finding
            print(f"  full-PSA [{name}{tag}] CUDA graph capture failed: {type(e).__name__}: {str(e)[:160]}")
            graph_ms = None
        print(f"  full-PSA [{name}{tag}] plan {plan_ms:.3f} ms of {ms:.3f} ms; graph replay "
              f"{'-' if graph_ms is None else f'{graph_ms:.3f}'} ms; plan scratch {scratch / 2**20:.0f} MiB; "
              f"stages {', '.join(f'{k} {v:.3f}' for k, v in split.items())}", flush=True)
        row = dict(L=L, row=f"psa-full:{name}{tag}", impl="pipeline", ms=ms, ratio=dense_ms / ms,
                   tflops=md * F / ms / 1e9, density=md, cos=cos, rel_l2=rel, est_share=plan_ms / ms,
                   est_ms=plan_ms, est_vs_dense=plan_ms / dense_ms, level_hist=hist, stages_ms=split,
                   graph_ms=graph_ms, plan_scratch_bytes=scratch,
                   ratio_fa2=None if args.fa2_ms is None else args.fa2_ms / ms)
        results.append(row)
        print_row(row)
    if args.original_psa is not None:
        run_original(q, k, v, L, ref, dense_ms, F, results, args, tag)


def run_original(q, k, v, L, ref, dense_ms, F, results, args, tag=""):
    fn = args.original_psa.make_fn(q, k, v)  # repeats K/V to the query heads once, outside the timed region
    out, sparsity, density = fn()
    cos, rel = quality(out, ref)
    del out
    ms = bench_ms(fn)
    del fn
    row = dict(L=L, row=f"original{tag}", impl=f"ziplab PSA {args.original_psa.revision[:7]} (paper cfg)", ms=ms,
               ratio=dense_ms / ms, tflops=density * F / ms / 1e9, density=density, sparsity=sparsity, cos=cos,
               rel_l2=rel, est_share=None, ratio_fa2=None if args.fa2_ms is None else args.fa2_ms / ms)
    results.append(row)
    print_row(row)


def print_row(r):
    es = "" if r.get("est_share") is None else f"{100 * r['est_share']:.1f}%"
    print(f"{r['L']:>7} {r['row']:<10} {r['impl'][:26]:<26} {r['ms']:>9.3f} {r['ratio']:>6.2f}x "
          f"{r['tflops']:>7.1f} {r['density']:>7.3f} {r['cos']:>8.5f} {r['rel_l2']:>8.2e} {es:>6}", flush=True)


#: the launch-config search space of the H200 sweeps (sm_90, D=128, key_block=32, bf16; the measured variants
#: that needed kernel options, e.g. 64-row programs or a register cap, lost and were removed: NOTES-attn.md)
SWEEP_SPACE = {
    "default": {},
    "run-stages-2": dict(run_stages=2),
    "bn64-w8": dict(block_n=64),
    "bn64-w4": dict(block_n=64, num_warps=4),
    "bn64-w4-np32": dict(block_n=64, num_warps=4, block_n_pooled=32),
    "gather-runs": dict(use_tma=False),
}


def sweep(L, args):
    """Launch-config sweep of the attention kernel at one length (density 1.0 and 0.1 maps)."""
    q, k, v = synthetic_qkv(L, seed=L)
    res = []
    for dens in (1.0, 0.1):
        M = T.structured_level_map(B, HQ, L, L, QB, KB, dens, seed=1)
        for name, c in SWEEP_SPACE.items():
            try:
                fn, out, _ = psa_fixed(q, k, v, M, c)
                ms = bench_ms(fn, rep_ms=150)
                res.append(dict(L=L, density=dens, ms=ms, name=name, **c))
                print(f"  sweep L={L} d={dens} {name} {c}: {ms:.3f} ms", flush=True)
            except Exception as e:
                print(f"  sweep L={L} d={dens} {name} {c}: FAILED {type(e).__name__}: {str(e)[:120]}", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="8k,16k,32k,64k,128k")
    ap.add_argument("--densities", default="1.0,0.5,0.25,0.1")
    ap.add_argument("--no-full", action="store_true", help="skip the full-pipeline rows")
    ap.add_argument("--full-configs", default="default,paper",
                    help=f"full-pipeline configurations, from {sorted(FULL_CONFIGS)}")
    ap.add_argument("--original", default=None, metavar="PATH",
                    help="a ziplab/Pyramid-Sparse-Attention checkout: adds the `original` row")
    ap.add_argument("--sweep", default="", help=f"lengths for a launch-config sweep over {sorted(SWEEP_SPACE)}")
    ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results.json"))
    ap.add_argument("--md", default=os.path.join(ROOT, "benchmarks", "RESULTS.md"))
    args = ap.parse_args()
    args.densities = [float(x) for x in args.densities.split(",") if x]
    args.full_configs = [x for x in args.full_configs.split(",") if x]
    args.dense_backend = None
    args.original_psa = None
    if args.original:  # a wrong path or a missing dependency fails before anything is timed
        from original_psa import OriginalPSA, OriginalPSAError
        try:
            args.original_psa = OriginalPSA(args.original)
        except OriginalPSAError as e:
            ap.error(str(e))
    cfg = {}
    card = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "PYTHONPATH=src python3 benchmarks/bench_attention.py " + " ".join(sys.argv[1:])
    commit = os.environ.get("PSA_BENCH_COMMIT")  # the device copy of the tree carries no .git
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip() or "uncommitted"
        except Exception:
            commit = "unknown"
    print(f"card: {card}; torch {torch.__version__}; triton {triton.__version__}; {date}; cfg {cfg or 'default'}")
    sweeps = []
    for s in [x for x in args.sweep.split(",") if x]:
        sweeps += sweep(parse_len(s), args)
    args.cfg = cfg
    results = []
    print(f"{'L':>7} {'row':<10} {'impl':<26} {'ms':>9} {'ratio':>7} {'TFLOP/s':>7} {'density':>7} {'cos':>8} "
          f"{'relL2':>8} {'plan%':>6}")
    blob = dict(card=card, date=date, command=cmd, commit=commit, torch=torch.__version__,
                triton=triton.__version__, shapes=dict(B=B, Hq=HQ, Hkv=HKV, D=D, dtype="bfloat16", causal=True,
                                                        query_block=QB, key_block=KB),
                launch_cfg=cfg or "default", rows=results, sweep=sweeps)
    for s in [x for x in args.lengths.split(",") if x]:
        try:
            run_length(parse_len(s), args, results, cfg)
        except Exception:
            traceback.print_exc()
        with open(args.json, "w") as f:  # after every length: a run cut short keeps what it measured
            json.dump(blob, f, indent=1)
    lines = [f"\n## {date} — {card}\n", f"`{cmd}` (commit {commit}, torch {torch.__version__}, triton "
             f"{triton.__version__}); B={B}, H_q={HQ}, H_kv={HKV}, D={D}, bf16, causal, query_block={QB}, "
             f"key_block={KB}\n",
             "| L | row | impl | median ms | dense/row | FA2/row | TFLOP/s (work done) | density | cos vs dense "
             "| rel-L2 vs dense | plan/dense | graph ms | plan scratch MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("ms") is None:
            lines.append(f"| {r['L']} | {r['row']} | {r['impl']} | — | — | — | — | — | — | — | — | — | — |")
            continue
        f2 = "" if r.get("ratio_fa2") is None else f"{r['ratio_fa2']:.2f}x"
        ev = "" if r.get("est_vs_dense") is None else f"{100 * r['est_vs_dense']:.1f}%"
        gm = "" if r.get("graph_ms") is None else f"{r['graph_ms']:.3f}"
        sc = "" if r.get("plan_scratch_bytes") is None else f"{r['plan_scratch_bytes'] / 2**20:.0f}"
        lines.append(f"| {r['L']} | {r['row']} | {r['impl']} | {r['ms']:.3f} | {r['ratio']:.2f}x | {f2} | "
                     f"{r['tflops']:.1f} | {r['density']:.3f} | {r['cos']:.5f} | {r['rel_l2']:.2e} | {ev} | {gm} | "
                     f"{sc} |")
    with open(args.md, "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
