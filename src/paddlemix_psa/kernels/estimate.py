"""XAttention antidiagonal block-importance estimator (docs/ALGORITHM.md §6.1, §6.2, §6.4).

For query head h (keys of KV head ``h // G``, never expanded) and stride S:

    X[a, c] = sum_{s<S} <q[a*S + S-1-s], k[c*S + s]>          (zero rows beyond Lq / Lk)
    P[a, :] = softmax over visible c of X[a, c] * scale / S   (fp32)
    A[i, j] = sum_{a in query block i} sum_{c in key block j} P[a, c]

Reshaped query ``a`` is valid iff ``a*S < Lq``; reshaped key ``c`` is valid iff ``c*S < Lk``; in causal mode ``c``
is visible from ``a`` iff it is valid and ``c*S <= a*S + S-1 + off`` (bottom-right, ``off = Lk - Lq``).

One program owns ``BLOCK_A`` reshaped queries (whole query blocks) of one (b, h). The strided GEMM is ``S``
``tl.dot`` calls on row-strided views (rows ``a*S + S-1-s`` of q against rows ``c*S + s`` of k), accumulated in
fp32. Pass 1 runs an online max / sum over every visible key tile; pass 2 recomputes the tile, normalises and
reduces it to block sums with reshapes (no atomics: each output element has exactly one writer). Tiles past the
causal frontier are written as exact zeros, so upper blocks are 0 and nothing is left uninitialised.

Single-pass method (``method="single_pass"``; needs caller scratch): the strided GEMM runs once.

- Pass A (``_xattn_partial_kernel``): X = Q' K'^T with inner dimension S*D (Q' = q viewed as ``[n_a, S*D]`` with
  each group of S rows reversed), as a runtime ``tl.range`` over the S chunks of D (software-pipelined with
  ``num_stages``). For each key tile t and row a it writes the tile max ``tmax[a, t]`` (log2 domain, -inf where the
  row sees nothing in the tile), the tile sum ``tsum[a, t] = sum_c exp2(x - tmax)`` and, per key block j of the
  tile, ``part[a, j] = sum_{c in j} exp2(x - tmax)``. A key block lies in exactly one tile (BLOCK_C is a multiple of
  key_block / S). Upper tiles are never written.
  On sm_90 (``tma_available()``) pass A loads its operands through TMA descriptors of 5-D views
  ``[B, H, S, L // S, D]`` (strides ``[sb, sh, sl, S*sl, 1]``): the ``[1, BLOCK_A, BLOCK_K]`` box at
  ``[b, h, S-1-s, a0, d0]`` is exactly the strided row set ``a*S + S-1-s`` of a tile, and the box of k at
  ``[b, kvh, s, c0, d0]`` the rows ``c*S + s``; the hardware zero-fills whole groups past ``L // S`` and columns
  past D. The group axis sits before the row axis so that only leading unit dims are dropped: the reshaped box
  stays a shared-memory operand of wgmma (with ``[.., L // S, S, D]`` the q box went through registers). Rows of
  a partial last group (``L % S != 0``) lie outside the view, so a query tile or key tile that reaches it keeps
  the pointer loads (one branch per program and per key tile, outside the pipelined loop).
- Pass B (``_xattn_finalize_kernel``): per row a, ``m = max_t tmax``, ``l = sum_t tsum * exp2(tmax - m)``; then
  ``A[i, j] = sum_{valid a in block i} part[a, j] * exp2(tmax[a, t(j)] - m) / l``, exact zeros in upper blocks.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

from ._tensorlike import dtype_name, shape, strides
from ._tma import descriptor, tma_available
from .geometry import HEAD_DIMS as _HEAD_DIMS

__all__ = ["psa_estimate_scores", "estimate_scratch_shapes"]

_LAYOUTS = ("BHSD", "BSHD")
_LOG2E = 1.4426950408889634
_MIN_PROGRAMS = 132  # about one wave on an H100 (132 SMs); a heuristic, see benchmarks/bench_estimate.py --sweep


@triton.jit
def _xattn_tile(q_base, k_base, offs_a, offs_c, offs_d, dmask, Lq, Lk, stride_ql, stride_kl,
                STRIDE: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # X[a, c] for one [BLOCK_A, BLOCK_C] tile; fp32 accumulation of STRIDE dots on strided row views.
    acc = tl.zeros([BLOCK_A, BLOCK_C], dtype=tl.float32)
    a64 = offs_a.to(tl.int64)
    c64 = offs_c.to(tl.int64)
    for s in range(STRIDE):
        q_rows = a64 * STRIDE + (STRIDE - 1 - s)
        k_rows = c64 * STRIDE + s
        qt = tl.load(q_base + q_rows[:, None] * stride_ql + offs_d[None, :],
                     mask=(q_rows < Lq)[:, None] & dmask[None, :], other=0.0)  # [BLOCK_A, BLOCK_D]
        kt = tl.load(k_base + k_rows[None, :] * stride_kl + offs_d[:, None],
                     mask=(k_rows < Lk)[None, :] & dmask[:, None], other=0.0)  # [BLOCK_D, BLOCK_C]
        acc = tl.dot(qt, kt, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit(do_not_specialize=["Lq", "Lk", "nq", "nk", "stride_ob", "stride_oh", "stride_oi"])
def _xattn_scores_kernel(Q, K, Out,
                         stride_qb, stride_qh, stride_ql,
                         stride_kb, stride_kh, stride_kl,
                         stride_ob, stride_oh, stride_oi,
                         H, G, Lq, Lk, nq, nk, qk_scale,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, STRIDE: tl.constexpr,
                         RQ: tl.constexpr, RK: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr,
                         CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # RQ = query_block // STRIDE reshaped queries per query block, RK = key_block // STRIDE per key block.
    NI: tl.constexpr = BLOCK_A // RQ
    NJ: tl.constexpr = BLOCK_C // RK
    # heavy (late, causal) query tiles first
    pid_a = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    kvh = h // G
    off = Lk - Lq

    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + kvh.to(tl.int64) * stride_kh
    o_base = Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh

    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < HEAD_DIM
    a0 = pid_a * BLOCK_A
    offs_a = a0 + tl.arange(0, BLOCK_A)
    n_a_valid = (Lq + STRIDE - 1) // STRIDE
    n_c_valid = (Lk + STRIDE - 1) // STRIDE
    a_valid = offs_a < n_a_valid

    # exclusive end of the reshaped keys visible from this tile's last valid row
    c_end = n_c_valid
    if CAUSAL:
        a_last = tl.minimum(a0 + BLOCK_A, n_a_valid) - 1
        a_last = tl.maximum(a_last, 0)
        c_end = tl.minimum((a_last * STRIDE + STRIDE - 1 + off) // STRIDE + 1, n_c_valid)
    n_ct = (c_end + BLOCK_C - 1) // BLOCK_C

    # ---- pass 1: online row max / row sum over every visible reshaped key (log2 domain)
    m_i = tl.full([BLOCK_A], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_A], dtype=tl.float32)
    for ct in range(0, n_ct):
        offs_c = ct * BLOCK_C + tl.arange(0, BLOCK_C)
        x = _xattn_tile(q_base, k_base, offs_a, offs_c, offs_d, dmask, Lq, Lk, stride_ql, stride_kl,
                        STRIDE, BLOCK_A, BLOCK_C, DOT_PRECISION)
        vis = (offs_c < n_c_valid)[None, :]
        if CAUSAL:
            vis = vis & (offs_c[None, :] * STRIDE <= offs_a[:, None] * STRIDE + STRIDE - 1 + off)
        x = tl.where(vis, x * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(x, 1))
        # c = 0 is visible from every row and sits in the first tile, so m_new is finite from tile 0 on
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(x - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new

    # ---- pass 2: normalised probabilities, reduced to block sums
    inv_l = tl.where(a_valid, 1.0 / l_i, 0.0)
    offs_i = a0 // RQ + tl.arange(0, NI)
    imask = offs_i < nq
    for ct in range(0, n_ct):
        offs_c = ct * BLOCK_C + tl.arange(0, BLOCK_C)
        x = _xattn_tile(q_base, k_base, offs_a, offs_c, offs_d, dmask, Lq, Lk, stride_ql, stride_kl,
                        STRIDE, BLOCK_A, BLOCK_C, DOT_PRECISION)
        vis = (offs_c < n_c_valid)[None, :]
        if CAUSAL:
            vis = vis & (offs_c[None, :] * STRIDE <= offs_a[:, None] * STRIDE + STRIDE - 1 + off)
        p = tl.math.exp2(x * qk_scale - m_i[:, None]) * inv_l[:, None]
        p = tl.where(vis, p, 0.0)
        if RK > 1:
            pj = tl.sum(tl.reshape(p, [BLOCK_A, NJ, RK]), axis=2)  # [BLOCK_A, NJ]
        else:
            pj = p
        if RQ > 1:
            blk = tl.sum(tl.reshape(pj, [NI, RQ, NJ]), axis=1)  # [NI, NJ]
        else:
            blk = pj
        offs_j = ct * NJ + tl.arange(0, NJ)
        ptrs = o_base + offs_i.to(tl.int64)[:, None] * stride_oi + offs_j[None, :]
        tl.store(ptrs, blk, mask=imask[:, None] & (offs_j < nk)[None, :])

    # ---- exact zeros beyond the causal frontier (upper blocks are never left uninitialised)
    zero = tl.zeros([NI, NJ], dtype=tl.float32)
    n_ct_all = (nk * RK + BLOCK_C - 1) // BLOCK_C
    for ct in range(n_ct, n_ct_all):
        offs_j = ct * NJ + tl.arange(0, NJ)
        ptrs = o_base + offs_i.to(tl.int64)[:, None] * stride_oi + offs_j[None, :]
        tl.store(ptrs, zero, mask=imask[:, None] & (offs_j < nk)[None, :])


@triton.jit
def _xattn_tile_pipelined(q_base, k_base, offs_a, offs_c, Lq, Lk, stride_ql, stride_kl,
                          HEAD_DIM: tl.constexpr, STRIDE: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr,
                          BLOCK_K: tl.constexpr, KSPLIT: tl.constexpr, NUM_STAGES: tl.constexpr,
                          DOT_PRECISION: tl.constexpr):
    # X tile = Q'[a, :] K'[c, :]^T over the inner dimension S*D: a runtime, software-pipelined loop over the
    # S * KSPLIT chunks of BLOCK_K columns (KSPLIT * BLOCK_K = D padded to a power of two).
    acc = tl.zeros([BLOCK_A, BLOCK_C], dtype=tl.float32)
    q_rows0 = offs_a.to(tl.int64) * STRIDE + (STRIDE - 1)
    k_rows0 = offs_c.to(tl.int64) * STRIDE
    for kk in tl.range(0, STRIDE * KSPLIT, num_stages=NUM_STAGES):
        s = kk // KSPLIT
        offs_d = (kk % KSPLIT) * BLOCK_K + tl.arange(0, BLOCK_K)
        dmask = offs_d < HEAD_DIM
        q_rows = q_rows0 - s
        k_rows = k_rows0 + s
        qt = tl.load(q_base + q_rows[:, None] * stride_ql + offs_d[None, :],
                     mask=(q_rows < Lq)[:, None] & dmask[None, :], other=0.0)  # [BLOCK_A, BLOCK_K]
        kt = tl.load(k_base + k_rows[:, None] * stride_kl + offs_d[None, :],
                     mask=(k_rows < Lk)[:, None] & dmask[None, :], other=0.0)  # [BLOCK_C, BLOCK_K]
        acc = tl.dot(qt, tl.trans(kt), acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _xattn_tile_tma(q_desc, k_desc, b, h, kvh, a0, c0,
                    STRIDE: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
                    KSPLIT: tl.constexpr, NUM_STAGES: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # the same S * KSPLIT chunks as _xattn_tile_pipelined, each operand one TMA box of the [B, H, S, L//S, D] view
    acc = tl.zeros([BLOCK_A, BLOCK_C], dtype=tl.float32)
    for kk in tl.range(0, STRIDE * KSPLIT, num_stages=NUM_STAGES):
        s = kk // KSPLIT
        d0 = (kk % KSPLIT) * BLOCK_K
        qt = q_desc.load([b, h, STRIDE - 1 - s, a0, d0]).reshape([BLOCK_A, BLOCK_K])
        kt = k_desc.load([b, kvh, s, c0, d0]).reshape([BLOCK_C, BLOCK_K])
        acc = tl.dot(qt, tl.trans(kt), acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _store_tile_stats(x, ct, offs_a, a_valid, a_store, n_c_valid, off, qk_scale, p_base, tm_base, ts_base,
                      stride_pa, stride_ta, nk,
                      STRIDE: tl.constexpr, RK: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr,
                      CAUSAL: tl.constexpr):
    # per key tile: tile max (log2 domain), tile sum and per-key-block partial sums of exp2(x - tile max)
    NJ: tl.constexpr = BLOCK_C // RK
    offs_c = ct * BLOCK_C + tl.arange(0, BLOCK_C)
    vis = a_valid[:, None] & (offs_c < n_c_valid)[None, :]
    if CAUSAL:
        vis = vis & (offs_c[None, :] * STRIDE <= offs_a[:, None] * STRIDE + STRIDE - 1 + off)
    x = tl.where(vis, x * qk_scale, float("-inf"))
    m_t = tl.max(x, 1)  # -inf where the row sees nothing in this tile
    m_safe = tl.where(m_t == float("-inf"), 0.0, m_t)
    p = tl.math.exp2(x - m_safe[:, None])  # exactly 0 on invisible lanes
    if RK > 1:
        pj = tl.sum(tl.reshape(p, [BLOCK_A, NJ, RK]), axis=2)  # [BLOCK_A, NJ]
    else:
        pj = p
    a64 = offs_a.to(tl.int64)
    offs_j = ct * NJ + tl.arange(0, NJ)
    tl.store(p_base + a64[:, None] * stride_pa + offs_j[None, :], pj,
             mask=a_store[:, None] & (offs_j < nk)[None, :])
    t_off = a64 * stride_ta + ct
    tl.store(tm_base + t_off, m_t, mask=a_store)
    tl.store(ts_base + t_off, tl.sum(pj, 1), mask=a_store)


@triton.jit(do_not_specialize=["Lq", "Lk", "nk", "n_a_total", "stride_pb", "stride_ph", "stride_pa",
                               "stride_tb", "stride_th", "stride_ta"])
def _xattn_partial_kernel(Q, K, Part, TMax, TSum, Q_DESC, K_DESC,
                          stride_qb, stride_qh, stride_ql,
                          stride_kb, stride_kh, stride_kl,
                          stride_pb, stride_ph, stride_pa,
                          stride_tb, stride_th, stride_ta,
                          H, G, Lq, Lk, nk, n_a_total, qk_scale,
                          HEAD_DIM: tl.constexpr, BLOCK_K: tl.constexpr, KSPLIT: tl.constexpr, STRIDE: tl.constexpr,
                          RK: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr,
                          CAUSAL: tl.constexpr, NUM_STAGES: tl.constexpr, FLATTEN: tl.constexpr,
                          USE_TMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # pass A of the single-pass method: one GEMM walk over the visible key tiles, per-tile max / sums to scratch
    pid_a = tl.num_programs(0) - 1 - tl.program_id(0)  # heavy (late, causal) query tiles first
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    kvh = h // G
    off = Lk - Lq

    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + kvh.to(tl.int64) * stride_kh
    p_base = Part + b.to(tl.int64) * stride_pb + h.to(tl.int64) * stride_ph
    tm_base = TMax + b.to(tl.int64) * stride_tb + h.to(tl.int64) * stride_th
    ts_base = TSum + b.to(tl.int64) * stride_tb + h.to(tl.int64) * stride_th

    a0 = pid_a * BLOCK_A
    offs_a = a0 + tl.arange(0, BLOCK_A)
    n_a_valid = (Lq + STRIDE - 1) // STRIDE
    n_c_valid = (Lk + STRIDE - 1) // STRIDE
    a_valid = offs_a < n_a_valid
    a_store = offs_a < n_a_total

    c_end = n_c_valid
    if CAUSAL:
        a_last = tl.minimum(a0 + BLOCK_A, n_a_valid) - 1
        a_last = tl.maximum(a_last, 0)
        c_end = tl.minimum((a_last * STRIDE + STRIDE - 1 + off) // STRIDE + 1, n_c_valid)
    n_ct = (c_end + BLOCK_C - 1) // BLOCK_C

    # FLATTEN fuses the key-tile loop with the inner S-chunk loop, so the pipeline does not drain per key tile.
    # Key tiles [0, n_tma) through TMA: needs a query tile and key tiles clear of a partial last group
    n_tma = 0
    if USE_TMA:
        q_whole = (Lq % STRIDE == 0) | (a0 + BLOCK_A <= Lq // STRIDE)
        n_ct_whole = tl.where(Lk % STRIDE == 0, n_ct, tl.minimum(n_ct, (Lk // STRIDE) // BLOCK_C))
        n_tma = tl.where(q_whole, n_ct_whole, 0)
        for ct in tl.range(0, n_tma, flatten=FLATTEN):
            x = _xattn_tile_tma(Q_DESC, K_DESC, b, h, kvh, a0, ct * BLOCK_C,
                                STRIDE, BLOCK_A, BLOCK_C, BLOCK_K, KSPLIT, NUM_STAGES, DOT_PRECISION)
            _store_tile_stats(x, ct, offs_a, a_valid, a_store, n_c_valid, off, qk_scale, p_base, tm_base, ts_base,
                              stride_pa, stride_ta, nk, STRIDE, RK, BLOCK_A, BLOCK_C, CAUSAL)
    for ct in tl.range(n_tma, n_ct, flatten=FLATTEN):  # pointer loads: the rest (all tiles without TMA)
        offs_c = ct * BLOCK_C + tl.arange(0, BLOCK_C)
        x = _xattn_tile_pipelined(q_base, k_base, offs_a, offs_c, Lq, Lk, stride_ql, stride_kl,
                                  HEAD_DIM, STRIDE, BLOCK_A, BLOCK_C, BLOCK_K, KSPLIT, NUM_STAGES, DOT_PRECISION)
        _store_tile_stats(x, ct, offs_a, a_valid, a_store, n_c_valid, off, qk_scale, p_base, tm_base, ts_base,
                          stride_pa, stride_ta, nk, STRIDE, RK, BLOCK_A, BLOCK_C, CAUSAL)


@triton.jit(do_not_specialize=["Lq", "Lk", "nk", "stride_pb", "stride_ph", "stride_pa", "stride_tb", "stride_th",
                               "stride_ta", "stride_ob", "stride_oh", "stride_oi"])
def _xattn_finalize_kernel(Part, TMax, TSum, Out,
                           stride_pb, stride_ph, stride_pa,
                           stride_tb, stride_th, stride_ta,
                           stride_ob, stride_oh, stride_oi,
                           H, Lq, Lk, nk,
                           STRIDE: tl.constexpr, RQ: tl.constexpr, RK: tl.constexpr, RQP: tl.constexpr,
                           BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr,
                           CAUSAL: tl.constexpr):
    # pass B: per row max / normaliser from the tile statistics, then rescaled block sums of one query block
    NJ: tl.constexpr = BLOCK_C // RK
    i = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    off = Lk - Lq
    p_base = Part + b.to(tl.int64) * stride_pb + h.to(tl.int64) * stride_ph
    tm_base = TMax + b.to(tl.int64) * stride_tb + h.to(tl.int64) * stride_th
    ts_base = TSum + b.to(tl.int64) * stride_tb + h.to(tl.int64) * stride_th
    o_base = Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + i.to(tl.int64) * stride_oi

    r = tl.arange(0, RQP)
    offs_a = i * RQ + r
    valid = (r < RQ) & (offs_a * STRIDE < Lq)
    a64 = offs_a.to(tl.int64)
    n_c_valid = (Lk + STRIDE - 1) // STRIDE
    if CAUSAL:
        c_end = tl.minimum((offs_a * STRIDE + STRIDE - 1 + off) // STRIDE + 1, n_c_valid)
        J = (tl.minimum((i + 1) * (RQ * STRIDE), Lq) - 1 + off) // (RK * STRIDE)  # last valid key block
    else:
        c_end = tl.zeros([RQP], tl.int32) + n_c_valid
        J = nk - 1
    # tiles t < n_t_row were written by pass A and each holds at least one visible key of the row
    n_t_row = tl.where(valid, (c_end + BLOCK_C - 1) // BLOCK_C, 0)
    n_t_blk = tl.max(n_t_row, 0)

    m = tl.full([RQP], float("-inf"), tl.float32)
    l = tl.zeros([RQP], tl.float32)
    for t0 in range(0, n_t_blk, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        msk = offs_t[None, :] < n_t_row[:, None]
        t_off = a64[:, None] * stride_ta + offs_t[None, :]
        tm = tl.load(tm_base + t_off, mask=msk, other=float("-inf"))
        ts = tl.load(ts_base + t_off, mask=msk, other=0.0)
        m_new = tl.maximum(m, tl.max(tm, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l = l * tl.math.exp2(m - m_safe) + tl.sum(ts * tl.math.exp2(tm - m_safe[:, None]), 1)
        m = m_new
    m_safe = tl.where(valid, m, 0.0)
    inv_l = tl.where(valid, 1.0 / tl.where(valid, l, 1.0), 0.0)

    for j0 in range(0, nk, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        t_j = offs_j // NJ
        msk = (t_j[None, :] < n_t_row[:, None]) & (offs_j <= J)[None, :] & (offs_j < nk)[None, :]
        pt = tl.load(p_base + a64[:, None] * stride_pa + offs_j[None, :], mask=msk, other=0.0)
        tm = tl.load(tm_base + a64[:, None] * stride_ta + t_j[None, :], mask=msk, other=float("-inf"))
        w = tl.math.exp2(tm - m_safe[:, None]) * inv_l[:, None]
        blk = tl.sum(tl.where(msk, pt * w, 0.0), 0)  # exact 0 in upper blocks
        tl.store(o_base + offs_j, blk, mask=offs_j < nk)


def _bhl_strides(t, layout: str) -> tuple:
    st = strides(t)
    if layout == "BHSD":
        return st[0], st[1], st[2], st[3]
    return st[0], st[2], st[1], st[3]


def _bhld_shape(t, layout: str) -> tuple:
    s = shape(t)
    if len(s) != 4:
        raise ValueError(f"expected a 4-D tensor in layout {layout}, got shape {s}")
    if layout == "BHSD":
        return s
    return s[0], s[2], s[1], s[3]


def _grouped_descriptor(t, bhl_shape, bhl_strides, S: int, block_rows: int, block_k: int, dt: str):
    """TMA descriptor of the ``[B, H, S, L // S, D]`` view of ``t`` (``bhl_strides``: its B, H, L strides) with
    box ``[1, 1, 1, block_rows, block_k]``, or None when it is not 16-byte aligned (``_tma.descriptor``)."""
    (B, H, L, D), (sb, sh, sl) = bhl_shape, bhl_strides
    return descriptor(t, (B, H, S, L // S, D), (sb, sh, sl, S * sl, 1), (1, 1, 1, block_rows, block_k),
                      kernel="psa_estimate_scores", dtype=dt)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


_METHODS = ("two_pass", "single_pass")
_FIN_BLOCK_T = 32  # tiles per step of pass B's max / normaliser loop
_FIN_BLOCK_J = 128  # key blocks per step of pass B's block-sum loop


# Single-pass defaults (pass A): 128 x 256 output tiles, D in chunks of 64, 3 stages (16-bit) / 2 (fp32), 8 warps.
# Each tile re-reads its Q' and K' rows from L2, so the tile's arithmetic intensity is BA*BC/(BA+BC) FLOP per
# byte; wider key tiles win although ptxas reports a few spills at 128 x 256. Measured on an H100 (bf16, Qwen
# shapes, benchmarks/bench_estimate.py sweep, 2026-11-27): 32k 1.17 ms (128 x 128, 5 stages: 1.09; the former
# default 128 x 128 x 4: 1.30), 128k 13.1 ms (128 x 128: 16.7-17.9). Two-pass: 128 x 128 x 2 stages 2.35 ms at
# 32k against 3.83 ms with 128 x 64.
# TMA path (sm_90), stride 16: 64-row query tiles and 4 stages (H200, --compare-tma, 2026-12-01 22:45 UTC: 32k 0.747
# ms against 0.803 at 128 rows / 3 stages; 128k pass A 9.18 against 9.36 ms); the same 256-key tiles. Stride 8 keeps
# 128 rows / 3 stages (_tma_tiles). Search space (block_a,
# block_c, block_k, num_stages, num_warps, flatten), all within 227 KiB of shared memory for bf16 D 128: block_a
# 64 / 128 / 256, block_c 64 / 128 / 256, block_k 64 / 128, 2-5 stages, 4 / 8 warps, flatten off / on; the points
# are benchmarks/bench_estimate.py TMA_SPACE, timed against the pointer path by its --compare-tma table (H200
# baseline, pointer path, bf16 Qwen shapes at 32k: 1.41 ms, about 170 TFLOP/s of GEMM work).
_SP_BLOCK_C = 256
_SP_BLOCK_K = 64
_TP_BLOCK_C = 128


def _default_block_c(RK: int, single: bool = False) -> int:
    return max(_SP_BLOCK_C if single else _TP_BLOCK_C, RK)


def _tma_tiles(stride: int) -> bool:
    # the 64-row / 4-stage TMA tiles won at stride 16 (32k 0.747 vs 0.803 ms); at stride 8 (the paper preset)
    # the 128-row / 3-stage tiles stay (32k 1.215 vs 1.276 ms; H200 --compare-tma, 2026-12-01)
    return stride >= 16 and tma_available()


def _pick_block_a(n_a_total: int, BH: int, RQ: int, dt: str, whole_blocks: bool, stride: int) -> int:
    # largest query tile (better reuse of each K tile) that still launches about one wave of programs on a large
    # GPU; short chunks against long contexts fall back to small tiles for parallelism
    lo = max(16, RQ) if whole_blocks else 16
    # the single-pass kernel's TMA path (sm_90) at stride 16 is fastest with 64-row tiles (_tma_tiles)
    top = (64, 32, 16) if dt == "float32" or (not whole_blocks and _tma_tiles(stride)) else (128, 64, 32, 16)
    cands = [c for c in top if c >= lo]
    cands = cands or [lo]
    return next((c for c in cands if triton.cdiv(n_a_total, c) * BH >= _MIN_PROGRAMS), cands[-1])


def estimate_scratch_shapes(B: int, H_q: int, Lq: int, Lk: int, *, query_block: int, key_block: int, stride: int,
                            block_c: int | None = None) -> dict:
    """Scratch the single-pass method needs: ``{name: (shape, dtype_name)}`` for ``part``, ``tmax`` and ``tsum``.

    ``part [B, H_q, n_a_total, nk]`` and ``tmax`` / ``tsum [B, H_q, n_a_total, n_ct_max]`` (fp32), with
    ``n_a_total = nq * query_block / stride`` and ``n_ct_max = ceil(nk * key_block / stride / block_c)``. Pass the
    same ``block_c`` as to :func:`psa_estimate_scores` (``None``: its default). ``part`` dominates: 4 bytes per
    (reshaped query, key block), e.g. 235 MB at Lq = Lk = 32k, H_q = 28, 128/32/16.
    """
    S = int(stride)
    nq, nk = -(-int(Lq) // query_block), -(-int(Lk) // key_block)
    RQ, RK = query_block // S, key_block // S
    BLOCK_C = int(block_c) if block_c else _default_block_c(RK, single=True)
    n_a_total = nq * RQ
    n_ct_max = -(-(nk * RK) // BLOCK_C)
    return {"part": ((B, H_q, n_a_total, nk), "float32"),
            "tmax": ((B, H_q, n_a_total, n_ct_max), "float32"),
            "tsum": ((B, H_q, n_a_total, n_ct_max), "float32")}


def psa_estimate_scores(q, k, out, *, query_block: int, key_block: int, stride: int, causal: bool,
                        scale: float | None, layout: str, block_a: int | None = None,
                        block_c: int | None = None, num_warps: int | None = None,
                        num_stages: int | None = None, scratch=None, method: str | None = None,
                        flatten: bool = False, block_k: int | None = None, use_tma: bool | None = None,
                        geometry=None) -> None:
    """XAttention block scores (docs/ALGORITHM.md §6.1) into the caller's ``out``.

    Args:
        q: ``[B, H_q, Lq, D]`` (``"BHSD"``) or ``[B, Lq, H_q, D]`` (``"BSHD"``), fp16 / bf16 / fp32, unit stride on D.
        k: ``[B, H_kv, Lk, D]`` in the same layout and dtype; ``H_q % H_kv == 0`` and head h reads KV head
            ``h // (H_q // H_kv)``.
        out: contiguous fp32 ``[B, H_q, nq, nk]`` with ``nq = ceil(Lq / query_block)``, ``nk = ceil(Lk / key_block)``.
            Every element is written (exact zeros in upper blocks). Each row sums to the number of valid
            reshaped queries of its query block.
        query_block, key_block: block sizes, both multiples of ``stride``.
        stride: S, a power of two with ``2 <= S <= min(query_block, key_block)``.
        causal: bottom-right causal visibility (``off = Lk - Lq``, needs ``Lq <= Lk``); else every valid key.
        scale: softmax scale λ (``None`` -> ``1/sqrt(D)``); the logits are ``X * λ / S``.
        layout: ``"BHSD"`` or ``"BSHD"``.
        block_a, block_c, num_warps, num_stages: tuning overrides (reshaped queries / keys per tile; for the
            single-pass method they apply to its GEMM pass A).
        flatten: single-pass tuning knob: fuse pass A's key-tile loop with its S-chunk loop (``tl.range(...,
            flatten=True)``) so the software pipeline does not drain at every key tile.
        block_k: single-pass tuning knob: columns of D per pipeline step of pass A (a power of two >= 16 dividing
            D padded to a power of two; ``None``: 64). Smaller chunks cut the shared memory per stage, which makes
            room for more stages or a wider ``block_c``.
        use_tma: single-pass knob: ``None`` / ``True``: pass A loads through TMA descriptors where the target has
            TMA (sm_90+; tiles touching a partial last stride group keep pointer loads); ``False``: pointer loads
            everywhere (what sm_80/86/89 run).
        scratch: ``alloc(shape, dtype_name)`` returning a new tensor-like on q's device, or ``None``. The
            single-pass method takes its fp32 scratch from it (sizes: :func:`estimate_scratch_shapes`).
        method: ``"two_pass"`` (GEMM twice, no scratch), ``"single_pass"`` (GEMM once + a cheap finalize pass;
            needs ``scratch``) or ``None``: single-pass when ``scratch`` is given, else two-pass.
        geometry: the :class:`~.geometry.CallGeometry` of exactly these q, k (the pipeline passes its record, or
            ``record.narrowed(...)`` for a plan chunk); q and k are then not read again.

    Lengths are runtime kernel arguments; constexprs are the block sizes, S, D, the causal flag and the tiles.
    """
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    if method is None:
        method = "single_pass" if scratch is not None else "two_pass"
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS} or None, got {method!r}")
    if use_tma not in (None, True, False):
        raise ValueError(f"use_tma must be None, True or False, got {use_tma!r}")
    if method == "single_pass" and scratch is None:
        raise ValueError("method='single_pass' needs scratch=alloc(shape, dtype_name)")
    if geometry is None:
        B, Hq, Lq, D = _bhld_shape(q, layout)
        Bk, Hkv, Lk, Dk = _bhld_shape(k, layout)
        if (Bk, Dk) != (B, D):
            raise ValueError(f"q {shape(q)} and k {shape(k)} disagree on batch or head dim ({layout})")
        if D not in _HEAD_DIMS:
            raise ValueError(f"head dim must be one of {_HEAD_DIMS}, got {D}")
        if Hkv < 1 or Hq % Hkv:
            raise ValueError(f"H_q={Hq} must be a multiple of H_kv={Hkv}")
        qdt, kdt = dtype_name(q), dtype_name(k)
        if qdt != kdt or qdt not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"q and k must share a dtype in (float16, bfloat16, float32), got {qdt} and {kdt}")
    else:  # validated by call_geometry
        geometry.check(layout=layout, query_block=query_block, key_block=key_block, causal=bool(causal))
        B, Hq, Hkv, Lq, Lk, D, qdt = (geometry.B, geometry.Hq, geometry.Hkv, geometry.Lq, geometry.Lk, geometry.D,
                                      geometry.dtype)
    S = int(stride)
    if S < 2 or S & (S - 1) or S > min(query_block, key_block) or query_block % S or key_block % S:
        raise ValueError(f"stride={S} must be a power of two with 2 <= stride <= min(query_block={query_block}, "
                         f"key_block={key_block}) dividing both")
    if Lq < 1 or Lk < 1:
        raise ValueError(f"empty sequence: Lq={Lq}, Lk={Lk}")
    if causal and Lq > Lk:
        raise ValueError(f"causal estimation needs Lq <= Lk, got Lq={Lq}, Lk={Lk}")
    nq, nk = -(-Lq // query_block), -(-Lk // key_block)
    if shape(out) != (B, Hq, nq, nk) or dtype_name(out) != "float32":
        raise ValueError(f"out must be float32 {(B, Hq, nq, nk)}, got {dtype_name(out)} {shape(out)}")
    so = strides(out)
    if so[3] != 1:
        raise ValueError(f"out must have unit stride on its last axis, got strides {so}")
    if geometry is None:
        (sqb, sqh, sql, sqd), (skb, skh, skl, skd) = _bhl_strides(q, layout), _bhl_strides(k, layout)
    else:
        (sqb, sqh, sql, sqd), (skb, skh, skl, skd) = geometry.q_strides, geometry.k_strides
    if sqd != 1 or skd != 1:
        raise ValueError("q and k need unit stride along D")

    RQ, RK = query_block // S, key_block // S
    if RQ & (RQ - 1) or RK & (RK - 1):
        raise ValueError(f"query_block/stride={RQ} and key_block/stride={RK} must be powers of two")
    n_a_total = nq * RQ
    single = method == "single_pass"
    BLOCK_A = int(block_a) if block_a else _pick_block_a(n_a_total, B * Hq, RQ, qdt, whole_blocks=not single,
                                                                stride=S)
    BLOCK_C = int(block_c) if block_c else _default_block_c(RK, single)
    if BLOCK_C % RK or min(BLOCK_A, BLOCK_C) < 16 or BLOCK_A & (BLOCK_A - 1) or BLOCK_C & (BLOCK_C - 1) \
            or (not single and BLOCK_A % RQ):
        raise ValueError(f"tiles block_a={BLOCK_A}, block_c={BLOCK_C} must be powers of two >= 16, block_c a multiple "
                         f"of key_block/stride={RK}" + ("" if single else f", block_a of query_block/stride={RQ}"))
    lam = (1.0 / math.sqrt(D)) if scale is None else float(scale)
    qk_scale = lam / S * _LOG2E
    dot_precision = "ieee" if qdt == "float32" else "tf32"
    grid = (triton.cdiv(n_a_total, BLOCK_A), B * Hq)
    if not single:
        _xattn_scores_kernel[grid](
            q, k, out,
            sqb, sqh, sql, skb, skh, skl, so[0], so[1], so[2],
            Hq, Hq // Hkv, Lq, Lk, nq, nk, qk_scale,
            HEAD_DIM=D, BLOCK_D=_next_pow2(D), STRIDE=S, RQ=RQ, RK=RK, BLOCK_A=BLOCK_A, BLOCK_C=BLOCK_C,
            CAUSAL=bool(causal), DOT_PRECISION=dot_precision,
            num_warps=num_warps or (8 if BLOCK_A * BLOCK_C >= 128 * 64 else 4),
            num_stages=num_stages or 2,
        )
        return

    shapes = estimate_scratch_shapes(B, Hq, Lq, Lk, query_block=query_block, key_block=key_block, stride=S,
                                     block_c=BLOCK_C)
    bufs = {}
    for name, (shp, dt) in shapes.items():
        t = scratch(shp, dt)
        if shape(t) != shp or dtype_name(t) != dt:
            raise ValueError(f"scratch({shp}, {dt!r}) returned {dtype_name(t)} {shape(t)}")
        st = strides(t)
        if st[3] != 1:
            raise ValueError(f"scratch {name} needs unit stride on its last axis, got strides {st}")
        bufs[name] = (t, st)
    part, sp = bufs["part"]
    tmax, stm = bufs["tmax"]
    tsum, sts = bufs["tsum"]
    if sts != stm:
        raise ValueError(f"scratch tmax and tsum must share strides, got {stm} and {sts}")
    BLOCK_D = _next_pow2(D)
    BLOCK_K = int(block_k) if block_k else min(_SP_BLOCK_K, BLOCK_D)
    if BLOCK_K < 16 or BLOCK_K & (BLOCK_K - 1) or BLOCK_D % BLOCK_K:
        raise ValueError(f"block_k={BLOCK_K} must be a power of two >= 16 dividing {BLOCK_D}")
    q_desc = k_desc = None
    # a TMA box dimension holds at most 256 elements; a length below S has no whole stride group to view
    if use_tma is not False and tma_available() and max(BLOCK_A, BLOCK_C) <= 256 and min(Lq, Lk) >= S:
        q_desc = _grouped_descriptor(q, (B, Hq, Lq, D), (sqb, sqh, sql), S, BLOCK_A, BLOCK_K, qdt)
        if q_desc is not None:  # one fallback per launch, not per tensor
            k_desc = _grouped_descriptor(k, (B, Hkv, Lk, D), (skb, skh, skl), S, BLOCK_C, BLOCK_K, qdt)
    tma = q_desc is not None and k_desc is not None
    ns = num_stages or (2 if qdt == "float32" else (4 if tma and _tma_tiles(S) else 3))
    _xattn_partial_kernel[grid](
        q, k, part, tmax, tsum, q_desc if tma else None, k_desc if tma else None,
        sqb, sqh, sql, skb, skh, skl, sp[0], sp[1], sp[2], stm[0], stm[1], stm[2],
        Hq, Hq // Hkv, Lq, Lk, nk, n_a_total, qk_scale,
        HEAD_DIM=D, BLOCK_K=BLOCK_K, KSPLIT=BLOCK_D // BLOCK_K, STRIDE=S, RK=RK, BLOCK_A=BLOCK_A, BLOCK_C=BLOCK_C,
        CAUSAL=bool(causal), NUM_STAGES=ns, FLATTEN=bool(flatten), USE_TMA=tma, DOT_PRECISION=dot_precision,
        num_warps=num_warps or (8 if BLOCK_A * BLOCK_C >= 128 * 64 else 4),
        num_stages=ns,
    )
    _xattn_finalize_kernel[(nq, B * Hq)](
        part, tmax, tsum, out,
        sp[0], sp[1], sp[2], stm[0], stm[1], stm[2], so[0], so[1], so[2],
        Hq, Lq, Lk, nk,
        STRIDE=S, RQ=RQ, RK=RK, RQP=max(2, RQ), BLOCK_C=BLOCK_C, BLOCK_T=_FIN_BLOCK_T, BLOCK_J=_FIN_BLOCK_J,
        CAUSAL=bool(causal), num_warps=4, num_stages=2,
    )
