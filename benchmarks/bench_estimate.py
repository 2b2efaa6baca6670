"""Mask-building cost: XAttention estimator + similarity cap + level selection + LUT vs dense attention.

Runs on a CUDA machine with torch (kernels are framework-neutral; torch supplies tensors, driver and stream).
Shapes: Qwen2.5-VL-7B LLM (H_q = 28, H_kv = 4, D = 128), bf16, causal prefill, defaults query_block 128,
key_block 32, stride 16 (and the paper preset 128/128/8). Prints one table; the issue target is
(estimator + mask) <= 10 % of dense attention at 32k. The table times both estimator methods (``est_1pass``:
single GEMM pass + finalize, the pipeline default; ``est_2pass``: GEMM twice); ``mask_total`` uses ``--method``.
The sweep times the single-pass kernel's tiles (block_a, block_c, warps, stages, flatten) and a few two-pass tiles.

    PYTHONPATH=src python3 benchmarks/bench_estimate.py [--lengths 8192 32768 131072] [--chunk 4096] [--no-sweep]
        [--method single_pass|two_pass] [--sweep-method single_pass|two_pass|both]

``--compare-tma`` prints only the single-pass estimator's table at 32k and 128k (``--lengths`` overrides): pass A
on its pointer path (``use_tma=False``, what sm_80/86/89 run) against its TMA path (sm_90) at the default tiles
and at every point of ``TMA_SPACE``, with the GEMM rate and its share of ``--roofline`` (TFLOP/s of a plain bf16
GEMM on the card; 790 measured on the H200). About two minutes on an H200:

    PYTHONPATH=src python3 benchmarks/bench_estimate.py --compare-tma
"""
from __future__ import annotations

import argparse
import itertools
import datetime
import os
import subprocess
import sys

_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_root, "src"))

DEV = "cuda"
README = {1: (0, .6), 2: (.6, .8), 4: (.8, .9), 8: (.9, .9), 0: (.9, 1)}
#: two-pass tiles: (block_a, block_c, num_warps, num_stages)
TILES = [(None, None, None, None), (128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3),
         (64, 64, 4, 2), (64, 128, 4, 2), (128, 32, 4, 3), (32, 64, 4, 2), (16, 64, 4, 2)]
#: single-pass pass-A tiles: (block_a, block_c, num_warps, num_stages, flatten, block_k)
TILES_1PASS = [(None, None, None, None, False, None), (None, None, None, None, True, None),
               (128, 64, 8, 2, False, None), (128, 64, 8, 3, False, None), (128, 64, 8, 3, True, None),
               (128, 64, 8, 4, False, 64), (128, 64, 8, 6, False, 64), (128, 64, 8, 4, True, 64),
               (128, 128, 8, 2, False, None), (128, 128, 8, 3, False, None), (128, 128, 8, 3, True, None),
               (128, 128, 8, 3, False, 64), (128, 128, 8, 4, False, 64), (128, 128, 8, 5, False, 64),
               (128, 128, 8, 4, True, 64), (128, 256, 8, 3, False, 64), (128, 256, 16, 3, False, 64),
               (256, 64, 8, 2, False, None), (256, 64, 8, 4, False, 64), (256, 128, 16, 3, False, 64),
               (128, 64, 4, 3, False, None), (128, 128, 4, 3, False, 64), (64, 128, 4, 3, False, None),
               (64, 128, 4, 4, False, 64), (64, 64, 4, 3, False, None), (32, 64, 4, 3, False, None),
               (16, 64, 4, 3, False, None)]
#: sm_90 search space of pass A on its TMA path: (block_a, block_c, block_k, num_stages, num_warps, flatten). Every
#: point fits the 227 KiB of shared memory (bf16, D 128; tests/cpu/test_compile_estimate.py with
#: PSA_COMPILE_ALL=1 builds them all); 98 KiB points (128 x 128 x 64 x 3, 64 x 128 x 64 x 4, 128 x 64 x 64 x 4)
#: leave room for two resident CTAs per SM. flatten fuses the key-tile loop with the S-chunk loop, so the pipeline
#: does not drain at each key tile (it costs more shared memory: 128 x 256 x 64 x 4 stages no longer fits).
TMA_SPACE = [(128, 256, 64, 3, 8, False), (128, 256, 64, 4, 8, False), (128, 256, 128, 2, 8, False),
             (128, 128, 64, 3, 8, False), (128, 128, 64, 4, 8, False), (128, 128, 64, 5, 8, False),
             (128, 128, 128, 2, 8, False), (128, 128, 128, 3, 8, False), (128, 128, 64, 3, 4, False),
             (128, 64, 64, 4, 4, False), (128, 64, 128, 3, 4, False), (64, 128, 64, 4, 4, False),
             (64, 256, 64, 4, 8, False), (256, 128, 64, 3, 8, False), (256, 128, 128, 2, 8, False),
             (256, 64, 64, 4, 8, False),
             (128, 256, 64, 3, 8, True), (128, 128, 64, 3, 8, True), (128, 128, 64, 4, 8, True),
             (128, 128, 128, 2, 8, True), (256, 128, 64, 3, 8, True), (128, 64, 64, 4, 4, True)]


def _scratch_allocator(pool: dict):
    """An ``alloc(shape, dtype)`` that creates each buffer once per (request position, shape) and reuses it, so
    scratch is allocated outside the timed region after the warm-up call. Keyed by position too: two buffers of
    one shape (tmax, tsum) must never alias."""
    import torch

    position = itertools.count()

    def alloc(shp, dt):
        key = (next(position), tuple(shp), dt)
        if key not in pool:
            pool[key] = torch.empty(key[1], device=DEV, dtype=getattr(torch, dt))
        return pool[key]
    return alloc


def _time(fn, n=10):
    import torch

    fn()
    torch.cuda.synchronize()
    cache = torch.empty(256 << 20, dtype=torch.int8, device=DEV)  # cold L2 between runs
    ts = []
    for _ in range(n):
        cache.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2], ts[len(ts) // 5], ts[(4 * len(ts)) // 5]


def _dense(q, k, v):
    """Dense SDPA baseline. Lq < Lk (a chunk at the end of the context) sees nearly every key under bottom-right
    causality, so it is timed non-causal (torch's is_causal is top-left aligned)."""
    import torch.nn.functional as F

    G = q.shape[1] // k.shape[1]
    causal = q.shape[2] == k.shape[2]
    kr, vr = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)  # expanded outside the timed region
    return lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=causal)


def _estimator_flop(Lq, Lk, S, D, Hq):
    """Causal GEMM work of the estimator: sum over reshaped queries of visible reshaped keys x S*D x 2, all heads."""
    na, nc = -(-Lq // S), -(-Lk // S)
    vis = sum(min(nc, (a * S + S - 1 + Lk - Lq) // S + 1) for a in range(na))
    return 2.0 * vis * S * D * Hq


class _NoLaunch:
    """Stands in for a kernel whose launches are skipped (times pass A without the finalize pass)."""

    def __getitem__(self, grid):
        return lambda *args, **meta: None


def compare_tma(lengths, roofline, bq, bk, S):
    """One table: single-pass estimator (pass A + finalize, and pass A alone), pointer vs TMA path, TMA tiles."""
    import torch

    from paddlemix_psa.kernels import estimate

    Hq, Hkv, D = 28, 4, 128
    print(f"# single-pass estimator, Hq={Hq} Hkv={Hkv} D={D} bf16 causal, {bq}/{bk}/{S}; median of 10 ms, cold L2; "
          f"TFLOP/s and roofline share ({roofline:.0f} TFLOP/s) from the pass A time")
    print(f"{'L':>7} {'path':>7} {'block_a':>7} {'block_c':>7} {'block_k':>7} {'stages':>6} {'warps':>5} "
          f"{'flat':>4} {'total_ms':>9} {'passA_ms':>9} {'TFLOP/s':>8} {'roofline':>8}")
    plan = [("pointer", dict(use_tma=False)), ("tma", dict())]
    plan += [("tma", dict(block_a=ba, block_c=bc, block_k=bkk, num_stages=ns, num_warps=nw, flatten=fl))
             for ba, bc, bkk, ns, nw, fl in TMA_SPACE]
    for L in lengths:
        g = torch.Generator(device=DEV).manual_seed(L)
        q = torch.randn((1, Hq, L, D), device=DEV, generator=g, dtype=torch.bfloat16)
        k = torch.randn((1, Hkv, L, D), device=DEV, generator=g, dtype=torch.bfloat16)
        scores = torch.empty((1, Hq, -(-L // bq), -(-L // bk)), device=DEV, dtype=torch.float32)
        flop = _estimator_flop(L, L, S, D, Hq)
        pool = {}

        def scratch_alloc():
            return _scratch_allocator(pool)

        for path, kw in plan:
            def est(kw=kw):
                estimate.psa_estimate_scores(q, k, scores, query_block=bq, key_block=bk, stride=S, causal=True,
                                             scale=None, layout="BHSD", method="single_pass",
                                             scratch=scratch_alloc(), **kw)
            cfg = [kw.get(n) or "def" for n in ("block_a", "block_c", "block_k", "num_stages", "num_warps")]
            cfg.append("yes" if kw.get("flatten") else "no")
            try:
                total = _time(est)[0]
                fin, estimate._xattn_finalize_kernel = estimate._xattn_finalize_kernel, _NoLaunch()
                try:
                    pass_a = _time(est)[0]
                finally:
                    estimate._xattn_finalize_kernel = fin
            except Exception as e:  # noqa: BLE001 - report and continue the table
                print(f"{L:>7} {path:>7} " + " ".join(f"{c:>7}" for c in cfg) + f"  failed: {type(e).__name__}: "
                      f"{str(e)[:80]}", flush=True)
                continue
            rate = flop / pass_a / 1e9
            print(f"{L:>7} {path:>7} {cfg[0]:>7} {cfg[1]:>7} {cfg[2]:>7} {cfg[3]:>6} {cfg[4]:>5} {cfg[5]:>4} "
                  f"{total:>9.3f} {pass_a:>9.3f} {rate:>8.0f} {rate / roofline:>8.0%}", flush=True)
        del q, k, scores, pool
        torch.cuda.empty_cache()


def main():
    import torch
    import triton

    from paddlemix_psa.kernels.estimate import psa_estimate_scores
    from paddlemix_psa.kernels.select import psa_build_lut, psa_select_levels
    from paddlemix_psa.kernels.similarity import psa_similarity_cap

    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=None,
                    help="sequence lengths (default 8192 32768 131072; with --compare-tma 32768 131072)")
    ap.add_argument("--compare-tma", action="store_true",
                    help="only the pointer-vs-TMA table of the single-pass estimator (TMA_SPACE tiles)")
    ap.add_argument("--roofline", type=float, default=790.0,
                    help="plain bf16 GEMM TFLOP/s of the card, for the --compare-tma roofline share")
    ap.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the estimator tile sweep")
    ap.add_argument("--method", default="single_pass", choices=["single_pass", "two_pass"],
                    help="estimator used in mask_total (the pipeline uses single_pass)")
    ap.add_argument("--sweep-method", default="single_pass", choices=["single_pass", "two_pass", "both"],
                    help="which estimator's tiles the sweep times")
    ap.add_argument("--geometry", default="128/32/16", help="query_block/key_block/stride")
    ap.add_argument("--chunk", type=int, default=4096,
                    help="also time a chunk of this many queries against the longest context (0: off)")
    args = ap.parse_args()
    bq, bk, S = (int(x) for x in args.geometry.split("/"))
    if args.compare_tma:
        print(f"# {torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__} "
              f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
        compare_tma(args.lengths or [32768, 131072], args.roofline, bq, bk, S)
        return
    args.lengths = args.lengths or [8192, 32768, 131072]
    Hq, Hkv, D = 28, 4, 128
    try:
        commit = subprocess.run(["git", "-C", _root, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__} commit {commit} "
          f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
    print(f"# Hq={Hq} Hkv={Hkv} D={D} bf16 causal, query_block={bq} key_block={bk} stride={S}; median of 10 ms, "
          f"cold L2; share = mask_total / dense")
    print(f"# repro: PYTHONPATH=src python3 benchmarks/bench_estimate.py --lengths {' '.join(map(str, args.lengths))}"
          f" --geometry {args.geometry} --chunk {args.chunk} --method {args.method} --sweep-method {args.sweep_method}"
          f"{'' if args.sweep else ' --no-sweep'}")
    print(f"# mask_total uses the {args.method} estimator; single-pass scratch (torch.empty, cached, untimed) "
          f"is fp32 part [B, Hq, nq*bq/S, nk] + tmax/tsum")
    hdr = f"{'Lq/Lk':>13} {'est_1pass':>10} {'est_2pass':>10} {'sim_cap':>9} {'select':>9} {'lut':>8} " \
          f"{'mask_total':>11} {'dense':>9} {'share':>7} {'est1/dense':>10} {'density':>8}"
    print(hdr)
    sweep_rows = []
    pairs = [(L, L) for L in args.lengths]
    if args.chunk:
        pairs.append((args.chunk, max(args.lengths)))
    for Lq, L in pairs:
        g = torch.Generator(device=DEV).manual_seed(L)
        q = torch.randn((1, Hq, Lq, D), device=DEV, generator=g, dtype=torch.bfloat16)
        k = torch.randn((1, Hkv, L, D), device=DEV, generator=g, dtype=torch.bfloat16)
        v = torch.randn((1, Hkv, L, D), device=DEV, generator=g, dtype=torch.bfloat16)
        nq, nk = -(-Lq // bq), -(-L // bk)
        scores = torch.empty((1, Hq, nq, nk), device=DEV, dtype=torch.float32)
        cap = torch.empty((1, Hkv, nk), device=DEV, dtype=torch.int8)
        M = torch.empty((1, Hq, nq, nk), device=DEV, dtype=torch.int8)
        lut = torch.empty((1, Hq, nq, nk), device=DEV, dtype=torch.int32)
        counts = torch.empty((1, Hq, nq, 4), device=DEV, dtype=torch.int32)
        geom = dict(Lq=Lq, Lk=L, query_block=bq, key_block=bk, causal=True)

        pool = {}

        def scratch_alloc():
            return _scratch_allocator(pool)

        def est(method=args.method, **tiles):
            psa_estimate_scores(q, k, scores, query_block=bq, key_block=bk, stride=S, causal=True, scale=None,
                                layout="BHSD", method=method,
                                scratch=scratch_alloc() if method == "single_pass" else None, **tiles)

        def est1():
            est("single_pass")

        def est2():
            est("two_pass")

        def simc():
            psa_similarity_cap(k, cap, key_block=bk, thresholds=(0.75, 0.7, 0.7), layout="BHSD")

        T = 512 if Lq == L else 0  # a chunk at the prompt end would be all tail rows (dense) with T > 0

        def sel():
            psa_select_levels(scores, M, **geom, mode="energybound", ends=README, dense_tail_tokens=T,
                              force_sink=True, sim_cap=cap, gqa_group=Hq // Hkv)

        def lt():
            psa_build_lut(M, lut, counts, **geom)

        def total():
            est()
            simc()
            sel()
            lt()

        t = {name: _time(fn) for name, fn in (("est1", est1), ("est2", est2), ("sim", simc), ("sel", sel),
                                               ("lut", lt), ("total", total))}
        t["dense"] = _time(_dense(q, k, v), n=5)
        # measured density of the executed map (valid-pair weighted)
        Mi = M.to(torch.int32)
        w = torch.where(Mi > 0, 1.0 / Mi.clamp(min=1).float(), torch.zeros((), device=DEV))
        i = torch.arange(nq, device=DEV)
        J = (torch.clamp((i + 1) * bq, max=Lq) - 1 + L - Lq) // bk
        valid = torch.arange(nk, device=DEV)[None, :] <= J[:, None]
        dens = (w * valid).sum().item() / (valid.sum().item() * Hq)

        def f(x):
            return f"{x[0]:.3f}"

        name = f"{Lq}/{L}"
        print(f"{name:>13} {f(t['est1']):>10} {f(t['est2']):>10} {f(t['sim']):>9} {f(t['sel']):>9} {f(t['lut']):>8} "
              f"{f(t['total']):>11} {f(t['dense']):>9} {t['total'][0] / t['dense'][0]:>7.1%} "
              f"{t['est1'][0] / t['dense'][0]:>10.1%} {dens:>8.3f}", flush=True)
        if args.sweep:
            flop = _estimator_flop(Lq, L, S, D, Hq)
            plan = []
            if args.sweep_method in ("single_pass", "both"):
                plan += [("single_pass", *t) for t in TILES_1PASS]
            if args.sweep_method in ("two_pass", "both"):
                plan += [("two_pass", ba, bc, nw, ns, False, None) for ba, bc, nw, ns in TILES]
            for meth, ba, bc, nw, ns, fl, bkk in plan:
                kw = dict(block_a=ba, block_c=bc, num_warps=nw, num_stages=ns)
                if meth == "single_pass":
                    kw.update(flatten=fl, block_k=bkk)
                try:
                    tt = _time(lambda: est(meth, **kw))
                    gemms = 1 if meth == "single_pass" else 2
                    sweep_rows.append((f"{Lq}/{L}", meth, ba, bc, nw, ns, fl, bkk, f"{tt[0]:.3f}",
                                       f"{gemms * flop / tt[0] / 1e9:.0f} TFLOP/s"))
                except Exception as e:  # noqa: BLE001 - report and continue the sweep
                    sweep_rows.append((f"{Lq}/{L}", meth, ba, bc, nw, ns, fl, bkk,
                                       f"failed: {type(e).__name__}: {str(e)[:80]}"))
        del q, k, v, scores, M, lut, counts, pool
        torch.cuda.empty_cache()
    if sweep_rows:
        print("\n# estimator tile sweep (method, block_a reshaped queries x block_c reshaped keys, warps, stages, "
              "flatten, block_k): ms (GEMM rate counts each GEMM pass, incl. the finalize time for single_pass)")
        for row in sweep_rows:
            print("  ", *row)


if __name__ == "__main__":
    main()
