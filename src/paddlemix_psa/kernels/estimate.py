"""XAttention antidiagonal block-importance estimator (PSA-SPEC §6.1, §6.2, §6.4).

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
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

from ._tensorlike import dtype_name, shape, strides

__all__ = ["psa_estimate_scores"]

_HEAD_DIMS = (64, 80, 96, 128)
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


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def psa_estimate_scores(q, k, out, *, query_block: int, key_block: int, stride: int, causal: bool,
                        scale: float | None, layout: str, block_a: int | None = None,
                        block_c: int | None = None, num_warps: int | None = None,
                        num_stages: int | None = None) -> None:
    """XAttention block scores (PSA-SPEC §6.1) into the caller's ``out``.

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
        block_a, block_c, num_warps, num_stages: tuning overrides (reshaped queries / keys per tile).

    Lengths are runtime kernel arguments; constexprs are the block sizes, S, D, the causal flag and the tiles.
    """
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
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
    sqb, sqh, sql, sqd = _bhl_strides(q, layout)
    skb, skh, skl, skd = _bhl_strides(k, layout)
    if sqd != 1 or skd != 1:
        raise ValueError("q and k need unit stride along D")

    RQ, RK = query_block // S, key_block // S
    n_a_total = nq * RQ
    if block_a:
        BLOCK_A = int(block_a)
    else:
        # largest query tile (better reuse of each K tile) that still launches about one wave of programs on a
        # large GPU; short chunks against long contexts fall back to small tiles for parallelism
        cands = [c for c in ((128, 64, 32, 16) if qdt != "float32" else (64, 32, 16)) if c >= max(16, RQ)]
        cands = cands or [max(16, RQ)]
        BLOCK_A = next((c for c in cands if triton.cdiv(n_a_total, c) * B * Hq >= _MIN_PROGRAMS), cands[-1])
    BLOCK_C = int(block_c) if block_c else max(64, RK)
    if BLOCK_A % RQ or BLOCK_C % RK or min(BLOCK_A, BLOCK_C) < 16 or BLOCK_A & (BLOCK_A - 1) \
            or BLOCK_C & (BLOCK_C - 1):
        raise ValueError(f"tiles block_a={BLOCK_A}, block_c={BLOCK_C} must be powers of two >= 16 and multiples of "
                         f"query_block/stride={RQ}, key_block/stride={RK}")
    lam = (1.0 / math.sqrt(D)) if scale is None else float(scale)
    qk_scale = lam / S * _LOG2E
    grid = (triton.cdiv(n_a_total, BLOCK_A), B * Hq)
    _xattn_scores_kernel[grid](
        q, k, out,
        sqb, sqh, sql, skb, skh, skl, so[0], so[1], so[2],
        Hq, Hq // Hkv, Lq, Lk, nq, nk, qk_scale,
        HEAD_DIM=D, BLOCK_D=_next_pow2(D), STRIDE=S, RQ=RQ, RK=RK, BLOCK_A=BLOCK_A, BLOCK_C=BLOCK_C,
        CAUSAL=bool(causal), DOT_PRECISION="ieee" if qdt == "float32" else "tf32",
        num_warps=num_warps or (8 if BLOCK_A * BLOCK_C >= 128 * 64 else 4),
        num_stages=num_stages or 2,
    )
