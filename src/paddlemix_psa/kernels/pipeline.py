"""Framework-neutral PSA forward: estimate -> select -> lut -> pool -> attend (docs/ALGORITHM.md §0 steps 1-5).

In :func:`psa_forward_kernels` the selection writes the index list itself (select and lut fused), for the tile
width of the attention launch config, which is fixed once per call before the plan (:func:`index_list_buffers`).

Every buffer comes from the caller's ``alloc(shape, dtype_name)``; nothing here knows the framework. No host
synchronisation: the pooled levels are those the configuration *can* produce (non-empty mask intervals, plus
the finer pooled levels the similarity cap can demote to), not a device read of the map.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._tensorlike import narrow, shape
from .attn_fwd import launch_config, psa_attn_fwd, run_blocks_for
from .estimate import _pick_block_a, psa_estimate_scores
from .geometry import call_geometry
from .pool import psa_pool_kv
from .select import psa_build_lut, psa_select_levels
from .similarity import psa_similarity_cap

__all__ = ["psa_forward_kernels", "psa_level_map_kernels", "psa_attention_from_map", "levels_possible",
           "DEFAULT_MASK_RATIOS"]

DEFAULT_MASK_RATIOS = {1: (0.0, 0.6), 2: (0.6, 0.8), 4: (0.8, 0.9), 8: (0.9, 0.9), 0: (0.9, 1.0)}


@triton.jit
def _group_mean_kernel(S, Out, NQK, G: tl.constexpr, BLOCK: tl.constexpr):
    # scores [B, Hq, nq, nk] contiguous -> [B, Hkv, nq, nk]: mean over the G heads of each KV group (§6.3)
    bk = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < NQK
    acc = tl.zeros([BLOCK], tl.float32)
    for g in tl.static_range(G):
        acc += tl.load(S + (bk * G + g) * NQK + offs, mask=m, other=0.0)
    tl.store(Out + bk * NQK + offs, acc / G, mask=m)


def levels_possible(mask_ratios, sim_cap: bool) -> tuple:
    """Pooled levels the selection can emit: non-empty intervals, and with the cap every finer pooled level."""
    pooled = [p for p in (2, 4, 8) if p in mask_ratios and mask_ratios[p][1] > mask_ratios[p][0]]
    if sim_cap and pooled:
        pooled = [p for p in (2, 4, 8) if p <= max(pooled)]
    return tuple(pooled)


def _record(geometry, q, k, v, **kw):
    # the call's geometry: read from q, k (, v) here once, or the caller's record checked against the arguments
    if geometry is None:
        return call_geometry(q, k, v, **kw)
    geometry.check(needs_v=v is not None, **kw)
    return geometry


def _noop(stage: str) -> None:
    pass


#: plan scratch budget (estimator scratch + scores of one chunk of query blocks); a longer plan is chunked
PLAN_SCRATCH_BYTES = 512 << 20


@triton.jit
def _zero_int8_kernel(Out, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Out + offs, tl.zeros([BLOCK], tl.int8), mask=offs < N)


def plan_chunks(B, Hq, Lq, Lk, *, query_block, key_block, stride, causal, budget=None) -> list:
    """Query-block ranges ``[i0, i1)`` planned together, so that the estimator scratch and scores of one range
    stay within ``budget`` bytes (default PLAN_SCRATCH_BYTES) whatever the head count. One range if it fits, if
    the attention is not causal, or if ``Lk - Lq`` is not a multiple of ``stride`` (see below)."""
    budget = PLAN_SCRATCH_BYTES if budget is None else budget
    nq, nk = -(-Lq // query_block), -(-Lk // key_block)
    # A chunk sees keys [0, q1 + off): positions stay those of the whole plan through bottom-right causal
    # alignment, and the estimator's stride groups of keys stay whole when off is a multiple of the stride
    # (plain prefill: off = 0); otherwise the last group of a chunk would be cut and its score would move.
    if not causal or (Lk - Lq) % stride:
        return [(0, nq)]
    # per query block: the estimator's fp32 partial scores (query_block / stride reshaped rows) plus the scores
    per_row = 4 * B * Hq * nk * (query_block // stride + 2)
    rows = max(1, int(budget // per_row))
    return [(i0, min(nq, i0 + rows)) for i0 in range(0, nq, rows)]


def psa_level_map_kernels(q, k, *, alloc, query_block=128, key_block=32, causal=True, scale=None, layout="BHSD",
                          mask_mode="energybound", mask_ratios=None, xattn_stride=16, dense_tail_tokens=512,
                          prompt_end=None, force_sink=True, sim_cap=True, sim_thresholds=(0.75, 0.70, 0.70),
                          gqa_mask="per_head", counters=None, on_stage=_noop, scratch_budget=None, geometry=None,
                          index_list=None):
    """Plan on the device: estimate -> (group mean) -> similarity cap -> select. Returns the int8 level map.

    Long plans run in chunks of query blocks (:func:`plan_chunks`): a chunk's queries see the keys up to its last
    row (bottom-right causal alignment keeps every position), so its scores and levels are those of the whole
    plan, and the scratch of a 128k call stays bounded. ``on_stage(name)`` is called after "estimate_ms" and
    "mask_ms" (the caller may synchronise and time); with several chunks, once per chunk and stage, so that a
    caller summing the laps per name attributes each stage correctly. ``geometry``: the
    call's :class:`~.geometry.CallGeometry` when the caller has it (else read from q, k here). ``index_list``:
    optional ``(lut, counts, runs, run_blocks)`` (shapes as :func:`select.psa_build_lut`'s): the selection also
    writes the map's index list, in the same program (the fused plan of :func:`psa_forward_kernels`).
    """
    mask_ratios = DEFAULT_MASK_RATIOS if mask_ratios is None else mask_ratios
    g = _record(geometry, q, k, None, layout=layout, query_block=query_block, key_block=key_block,
                causal=bool(causal), gqa_mask=gqa_mask)
    B, Hq, Hkv, Lq, Lk, G, Hm, nq, nk = g.B, g.Hq, g.Hkv, g.Lq, g.Lk, g.G, g.Hm, g.nq, g.nk
    cap = None
    level_map = alloc((B, Hm, nq, nk), "int8")
    chunks = plan_chunks(B, Hq, Lq, Lk, query_block=query_block, key_block=key_block, stride=xattn_stride,
                         causal=causal, budget=scratch_budget)
    # every chunk tiles its rows like the whole plan would, so the fp32 sums (and the levels) do not move
    block_a = _pick_block_a(nq * (query_block // xattn_stride), B * Hq, query_block // xattn_stride,
                            g.dtype, whole_blocks=False, stride=xattn_stride)
    if len(chunks) > 1:  # a chunk writes only its causally reachable columns: the rest stay 0
        n = B * Hm * nq * nk
        _zero_int8_kernel[(triton.cdiv(n, 4096),)](level_map, n, BLOCK=4096)
    for i0, i1 in chunks:
        q0, q1 = i0 * query_block, min(i1 * query_block, Lq)
        Lk_c = min(Lk, q1 + Lk - Lq) if causal else Lk
        nq_c, nk_c = i1 - i0, -(-Lk_c // key_block)
        q_c, k_c = g.seq_view(q, "q", q0, q1), g.seq_view(k, "k", 0, Lk_c)
        scores = alloc((B, Hq, nq_c, nk_c), "float32")
        # single-pass estimator: one strided GEMM + a finalize pass, fp32 scratch from the caller's allocator
        # (about query_block / stride times the size of ``scores``: estimate.estimate_scratch_shapes)
        psa_estimate_scores(q_c, k_c, scores, query_block=query_block, key_block=key_block, stride=xattn_stride,
                            causal=causal, scale=scale, layout=layout, scratch=alloc, block_a=block_a,
                            geometry=g.narrowed(q0, q1, Lk_c))
        if gqa_mask == "per_kv_group":
            grouped = alloc((B, Hkv, nq_c, nk_c), "float32")
            _group_mean_kernel[(triton.cdiv(nq_c * nk_c, 1024), B * Hkv)](scores, grouped, nq_c * nk_c, G=G,
                                                                           BLOCK=1024)
            scores = grouped
        on_stage("estimate_ms")
        if sim_cap and cap is None:
            cap = alloc((B, Hkv, nk), "int8")
            psa_similarity_cap(k, cap, key_block=key_block, thresholds=tuple(sim_thresholds), layout=layout,
                               geometry=g)
        out_map = narrow(narrow(level_map, 2, i0, i1), 3, 0, nk_c)
        psa_select_levels(scores, out_map, Lq=q1 - q0, Lk=Lk_c, query_block=query_block, key_block=key_block,
                          causal=causal, mode=mask_mode, ends=mask_ratios, dense_tail_tokens=dense_tail_tokens,
                          prompt_end=Lk if prompt_end is None else prompt_end, force_sink=force_sink,
                          sim_cap=None if cap is None else narrow(cap, 2, 0, nk_c),
                          gqa_group=G if gqa_mask == "per_head" else 1, counters=counters,
                          **_index_rows(index_list, i0, i1))
        on_stage("mask_ms")
    return level_map


def _index_rows(index_list, i0, i1) -> dict:
    # psa_select_levels' index-list outputs for query blocks [i0, i1) (whole rows: zero padding to nk)
    if index_list is None:
        return {}
    lut, counts, runs, run_blocks = index_list
    return dict(lut=narrow(lut, 2, i0, i1), counts=narrow(counts, 2, i0, i1), runs=narrow(runs, 2, i0, i1),
                run_blocks=run_blocks)


def index_list_buffers(geometry, alloc, attn_config=None) -> tuple:
    """The index list the fused plan writes for one call: ``(lut, counts, runs, run_blocks)``, ``run_blocks`` for
    the tile width of the call's attention launch config (:func:`attn_fwd.launch_config`)."""
    g = geometry
    run_blocks = run_blocks_for(launch_config(g.D, g.query_block, g.key_block, g.dtype, attn_config)["block_n"],
                                g.key_block)
    return (alloc((g.B, g.Hm, g.nq, g.nk), "int32"), alloc((g.B, g.Hm, g.nq, 4), "int32"),
            alloc((g.B, g.Hm, g.nq), "int32"), run_blocks)


def psa_attention_from_map(q, k, v, level_map, *, alloc, query_block=128, key_block=32, causal=True, scale=None,
                           layout="BHSD", gqa_mask="per_head", pooled_levels=(2, 4, 8), out=None, lse=None,
                           attn_config=None, on_stage=_noop, geometry=None, index_list=None):
    """Run on the device: index list -> pyramid K/V (``pooled_levels`` only) -> attention.

    Returns ``(out, lut, counts)``. ``attn_config``: optional launch overrides of
    :func:`attn_fwd.default_config` (``block_n``, ``num_warps``, ``use_tma``, ...).

    ``pooled_levels`` must include every pooled level present in ``level_map`` (a superset costs one pooling pass).
    ``on_stage`` is called after "pool_ms" (index list unless given, and pooling) and "attention_ms".
    ``geometry``: the call's :class:`~.geometry.CallGeometry` (built with v) when the caller has it (else read
    from q, k, v here).
    ``index_list``: ``(lut, counts, runs)`` already built from ``level_map`` for this ``attn_config`` (by the fused
    plan), else built here.
    """
    g = _record(geometry, q, k, v, layout=layout, query_block=query_block, key_block=key_block,
                causal=bool(causal), gqa_mask=gqa_mask)
    B, Hkv, Lq, Lk, D, dt = g.B, g.Hkv, g.Lq, g.Lk, g.D, g.dtype
    launch = launch_config(D, query_block, key_block, dt, attn_config)
    if index_list is None:
        lut = alloc(tuple(shape(level_map)), "int32")
        counts = alloc(tuple(shape(level_map)[:3]) + (4,), "int32")
        runs = alloc(tuple(shape(level_map)[:3]), "int32")
        psa_build_lut(level_map, lut, counts, Lq=Lq, Lk=Lk, query_block=query_block, key_block=key_block,
                      causal=causal, runs=runs, run_blocks=run_blocks_for(launch["block_n"], key_block))
    else:
        lut, counts, runs = index_list
    pooled = tuple(sorted(pooled_levels))
    kp = {p: alloc((B, Hkv, -(-Lk // p), D), dt) for p in pooled}
    vp = {p: alloc((B, Hkv, -(-Lk // p), D), dt) for p in pooled}
    if pooled:
        psa_pool_kv(k, v, kp, vp, layout=layout, geometry=g)
    on_stage("pool_ms")
    if out is None:
        out = alloc(g.q_shape, dt)
    psa_attn_fwd(q, k, v, kp, vp, lut, counts, out, query_block=query_block, key_block=key_block, causal=causal,
                 scale=scale, layout=layout, gqa_mask=gqa_mask, lse=lse, levels=(1,) + pooled, runs=runs,
                 config=launch, geometry=g)
    on_stage("attention_ms")
    return out, lut, counts


def psa_forward_kernels(q, k, v, *, alloc, query_block=128, key_block=32, causal=True, scale=None, layout="BHSD",
                        mask_mode="energybound", mask_ratios=None, xattn_stride=16, dense_tail_tokens=512,
                        prompt_end=None, force_sink=True, sim_cap=True, sim_thresholds=(0.75, 0.70, 0.70),
                        gqa_mask="per_head", counters=None, out=None, lse=None, attn_config=None, on_stage=_noop):
    """Run the whole PSA forward on tensor-likes. Returns ``(out, level_map, lut, counts)``.

    q ``[B, H_q, Lq, D]``, k/v ``[B, H_kv, Lk, D]`` in ``layout``; ``alloc(shape, dtype_name)`` returns a new
    contiguous tensor on the inputs' device. ``counters``: optional int32 [>= 6] buffer for the select stats.
    No host synchronisation: the pooled levels built are those the configuration can produce.
    """
    mask_ratios = DEFAULT_MASK_RATIOS if mask_ratios is None else mask_ratios
    # one geometry record for the whole call: q, k, v are read and validated here only
    g = call_geometry(q, k, v, layout=layout, query_block=query_block, key_block=key_block, causal=causal,
                      gqa_mask=gqa_mask)
    # fused plan: the selection writes the index list for this call's attention tile width as well
    index = index_list_buffers(g, alloc, attn_config)
    level_map = psa_level_map_kernels(
        q, k, alloc=alloc, query_block=query_block, key_block=key_block, causal=causal, scale=scale, layout=layout,
        mask_mode=mask_mode, mask_ratios=mask_ratios, xattn_stride=xattn_stride, dense_tail_tokens=dense_tail_tokens,
        prompt_end=prompt_end, force_sink=force_sink, sim_cap=sim_cap, sim_thresholds=sim_thresholds,
        gqa_mask=gqa_mask, counters=counters, on_stage=on_stage, geometry=g, index_list=index)
    out, lut, counts = psa_attention_from_map(
        q, k, v, level_map, alloc=alloc, query_block=query_block, key_block=key_block, causal=causal, scale=scale,
        layout=layout, gqa_mask=gqa_mask, pooled_levels=levels_possible(mask_ratios, sim_cap), out=out, lse=lse,
        attn_config=attn_config, on_stage=on_stage, geometry=g, index_list=index[:3])
    return out, level_map, lut, counts
