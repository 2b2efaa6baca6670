"""Pyramid block-sparse forward attention (docs/ALGORITHM.md §4, §5) over the lut/counts index-list form.

One program per (b, query head, query block). For every level p in 1, 2, 4, 8 the program walks only the kept
key blocks of that level (``lut`` segment) and feeds one online softmax (base 2: log2(e) is folded into the
scale, and the bias ln c becomes log2 c). A key tile of ``BLOCK_N`` lanes holds ``BLOCK_N`` consecutive entries of
the level's flattened token list: with ``P = key_block / p`` pooled tokens per block, lane ``u`` is token
``u % P`` of kept block ``lut[u // P]``. So when ``P < BLOCK_N`` a tile packs ``BLOCK_N / P`` kept blocks (every
lane with its own pooled index, count and causal bound), and when ``P >= BLOCK_N`` a block spans ``P / BLOCK_N``
tiles (docs/ALGORITHM.md §4.4 "Tiles", pitfall 4).

Level 1 runs up to three loops, the pooled levels two:
- the *runs* (with a ``runs`` tensor from ``psa_build_lut``): stretches of consecutive, complete, fully visible
  level-1 blocks at the front of the level-1 segment, walked as slabs of ``BLOCK_N`` rows whose offset is the
  loop index: TMA descriptor loads on sm_90 (exact at any row offset; no pointer tensors, no dependent index
  load in the pipelined loop), pointer loads elsewhere;
- an unmasked loop over whole tiles of the other *fully visible, complete* blocks (j < jfull, where every key
  of the block is <= the first row's position and < Lk): gathered, no lane or causal masks, bias log2(p);
- a masked loop over the rest (the diagonal / ragged blocks and the partial tile): lanes past the list, ghost
  tokens (>= Lk) and causally invisible tokens (conservative rule §5: the token's *last* key must be visible)
  get s = -inf, loads are zero-filled, bias log2(c) per lane.
The lut is sorted by j inside a level (after the runs), so the masked entries are the tail of the segment; the
kernel counts them in a window of the last ``WIN = next_pow2(query_block/key_block + 1)`` entries, which bounds
the number of valid blocks with j >= jfull (the lut carries no upper-triangle blocks, ARCHITECTURE.md).

The three pooled levels share ONE unmasked and ONE masked loop of ``BLOCK_NP`` = 64 lanes, picking the level's
base pointer, strides, shift and bias per tile with scalar selects: fewer loops means fewer software-pipeline
fills per program, which is what short sparse rows pay for. Measurements: ``benchmarks/NOTES-attn.md``.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

from ._tensorlike import dtype_name, shape, strides
from ._tma import descriptor, tma_available
from .geometry import call_geometry

__all__ = ["psa_attn_fwd", "LEVELS", "default_config", "launch_config"]

LEVELS = (1, 2, 4, 8)
_LOG2E = 1.4426950408889634


@triton.jit
def first_masked_block(i, off, Lk, BLOCK_M: tl.constexpr, BK: tl.constexpr, CAUSAL: tl.constexpr):
    """``jfull`` of query block i: key blocks j < jfull are complete and visible to every row of the block
    (causal: entirely <= the first row's position ``i * BLOCK_M + off``). The index list's runs use the same
    bound (select.py), so both call this."""
    jfull = Lk // BK
    if CAUSAL:
        jfull = (i * BLOCK_M + off + 1) // BK
    return jfull


@triton.jit
def _online_update(acc, l_i, m_i, s, v, SAFE: tl.constexpr):
    # s: [BLOCK_M, BLOCK_N] base-2 logits (-inf where masked); v: [BLOCK_N, D_PAD]
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if SAFE:
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # no (-inf) - (-inf)
    else:
        m_use = m_new
    alpha = tl.math.exp2(m_i - m_use)
    p = tl.math.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit
def _psa_level(acc, l_i, m_i, q, kb, vb, s_kn, s_vn, lut_row, seg_off, n_e, jfull, t_rows, Lk, qk_scale,
               offs_n, offs_d,
               POOL: tl.constexpr, LOG2P: tl.constexpr, TPB: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
               D_PAD: tl.constexpr, CAUSAL: tl.constexpr, WIN: tl.constexpr, IN_PREC: tl.constexpr):
    # number of entries in the tail window with j >= jfull (they need masking); the rest are full blocks
    w = n_e - WIN + tl.arange(0, WIN)
    wj = tl.load(lut_row + seg_off + w, mask=w >= 0, other=0)
    n_tail = tl.sum(((w >= 0) & (wj >= jfull)).to(tl.int32), 0)
    n_full = n_e - n_tail
    tiles_full = (n_full * TPB) // BLOCK_N
    dmask = offs_d < D
    # ---- unmasked tiles: every lane is a complete, visible token ---------------------------------------------
    for t in range(0, tiles_full):
        u = t * BLOCK_N + offs_n
        j = tl.load(lut_row + seg_off + u // TPB)
        g = (j * TPB + u % TPB).to(tl.int64)
        if D == D_PAD:
            k = tl.load(kb + g[:, None] * s_kn + offs_d[None, :])
        else:
            k = tl.load(kb + g[:, None] * s_kn + offs_d[None, :], mask=dmask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=IN_PREC) * qk_scale
        if POOL > 1:
            s = s + LOG2P
        if D == D_PAD:
            v = tl.load(vb + g[:, None] * s_vn + offs_d[None, :])
        else:
            v = tl.load(vb + g[:, None] * s_vn + offs_d[None, :], mask=dmask[None, :], other=0.0)
        acc, l_i, m_i = _online_update(acc, l_i, m_i, s, v, False)
    # ---- masked tiles: diagonal / ragged blocks and the partial tile -------------------------------------------
    n_tok = n_e * TPB
    for u0 in range(tiles_full * BLOCK_N, n_tok, BLOCK_N):
        u = u0 + offs_n
        ok = u < n_tok
        j = tl.load(lut_row + seg_off + u // TPB, mask=ok, other=0)
        g = j * TPB + u % TPB
        first = g * POOL
        ok = ok & (first < Lk)
        cnt = tl.minimum(Lk - first, POOL)
        g64 = g.to(tl.int64)
        lmask = ok[:, None] & dmask[None, :]
        k = tl.load(kb + g64[:, None] * s_kn + offs_d[None, :], mask=lmask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=IN_PREC) * qk_scale
        if POOL > 1:
            s = s + tl.log2(tl.maximum(cnt, 1).to(tl.float32))[None, :]
        vis = ok[None, :]
        if CAUSAL:
            vis = vis & ((first + cnt - 1)[None, :] <= t_rows[:, None])
        s = tl.where(vis, s, float("-inf"))
        v = tl.load(vb + g64[:, None] * s_vn + offs_d[None, :], mask=lmask, other=0.0)
        acc, l_i, m_i = _online_update(acc, l_i, m_i, s, v, True)
    return acc, l_i, m_i


@triton.jit
def _tail_count(lut_row, seg_off, n_e, jfull, WIN: tl.constexpr):
    # entries of a level segment with j >= jfull (all among its last WIN entries): they need masking
    w = n_e - WIN + tl.arange(0, WIN)
    wj = tl.load(lut_row + seg_off + w, mask=w >= 0, other=0)
    return tl.sum(((w >= 0) & (wj >= jfull)).to(tl.int32), 0)


@triton.jit
def _pick(c2, c4, a, b, c):
    return tl.where(c2, a, tl.where(c4, b, c))


@triton.jit
def _psa_pooled_merged(acc, l_i, m_i, q, kb2, vb2, kb4, vb4, kb8, vb8, sk2, sv2, sk4, sv4, sk8, sv8,
                       lut_row, n1, n2, n4, n8, jfull, t_rows, Lk, qk_scale, offs_n, offs_d,
                       LOG2BK: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                       CAUSAL: tl.constexpr, WIN: tl.constexpr, IN_PREC: tl.constexpr,
                       HAS2: tl.constexpr, HAS4: tl.constexpr, HAS8: tl.constexpr):
    """Levels 2, 4, 8 as ONE unmasked loop and ONE masked loop over their concatenated tiles (fewer pipeline
    fills than a loop per level). Per-level quantities are picked per tile with scalar selects."""
    o2 = n1
    o4 = n1 + n2
    o8 = n1 + n2 + n4
    SH2: tl.constexpr = LOG2BK - 1  # log2(tokens per block) at each level
    SH4: tl.constexpr = LOG2BK - 2
    SH8: tl.constexpr = LOG2BK - 3
    f2 = 0
    f4 = 0
    f8 = 0
    if HAS2:
        f2 = n2 - _tail_count(lut_row, o2, n2, jfull, WIN)
    else:
        n2 = 0
    if HAS4:
        f4 = n4 - _tail_count(lut_row, o4, n4, jfull, WIN)
    else:
        n4 = 0
    if HAS8:
        f8 = n8 - _tail_count(lut_row, o8, n8, jfull, WIN)
    else:
        n8 = 0
    t2 = (f2 << SH2) // BLOCK_N  # whole unmasked tiles per level
    t4 = (f4 << SH4) // BLOCK_N
    t8 = (f8 << SH8) // BLOCK_N
    T2 = t2
    T4 = T2 + t4
    T8 = T4 + t8
    dmask = offs_d < D
    for it in range(0, T8):
        c2 = it < T2
        c4 = it < T4
        kb = _pick(c2, c4, kb2, kb4, kb8)
        vb = _pick(c2, c4, vb2, vb4, vb8)
        skn = _pick(c2, c4, sk2, sk4, sk8)
        svn = _pick(c2, c4, sv2, sv4, sv8)
        sh = _pick(c2, c4, SH2, SH4, SH8)
        seg = _pick(c2, c4, o2, o4, o8)
        base = _pick(c2, c4, 0, T2, T4)
        bias = _pick(c2, c4, 1.0, 2.0, 3.0)
        u = (it - base) * BLOCK_N + offs_n
        e = u >> sh
        j = tl.load(lut_row + seg + e)
        g = ((j << sh) + (u - (e << sh))).to(tl.int64)
        if D == D_PAD:
            k = tl.load(kb + g[:, None] * skn + offs_d[None, :])
            v = tl.load(vb + g[:, None] * svn + offs_d[None, :])
        else:
            k = tl.load(kb + g[:, None] * skn + offs_d[None, :], mask=dmask[None, :], other=0.0)
            v = tl.load(vb + g[:, None] * svn + offs_d[None, :], mask=dmask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=IN_PREC) * qk_scale + bias
        acc, l_i, m_i = _online_update(acc, l_i, m_i, s, v, False)
    # masked tails: tokens [t_p * BLOCK_N, n_p * P) of each level
    s2 = t2 * BLOCK_N
    s4 = t4 * BLOCK_N
    s8 = t8 * BLOCK_N
    e2 = n2 << SH2
    e4 = n4 << SH4
    e8 = n8 << SH8
    M2 = (e2 - s2 + BLOCK_N - 1) // BLOCK_N
    M4 = M2 + (e4 - s4 + BLOCK_N - 1) // BLOCK_N
    M8 = M4 + (e8 - s8 + BLOCK_N - 1) // BLOCK_N
    for it in range(0, M8):
        c2 = it < M2
        c4 = it < M4
        kb = _pick(c2, c4, kb2, kb4, kb8)
        vb = _pick(c2, c4, vb2, vb4, vb8)
        skn = _pick(c2, c4, sk2, sk4, sk8)
        svn = _pick(c2, c4, sv2, sv4, sv8)
        sh = _pick(c2, c4, SH2, SH4, SH8)
        seg = _pick(c2, c4, o2, o4, o8)
        base = _pick(c2, c4, 0, M2, M4)
        st = _pick(c2, c4, s2, s4, s8)
        en = _pick(c2, c4, e2, e4, e8)
        pool = _pick(c2, c4, 2, 4, 8)
        u = st + (it - base) * BLOCK_N + offs_n
        ok = u < en
        e = u >> sh
        j = tl.load(lut_row + seg + e, mask=ok, other=0)
        g = (j << sh) + (u - (e << sh))
        first = g * pool
        ok = ok & (first < Lk)
        cnt = tl.minimum(Lk - first, pool)
        g64 = g.to(tl.int64)
        lmask = ok[:, None] & dmask[None, :]
        k = tl.load(kb + g64[:, None] * skn + offs_d[None, :], mask=lmask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=IN_PREC) * qk_scale
        s = s + tl.log2(tl.maximum(cnt, 1).to(tl.float32))[None, :]
        vis = ok[None, :]
        if CAUSAL:
            vis = vis & ((first + cnt - 1)[None, :] <= t_rows[:, None])
        s = tl.where(vis, s, float("-inf"))
        v = tl.load(vb + g64[:, None] * svn + offs_d[None, :], mask=lmask, other=0.0)
        acc, l_i, m_i = _online_update(acc, l_i, m_i, s, v, True)
    return acc, l_i, m_i


@triton.jit
def _psa_runs(acc, l_i, m_i, q, k_desc, v_desc, kb, vb, s_kn, s_vn, lut_row, n_run_blocks, b, hk, qk_scale,
              offs_n, offs_d, BK: tl.constexpr, BLOCK_N: tl.constexpr, RUN_WIN: tl.constexpr, RUN_STAGES: tl.constexpr,
              D: tl.constexpr, D_PAD: tl.constexpr, USE_TMA: tl.constexpr, IN_PREC: tl.constexpr):
    """Level-1 runs: the first ``n_run_blocks`` lut entries (see ``psa_build_lut``) are complete, fully visible
    blocks, each maximal stretch contributing a whole multiple of ``BLOCK_N // BK``. The outer loop finds the
    next stretch of consecutive blocks (at most ``RUN_WIN``) from one vector load of the lut; the inner loop walks
    it as ``BLOCK_N``-row slabs whose row offset is the loop index, so the software pipeline prefetches with no
    dependent index load (TMA on sm_90, where a descriptor load at the run's row offset is exact)."""
    dmask = offs_d < D
    w = tl.arange(0, RUN_WIN)
    e = 0
    while e < n_run_blocks:
        js = tl.load(lut_row + e + w, mask=e + w < n_run_blocks, other=-1)
        j0 = tl.sum(tl.where(w == 0, js, 0), 0)
        n_blk = tl.sum(((js - j0) == w).to(tl.int32), 0)  # ascending, unique: the leading consecutive stretch
        for n0 in tl.range(j0 * BK, (j0 + n_blk) * BK, BLOCK_N, num_stages=RUN_STAGES):
            if USE_TMA:
                k = k_desc.load([b, hk, n0, 0]).reshape([BLOCK_N, D_PAD])
            else:
                g = (n0 + offs_n).to(tl.int64)
                k = tl.load(kb + g[:, None] * s_kn + offs_d[None, :], mask=dmask[None, :], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=IN_PREC) * qk_scale
            if USE_TMA:
                v = v_desc.load([b, hk, n0, 0]).reshape([BLOCK_N, D_PAD])
            else:
                v = tl.load(vb + g[:, None] * s_vn + offs_d[None, :], mask=dmask[None, :], other=0.0)
            acc, l_i, m_i = _online_update(acc, l_i, m_i, s, v, False)
        e += n_blk
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["Lq", "Lk", "off", "nq", "slb", "slh", "sli", "scb", "sch", "sci",
                               "srb", "srh", "sLb", "sLh"])
def _psa_attn_fwd_kernel(
    Q, K, V, K2, V2, K4, V4, K8, V8, LUT, CNT, RUNS, O, LSE, K_DESC, V_DESC,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn,
    s2kb, s2kh, s2kn, s2vb, s2vh, s2vn,
    s4kb, s4kh, s4kn, s4vb, s4vh, s4vn,
    s8kb, s8kh, s8kn, s8vb, s8vh, s8vn,
    sob, soh, som,
    slb, slh, sli, scb, sch, sci, srb, srh, sLb, sLh,
    Hq, G, HM_DIV, Lq, Lk, off, nq, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_NP: tl.constexpr, BK: tl.constexpr,
    LOG2BK: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, CAUSAL: tl.constexpr,
    HAS1: tl.constexpr, HAS2: tl.constexpr, HAS4: tl.constexpr, HAS8: tl.constexpr,
    RUN_BLOCKS: tl.constexpr, RUN_WIN: tl.constexpr, RUN_STAGES: tl.constexpr, USE_TMA: tl.constexpr, WIN: tl.constexpr, WRITE_LSE: tl.constexpr,
    IN_PREC: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    i = nq - 1 - tl.program_id(1)  # heaviest (latest) query blocks first
    b = pid_bh // Hq
    h = pid_bh % Hq
    hk = h // G
    hm = h // HM_DIV
    b64 = b.to(tl.int64)
    hk64 = hk.to(tl.int64)

    offs_m = i * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    row_ok = offs_m < Lq
    t_rows = offs_m + off
    q_base = Q + b64 * sqb + h.to(tl.int64) * sqh
    q = tl.load(q_base + offs_m.to(tl.int64)[:, None] * sqm + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0)

    lut_row = LUT + b64 * slb + hm.to(tl.int64) * slh + i.to(tl.int64) * sli
    cnt_row = CNT + b64 * scb + hm.to(tl.int64) * sch + i.to(tl.int64) * sci
    jfull = first_masked_block(i, off, Lk, BLOCK_M, BK, CAUSAL)  # first block index that may need masking

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)

    n1 = tl.load(cnt_row)
    n2 = tl.load(cnt_row + 1)
    n4 = tl.load(cnt_row + 2)
    n8 = tl.load(cnt_row + 3)
    kb1 = K + b64 * skb + hk64 * skh
    vb1 = V + b64 * svb + hk64 * svh
    if HAS1:
        start = 0
        if RUN_BLOCKS > 0:
            start = tl.load(RUNS + b64 * srb + hm.to(tl.int64) * srh + i) * RUN_BLOCKS
            acc, l_i, m_i = _psa_runs(acc, l_i, m_i, q, K_DESC, V_DESC, kb1, vb1, skn, svn, lut_row, start, b, hk,
                                      qk_scale, offs_n, offs_d, BK, BLOCK_N, RUN_WIN, RUN_STAGES, D, D_PAD, USE_TMA,
                                      IN_PREC)
        acc, l_i, m_i = _psa_level(acc, l_i, m_i, q, kb1, vb1, skn, svn, lut_row, start, n1 - start, jfull,
                                   t_rows, Lk, qk_scale, offs_n, offs_d,
                                   1, 0.0, BK, BLOCK_N, D, D_PAD, CAUSAL, WIN, IN_PREC)
    if HAS2 or HAS4 or HAS8:
        acc, l_i, m_i = _psa_pooled_merged(
            acc, l_i, m_i, q, K2 + b64 * s2kb + hk64 * s2kh, V2 + b64 * s2vb + hk64 * s2vh,
            K4 + b64 * s4kb + hk64 * s4kh, V4 + b64 * s4vb + hk64 * s4vh,
            K8 + b64 * s8kb + hk64 * s8kh, V8 + b64 * s8vb + hk64 * s8vh,
            s2kn, s2vn, s4kn, s4vn, s8kn, s8vn, lut_row, n1, n2, n4, n8, jfull, t_rows, Lk, qk_scale,
            tl.arange(0, BLOCK_NP), offs_d, LOG2BK, BLOCK_NP, D, D_PAD, CAUSAL, WIN, IN_PREC, HAS2, HAS4, HAS8)

    has = l_i > 0.0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    out = tl.where(has[:, None], out, 0.0)
    o_base = O + b64 * sob + h.to(tl.int64) * soh
    tl.store(o_base + offs_m.to(tl.int64)[:, None] * som + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d < D)[None, :])
    if WRITE_LSE:
        lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
        tl.store(LSE + b64 * sLb + h.to(tl.int64) * sLh + offs_m, lse, mask=row_ok)


def default_config(head_dim: int, query_block: int, key_block: int, dtype: str = "bfloat16") -> dict:
    """Launch config (H200 sweep, benchmarks/NOTES-attn.md): level-1 tile width ``block_n``, pooled-level tile
    width ``block_n_pooled``, warps, pipeline stages of the gathered loops and of the level-1 run loop, and
    ``use_tma`` (None: TMA slabs for the runs where the target has TMA, i.e. sm_90+; False: gather them)."""
    if dtype == "float32":
        return {"block_n": 32, "block_n_pooled": 32, "num_warps": 4, "num_stages": 2, "run_stages": 2,
                "use_tma": None}
    if query_block >= 128:
        # d=1, 32k: 3 run stages 15.9 ms vs 17.9 with 2; the gathered loops stay at 2 (d=0.1: 3.08 vs 3.21 ms)
        return {"block_n": 128, "block_n_pooled": 64, "num_warps": 8, "num_stages": 2, "run_stages": 3,
                "use_tma": None}
    return {"block_n": 64, "block_n_pooled": 64, "num_warps": 4, "num_stages": 2, "run_stages": 2,
            "use_tma": None}


def launch_config(head_dim: int, query_block: int, key_block: int, dtype: str, config: dict | None = None) -> dict:
    """:func:`default_config` with the caller's overrides (``None`` values keep the default); an unknown option
    is an error. The pipeline fixes it once per call, before the index list groups level-1 runs by its tile
    width."""
    cfg = default_config(head_dim, query_block, key_block, dtype)
    unknown = set(config or {}) - set(cfg)
    if unknown:
        raise ValueError(f"unknown launch option(s) {sorted(unknown)}; allowed: {sorted(cfg)}")
    cfg.update({key: val for key, val in (config or {}).items() if val is not None})
    return cfg


def run_blocks_for(block_n: int, key_block: int) -> int:
    """Key blocks per level-1 run for tile width ``block_n`` (what ``psa_build_lut(run_blocks=...)`` needs)."""
    return max(1, block_n // key_block)


def _attn_launch_args(q, k, v, k_pooled, v_pooled, lut, counts, out, *, query_block, key_block, causal, scale,
                      layout, gqa_mask, lse, levels, runs, config, geometry=None):
    """Validate and build ``(grid, args, meta)`` for ``_psa_attn_fwd_kernel`` (None when there is no work).
    ``geometry``: the call's :class:`CallGeometry` (q, k, v are then not read again), else built here."""
    if geometry is None:
        g = call_geometry(q, k, v, layout=layout, query_block=query_block, key_block=key_block, causal=causal,
                          gqa_mask=gqa_mask)
    else:
        g = geometry
        g.check(needs_v=True, layout=layout, query_block=query_block, key_block=key_block, causal=bool(causal),
                gqa_mask=gqa_mask)
    B, Hq, Hkv, Lq, Lk, D, dt = g.B, g.Hq, g.Hkv, g.Lq, g.Lk, g.D, g.dtype
    qst, kst, vst = g.q_strides, g.k_strides, g.v_strides
    os_, ost = shape(out), strides(out)
    if os_ != g.q_shape:
        raise ValueError(f"out must have q's shape {g.q_shape}, got {os_}")
    if dtype_name(out) != dt:
        raise ValueError(f"out has dtype {dtype_name(out)}, expected {dt} (q's dtype)")
    ost = ost if layout == "BHSD" else (ost[0], ost[2], ost[1], ost[3])
    if ost[3] != 1:
        raise ValueError(f"out needs unit stride along D, got strides {ost}")
    G, Hm, nq, nk = g.G, g.Hm, g.nq, g.nk
    if shape(lut) != (B, Hm, nq, nk) or dtype_name(lut) != "int32":
        raise ValueError(f"lut must be int32 {(B, Hm, nq, nk)}, got {dtype_name(lut)} {shape(lut)}"
                         " (mask granularity must match query_block/key_block)")
    if shape(counts) != (B, Hm, nq, 4) or dtype_name(counts) != "int32":
        raise ValueError(f"counts must be int32 {(B, Hm, nq, 4)}, got {dtype_name(counts)} {shape(counts)}")
    lst, cst = strides(lut), strides(counts)
    if lst[3] != 1 or cst[3] != 1:
        raise ValueError("lut and counts need unit stride along the last axis")
    if set(k_pooled) != set(v_pooled) or not set(k_pooled) <= {2, 4, 8}:
        raise ValueError(f"k_pooled/v_pooled must have the same keys from (2, 4, 8), got {sorted(k_pooled)}")
    pst = {}
    for p in (2, 4, 8):
        if p in k_pooled:
            for name, t in (("k_pooled", k_pooled[p]), ("v_pooled", v_pooled[p])):
                want = (B, Hkv, -(-Lk // p), D)
                if shape(t) != want or dtype_name(t) != dt or strides(t)[3] != 1:
                    raise ValueError(f"{name}[{p}] must be {dt} {want} with unit stride along D, got "
                                     f"{dtype_name(t)} {shape(t)}")
            pst[p] = strides(k_pooled[p])[:3] + strides(v_pooled[p])[:3]
        else:
            pst[p] = (0,) * 6
    if lse is not None:
        if shape(lse) != (B, Hq, Lq) or dtype_name(lse) != "float32" or strides(lse)[2] != 1:
            raise ValueError(f"lse must be float32 {(B, Hq, Lq)} with unit stride along L")
        lse_st = strides(lse)[:2]
    else:
        lse_st = (0, 0)
    cfg = launch_config(D, query_block, key_block, dt, config)
    block_n, d_pad = cfg["block_n"], g.d_pad
    run_blocks = run_blocks_for(block_n, key_block)
    if runs is not None:
        if shape(runs) != (B, Hm, nq) or dtype_name(runs) != "int32" or strides(runs)[2] != 1:
            raise ValueError(f"runs must be int32 {(B, Hm, nq)} with unit stride along nq, got "
                             f"{dtype_name(runs)} {shape(runs)}")
        run_st = strides(runs)[:2]
    else:
        run_blocks, run_st = 0, (0, 0)
    if B * Hq * Lq == 0:
        return None
    if levels is None:
        levels = (1,) + tuple(p for p in (2, 4, 8) if p in k_pooled)
    levels = set(levels)
    if not levels <= set(LEVELS):
        raise ValueError(f"levels must be a subset of {LEVELS}, got {sorted(levels)}")
    for p in levels - {1}:
        if p not in k_pooled:
            raise ValueError(f"level {p} is listed as present but k_pooled has no tensor for it")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    k_desc = v_desc = None
    if run_blocks and cfg["use_tma"] is not False and tma_available():
        # 4-D [B, H, L, D] views in any layout (TMA takes one stride per dimension), slabs of block_n rows
        k_desc = descriptor(k, (B, Hkv, Lk, D), kst, (1, 1, block_n, d_pad), kernel="psa_attn_fwd", dtype=dt)
        if k_desc is not None:  # one fallback per launch, not per tensor
            v_desc = descriptor(v, (B, Hkv, Lk, D), vst, (1, 1, block_n, d_pad), kernel="psa_attn_fwd", dtype=dt)
    use_tma = k_desc is not None and v_desc is not None
    win = max(2, triton.next_power_of_2(query_block // key_block + 1))
    ptr = {p: (k_pooled.get(p, k), v_pooled.get(p, v)) for p in (2, 4, 8)}
    grid = (B * Hq, nq)
    args = (
        q, k, v, ptr[2][0], ptr[2][1], ptr[4][0], ptr[4][1], ptr[8][0], ptr[8][1], lut, counts,
        runs if runs is not None else counts, out, lse if lse is not None else out,
        k_desc if use_tma else None, v_desc if use_tma else None,
        qst[0], qst[1], qst[2], kst[0], kst[1], kst[2], vst[0], vst[1], vst[2],
        *pst[2], *pst[4], *pst[8],
        ost[0], ost[1], ost[2],
        lst[0], lst[1], lst[2], cst[0], cst[1], cst[2], run_st[0], run_st[1], lse_st[0], lse_st[1],
        Hq, G, G if gqa_mask == "per_kv_group" else 1, Lq, Lk, g.off, nq, float(scale) * _LOG2E,
    )
    meta = dict(
        BLOCK_M=query_block, BLOCK_N=block_n, BLOCK_NP=cfg["block_n_pooled"], BK=key_block,
        LOG2BK=key_block.bit_length() - 1, D=D, D_PAD=d_pad, CAUSAL=bool(causal),
        HAS1=1 in levels, HAS2=2 in levels, HAS4=4 in levels, HAS8=8 in levels,
        RUN_BLOCKS=run_blocks, RUN_WIN=128, RUN_STAGES=cfg["run_stages"], USE_TMA=use_tma, WIN=win,
        WRITE_LSE=lse is not None,
        IN_PREC="ieee" if dt == "float32" else "tf32", num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return grid, args, meta


def psa_attn_fwd(q, k, v, k_pooled: dict, v_pooled: dict, lut, counts, out, *, query_block: int, key_block: int,
                 causal: bool = True, scale: float | None = None, layout: str = "BHSD",
                 gqa_mask: str = "per_head", lse=None, levels=None, runs=None, config: dict | None = None,
                 geometry=None) -> None:
    """Pyramid sparse attention forward into ``out`` (docs/ALGORITHM.md §4).

    q ``[B, H_q, Lq, D]``, k/v ``[B, H_kv, Lk, D]`` in ``layout`` (``"BHSD"``; ``"BSHD"`` swaps H and L), any
    strides with unit stride along D, all fp16 or all bf16 (fp32 for tests). ``k_pooled``/``v_pooled``: dicts
    ``{p: [B, H_kv, ceil(Lk/p), D]}`` from :func:`psa_pool_kv`; they MUST hold every pooled level that occurs in
    ``counts`` (a level without a tensor is not computed). ``lut`` int32 ``[B, H_m, nq, nk]`` and ``counts`` int32
    ``[B, H_m, nq, 4]`` as in ARCHITECTURE.md (no upper-triangle entries). ``runs``: optional int32
    ``[B, H_m, nq]`` from ``psa_build_lut(..., runs=, run_blocks=run_blocks_for(block_n, key_block))``: the
    level-1 runs at the front of each row are loaded as slabs (TMA on sm_90). ``out``: q's shape, layout and
    dtype. ``lse``: optional fp32 ``[B, H_q, Lq]`` (natural log; -inf for empty rows). Causal alignment is
    bottom-right (row r sits at position r + Lk - Lq). ``levels``: optional subset of (1, 2, 4, 8) known to be
    present (compile-time pruning); default: 1 plus the keys of ``k_pooled``. ``config``: launch overrides of
    :func:`default_config` (``block_n``, ``block_n_pooled``, ``num_warps``, ``num_stages``, ``run_stages``,
    ``use_tma``). ``geometry``: the call's :class:`~.geometry.CallGeometry` from the pipeline (q, k, v are then
    not read again; it must agree with the block sizes, causal flag, layout and gqa_mask given here).
    """
    launch = _attn_launch_args(q, k, v, k_pooled, v_pooled, lut, counts, out, query_block=query_block,
                               key_block=key_block, causal=causal, scale=scale, layout=layout, gqa_mask=gqa_mask,
                               lse=lse, levels=levels, runs=runs, config=config, geometry=geometry)
    if launch is None:
        return
    grid, args, meta = launch
    _psa_attn_fwd_kernel[grid](*args, **meta)
