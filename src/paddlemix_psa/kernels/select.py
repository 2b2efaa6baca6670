"""Level-map selection (docs/ALGORITHM.md §7 + §8) and the level map -> index list (LUT) conversion.

``psa_select_levels``: one program per row (b, h_m, i). The order of §7 is (score descending, ties to the
smaller j), but only the scores are sorted: one ``tl.sort`` of a monotone int32 image of the fp32 scores (half
the data of a sort of (score, j) pairs). Along that order an fp32 cumsum gives ``E`` (energybound), or the rank
gives the topk level, so each level boundary is a count c of leading blocks; block j is among the first c iff its
score is above the c-th sorted score, or equal to it and among the first ``c - #above`` of its ties by j (a
cumsum over j). Levels therefore come out in j order, the forced rules F1-F6 run in the same registers, and
``out_map[b, h, i, :]`` is stored contiguously (every j < nk written exactly once). With ``lut``/``counts``
the same program also writes the row's index list (the fused path of the pipeline).

``psa_build_lut``: one program per row; per level 1, 2, 4, 8 an exclusive prefix sum places the kept valid
blocks (ascending j) after the previous levels; the rest of the row is zero padding.

Row lengths are runtime arguments; the padded row width ``NK_PAD = max(16, next_pow2(n_i))`` (rows launched in
buckets of equal width, see ``_row_buckets``) is the only
length-derived constexpr, so a new length recompiles only when it crosses a power of two.
"""

from __future__ import annotations

from collections.abc import Mapping

import triton
import triton.language as tl

from ._tensorlike import dtype_name, shape, strides
from .attn_fwd import first_masked_block

__all__ = ["psa_select_levels", "psa_build_lut", "ends_from_ratios", "COUNTER_NAMES", "CANONICAL_LEVELS"]

#: canonical level order of ``ends``
CANONICAL_LEVELS = (1, 2, 4, 8, 0)
#: slots of the optional int32 ``counters`` buffer (pairs each forced rule changed, cap demotions, rows)
COUNTER_NAMES = ("tail", "diagonal", "sink", "cap", "degenerate", "guard")
_MODES = ("energybound", "topk")


@triton.jit
def _top_set(mono, key, rank, c):
    """Membership, in j order, of the first ``c`` blocks of the order (score descending, ties to the smaller j).
    ``key`` is ``mono`` sorted descending: the c-th key is the threshold; blocks above it are in, and of the blocks
    equal to it the first ``c - #above`` by j (an inclusive count of ties over j)."""
    t = tl.sum(tl.where(rank == c - 1, key, 0), axis=0)
    member = mono >= t
    # at least the first c blocks are >= t; only when ties at t straddle the boundary does j decide among them
    if (c > 0) & (tl.sum(member.to(tl.int32), axis=0) > c):
        above = mono > t
        tie = mono == t
        n_tie_in = c - tl.sum(above.to(tl.int32), axis=0)
        member = above | (tie & (tl.cumsum(tie.to(tl.int32), axis=0) <= n_tie_in))
    return (c > 0) & member


@triton.jit
def _pair_sums(lo, hi):
    """The sums of two non-negative counts (each sum < 2^31) from ONE reduction over an int64 pair."""
    s = tl.sum(lo.to(tl.int64) + (hi.to(tl.int64) << 32), axis=0)
    return (s - ((s >> 32) << 32)).to(tl.int32), (s >> 32).to(tl.int32)


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min_combine(a, b):
    return tl.minimum(a, b)


@triton.jit
def _write_index_list(lv, j, valid, l_row, c_row, runs_ptr, jfull, lut_width, NK_PAD: tl.constexpr,
                      RUN: tl.constexpr):
    """One row of the index list from its levels ``lv`` (j order): per level 1, 2, 4, 8 an exclusive prefix sum
    places the kept valid blocks (ascending j) after the previous levels, then zero padding to ``lut_width``.
    With ``RUN > 0`` the level-1 group starts with the row's runs: every maximal stretch of consecutive level-1
    blocks that are complete and visible to the whole query block (j < jfull, attn_fwd.first_masked_block)
    gives its first ``RUN * floor(length / RUN)`` blocks, which the kernel loads as slabs of RUN blocks (TMA;
    a slab is exact at any row offset, so stretches need no alignment). The other level-1 blocks follow in
    ascending j, so the masked ones stay last."""
    one = (valid & (lv == 1)).to(tl.int32)
    f2 = (valid & (lv == 2)).to(tl.int32)
    f4 = (valid & (lv == 4)).to(tl.int32)
    f8 = (valid & (lv == 8)).to(tl.int32)
    in_run = one * 0
    if RUN > 0:
        ok = (one > 0) & (j < jfull)
        # the stretch around j: (last non-eligible index before it, first one after it), by two scans
        before = tl.associative_scan(tl.where(ok, -1, j), 0, _max_combine)
        after = tl.associative_scan(tl.where(ok, NK_PAD, j), 0, _min_combine, reverse=True)
        length = after - before - 1
        in_run = (ok & (j - before - 1 < (length // RUN) * RUN)).to(tl.int32)
    rest = one - in_run
    n_run, n_rest = _pair_sums(in_run, rest)
    n2, n4 = _pair_sums(f2, f4)
    n8 = tl.sum(f8, axis=0)
    # each kept block's slot: its group's start plus an exclusive prefix count within the group; one store
    pos = tl.where(rest > 0, n_run + tl.cumsum(rest, axis=0) - rest, 0)
    if RUN > 0:
        pos += tl.where(in_run > 0, tl.cumsum(in_run, axis=0) - in_run, 0)
    pos += tl.where(f2 > 0, n_run + n_rest + tl.cumsum(f2, axis=0) - f2, 0)
    pos += tl.where(f4 > 0, n_run + n_rest + n2 + tl.cumsum(f4, axis=0) - f4, 0)
    pos += tl.where(f8 > 0, n_run + n_rest + n2 + n4 + tl.cumsum(f8, axis=0) - f8, 0)
    tl.store(l_row + pos, j, mask=(one + f2 + f4 + f8) > 0)
    tl.store(c_row, n_run + n_rest)
    tl.store(c_row + 1, n2)
    tl.store(c_row + 2, n4)
    tl.store(c_row + 3, n8)
    if RUN > 0:
        tl.store(runs_ptr, n_run // RUN)
    base = n_run + n_rest + n2 + n4 + n8
    tl.store(l_row + j, tl.zeros([NK_PAD], dtype=tl.int32), mask=(j >= base) & (j < lut_width))
    for z0 in range(NK_PAD, lut_width, NK_PAD):        # padding beyond this bucket's width
        tl.store(l_row + z0 + j, tl.zeros([NK_PAD], dtype=tl.int32), mask=z0 + j < lut_width)


@triton.jit(do_not_specialize=["Lq", "Lk", "nq", "nk", "tail_start", "I0", "NI", "stride_sb", "stride_sh", "stride_si",
                               "stride_mb", "stride_mh", "stride_mi", "stride_cb", "stride_ch", "u1", "u2", "u4", "u8",
                               "stride_lb", "stride_lh", "stride_li", "stride_nb", "stride_nh", "stride_ni",
                               "stride_rb", "stride_rh", "lut_width"])
def _select_levels_kernel(Scores, Map, Cap, Counters, Lut, Counts, Runs,
                          stride_sb, stride_sh, stride_si,
                          stride_mb, stride_mh, stride_mi,
                          stride_cb, stride_ch,
                          stride_lb, stride_lh, stride_li,
                          stride_nb, stride_nh, stride_ni,
                          stride_rb, stride_rh, lut_width,
                          Hm, G, Lq, Lk, nq, nk, tail_start, I0, NI,
                          e1, e2, e4, e8, u1, u2, u4, u8,
                          QUERY_BLOCK: tl.constexpr, KEY_BLOCK: tl.constexpr, NK_PAD: tl.constexpr,
                          CAUSAL: tl.constexpr, TOPK: tl.constexpr, TAIL: tl.constexpr,
                          FORCE_SINK: tl.constexpr, HAS_CAP: tl.constexpr, HAS_COUNTERS: tl.constexpr,
                          WRITE_LUT: tl.constexpr, RUN: tl.constexpr):
    # rows are launched in buckets [I0, I0 + NI) of equal padded width NK_PAD (see _row_buckets)
    pid = tl.program_id(0)
    i = I0 + pid % NI
    bh = pid // NI
    h = bh % Hm
    b = bh // Hm
    off = Lk - Lq
    z_i = tl.minimum((i + 1) * QUERY_BLOCK, Lq) - 1 + off
    if CAUSAL:
        J = z_i // KEY_BLOCK
    else:
        J = nk - 1
    n = J + 1

    j = tl.arange(0, NK_PAD)
    valid = j <= J
    s_row = Scores + b.to(tl.int64) * stride_sb + h.to(tl.int64) * stride_sh + i.to(tl.int64) * stride_si
    sc = tl.load(s_row + j, mask=valid, other=0.0).to(tl.float32)
    sc = tl.where(sc == 0.0, 0.0, sc)  # -0.0 ties with +0.0

    # ---- sort the scores alone (descending; invalid lanes last), as an order-preserving int32 image
    bits = sc.to(tl.int32, bitcast=True)
    mono = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    mono = tl.where(valid, mono, -2147483648)
    key = tl.sort(mono, descending=True)
    rank = tl.arange(0, NK_PAD)

    # ---- §7: how many blocks (in rank order) each level boundary keeps; levels are monotone along the ranks
    if TOPK:
        n64 = n.to(tl.int64)
        c1 = tl.minimum(tl.maximum((u1 * n64 + 500000) // 1000000, 1), n64).to(tl.int32)
        c2 = tl.minimum(tl.maximum((u2 * n64 + 500000) // 1000000, 1), n64).to(tl.int32)
        c4 = tl.minimum(tl.maximum((u4 * n64 + 500000) // 1000000, 1), n64).to(tl.int32)
        c8 = tl.minimum(tl.maximum((u8 * n64 + 500000) // 1000000, 1), n64).to(tl.int32)
        n_degenerate = 0
    else:
        ss = (key ^ ((key >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
        vr = rank < n
        x = tl.where(vr, ss, 0.0)
        total = tl.sum(x, axis=0)
        E = tl.minimum(tl.cumsum(x, axis=0) / total, 1.0)
        E = tl.where(rank == n - 1, 1.0, E)
        c1, c2 = _pair_sums(vr & (E <= e1), vr & (E <= e2))
        c4, c8 = _pair_sums(vr & (E <= e4), vr & (E <= e8))
        good = (total > 0.0) & (total < float("inf"))  # NaN fails both
        n_degenerate = tl.where(good, 0, 1)
    # ... mapped back to j order: the first c blocks of (score descending, ties to the smaller j)
    lvl = tl.where(_top_set(mono, key, rank, c1), 1,
                   tl.where(_top_set(mono, key, rank, c2), 2,
                            tl.where(_top_set(mono, key, rank, c4), 4,
                                     tl.where(_top_set(mono, key, rank, c8), 8, 0))))
    if not TOPK:
        lvl = tl.where(good, lvl, 1)  # degenerate rows: every valid block at level 1
    lvl = tl.where(valid, lvl, 0)  # F2: upper (and padding) lanes -> 0

    # ---- §8 forced rules (the pairs each one changes are counted only for ``counters``)
    changed_tail = j < 0
    changed_diag = j < 0
    changed_sink = j < 0
    changed_cap = j < 0
    if TAIL:
        last_key = tl.minimum((j + 1) * KEY_BLOCK, Lk) - 1
        changed_tail = valid & ((z_i >= tail_start) | (last_key >= tail_start)) & (lvl != 1)
        lvl = tl.where(changed_tail, 1, lvl)
    if CAUSAL:
        changed_diag = valid & (j >= (i * QUERY_BLOCK + off) // KEY_BLOCK) & (lvl != 1)
        lvl = tl.where(changed_diag, 1, lvl)
    if FORCE_SINK:
        changed_sink = (j == 0) & (lvl != 1)
        lvl = tl.where(changed_sink, 1, lvl)
    if HAS_CAP:
        kvh = h // G
        c_row = Cap + b.to(tl.int64) * stride_cb + kvh.to(tl.int64) * stride_ch
        cap = tl.load(c_row + j, mask=valid, other=8).to(tl.int32)
        changed_cap = valid & (lvl > 1) & (cap < lvl)
        lvl = tl.where(changed_cap, cap, lvl)
    kept = tl.sum((valid & (lvl > 0)).to(tl.int32), axis=0)
    n_guard = kept * 0
    if kept == 0:  # F6: the top-ranked valid block (highest score, smallest j among ties)
        top = tl.min(tl.where(valid & (mono == tl.max(mono, axis=0)), j, NK_PAD), axis=0)
        n_guard = tl.sum((j == top).to(tl.int32), axis=0)
        lvl = tl.where(j == top, 1, lvl)

    m_row = Map + b.to(tl.int64) * stride_mb + h.to(tl.int64) * stride_mh + i.to(tl.int64) * stride_mi
    tl.store(m_row + j, lvl.to(tl.int8), mask=j < nk)
    # upper blocks beyond this bucket's width are never left unwritten
    for z0 in range(NK_PAD, nk, NK_PAD):
        tl.store(m_row + z0 + j, tl.zeros([NK_PAD], dtype=tl.int8), mask=z0 + j < nk)
    if WRITE_LUT:  # the index list of the same row, from the levels still in registers
        jfull = first_masked_block(i, off, Lk, QUERY_BLOCK, KEY_BLOCK, CAUSAL)
        _write_index_list(lvl, j, valid & (j < nk),
                          Lut + b.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh + i.to(tl.int64) * stride_li,
                          Counts + b.to(tl.int64) * stride_nb + h.to(tl.int64) * stride_nh + i.to(tl.int64) * stride_ni,
                          Runs + b.to(tl.int64) * stride_rb + h.to(tl.int64) * stride_rh + i, jfull, lut_width,
                          NK_PAD, RUN)

    if HAS_COUNTERS:
        n_tail, n_diag = _pair_sums(changed_tail, changed_diag)
        n_sink, n_cap = _pair_sums(changed_sink, changed_cap)
        if n_tail > 0:
            tl.atomic_add(Counters + 0, n_tail)
        if n_diag > 0:
            tl.atomic_add(Counters + 1, n_diag)
        if n_sink > 0:
            tl.atomic_add(Counters + 2, n_sink)
        if n_cap > 0:
            tl.atomic_add(Counters + 3, n_cap)
        if n_degenerate > 0:
            tl.atomic_add(Counters + 4, n_degenerate)
        if n_guard > 0:
            tl.atomic_add(Counters + 5, n_guard)


@triton.jit(do_not_specialize=["Lq", "Lk", "nq", "nk", "I0", "NI", "stride_mb", "stride_mh", "stride_mi",
                               "stride_lb", "stride_lh", "stride_li", "stride_cb", "stride_ch", "stride_ci",
                               "stride_rb", "stride_rh"])
def _build_lut_kernel(Map, Lut, Counts, Runs,
                      stride_mb, stride_mh, stride_mi,
                      stride_lb, stride_lh, stride_li,
                      stride_cb, stride_ch, stride_ci,
                      stride_rb, stride_rh,
                      Hm, Lq, Lk, nq, nk, I0, NI,
                      QUERY_BLOCK: tl.constexpr, KEY_BLOCK: tl.constexpr, NK_PAD: tl.constexpr,
                      CAUSAL: tl.constexpr, RUN: tl.constexpr):
    # rows are launched in buckets [I0, I0 + NI) of equal padded width NK_PAD (see _row_buckets)
    pid = tl.program_id(0)
    i = I0 + pid % NI
    bh = pid // NI
    h = bh % Hm
    b = bh // Hm
    if CAUSAL:
        J = (tl.minimum((i + 1) * QUERY_BLOCK, Lq) - 1 + Lk - Lq) // KEY_BLOCK
    else:
        J = nk - 1
    jfull = first_masked_block(i, Lk - Lq, Lk, QUERY_BLOCK, KEY_BLOCK, CAUSAL)
    j = tl.arange(0, NK_PAD)
    valid = (j <= J) & (j < nk)
    m_row = Map + b.to(tl.int64) * stride_mb + h.to(tl.int64) * stride_mh + i.to(tl.int64) * stride_mi
    lv = tl.load(m_row + j, mask=valid, other=0).to(tl.int32)
    _write_index_list(lv, j, valid,
                      Lut + b.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh + i.to(tl.int64) * stride_li,
                      Counts + b.to(tl.int64) * stride_cb + h.to(tl.int64) * stride_ch + i.to(tl.int64) * stride_ci,
                      Runs + b.to(tl.int64) * stride_rb + h.to(tl.int64) * stride_rh + i, jfull, nk, NK_PAD, RUN)


def _nk_pad(nk: int) -> int:
    return max(16, 1 << max(0, (int(nk) - 1).bit_length()))


def ends_from_ratios(mask_ratios: Mapping) -> tuple:
    """Cumulative ends ``(e1, e2, e4, e8, e0)`` in canonical order from a validated ``mask_ratios`` mapping.

    An absent level is an empty interval, so its end repeats the previous present end (0 before level 1).
    """
    ends, prev = [], 0.0
    for lv in CANONICAL_LEVELS:
        if lv in mask_ratios:
            prev = float(mask_ratios[lv][1])
        ends.append(prev)
    return tuple(ends)


#: Row-width buckets (see _row_buckets): by default every width gets its own launch. Measured on an H100
#: (2026-11-27): select + index list alone, cold L2 (benchmarks/bench_select.py), ms for at most 1 / 2 / 3 / 4 /
#: all buckets: 32k 0.80 / 0.94 / 1.07 / 1.09 / 1.29; 64k 4.57 / 3.08 / 2.83 / 2.80 / 2.83; 128k 21.8 / 15.7 /
#: 14.2 / 13.9 / 13.9. Inside the full pipeline, though (scores still in L2), one launch up to 1024-block rows
#: made the plan slower: estimate + mask 13.8% of dense at 32k against 11.8% with all buckets, 22.9% against
#: 15.9% at 16k (benchmarks/RESULTS.md). `max_buckets` stays a tuning knob.
MAX_BUCKETS = None


def _row_buckets(Lq: int, Lk: int, query_block: int, key_block: int, causal: bool, nq: int, nk: int,
                 max_buckets: int | None = None):
    """Contiguous query-block ranges [i0, i1) launched with one padded row width each (a power of two).

    A causal row i has n_i = J_i + 1 valid blocks, growing with i; sorting each row at its own padded width
    instead of the widest one cuts the selection work on long prefills, but every bucket is one more launch
    with a partial last wave, so with `max_buckets` the narrowest buckets are merged upwards until at most
    that many remain (default MAX_BUCKETS: no merging; see the measurements above it). Widths are powers of
    two, so new lengths reuse compiled variants.
    """
    if max_buckets is None:
        max_buckets = MAX_BUCKETS
    if not causal:
        return [(0, nq, _nk_pad(nk))]
    off = Lk - Lq
    buckets: list[tuple[int, int, int]] = []
    for i in range(nq):
        n_i = (min((i + 1) * query_block, Lq) - 1 + off) // key_block + 1
        width = _nk_pad(n_i)
        if buckets and buckets[-1][2] == width:
            buckets[-1] = (buckets[-1][0], i + 1, width)
        else:
            buckets.append((i, i + 1, width))
    while max_buckets is not None and len(buckets) > max(1, int(max_buckets)):
        # widths grow with i: fold the first (narrowest) bucket into the second
        (i0, _, _), (_, i1, width) = buckets[0], buckets[1]
        buckets[:2] = [(i0, i1, width)]
    return buckets


def _num_warps(nk_pad: int) -> int:
    # H200, select + index list at 128k (rows of 2048-4096 blocks): 32 warps 11.9 ms, 16 warps 12.2, 8 warps 13.9;
    # 1024-wide rows (32k): 4 and 8 warps tie (benchmarks/NOTES-attn.md)
    return 32 if nk_pad >= 2048 else 4


def psa_select_levels(scores, out_map, *, Lq: int, Lk: int, query_block: int, key_block: int, causal: bool,
                      mode: str, ends, dense_tail_tokens: int = 0, prompt_end: int | None = None,
                      force_sink: bool = True, sim_cap=None, gqa_group: int = 1, counters=None,
                      max_buckets: int | None = None, lut=None, counts=None, runs=None, run_blocks: int = 1) -> None:
    """Block levels (docs/ALGORITHM.md §7 then §8 F1-F6) from block scores, into the caller's ``out_map``.

    Args:
        scores: fp32 ``[B, H_m, nq, nk]`` (e.g. from ``psa_estimate_scores``; mean over the group for
            ``per_kv_group``). Only valid blocks (``j <= J_i``) are read.
        out_map: int8 ``[B, H_m, nq, nk]``; every element is written, values in {0, 1, 2, 4, 8}, 0 in upper blocks.
        Lq, Lk, query_block, key_block, causal: geometry (bottom-right causal, ``off = Lk - Lq``);
            ``nq = ceil(Lq/query_block)``, ``nk = ceil(Lk/key_block)`` must match the tensors.
        mode: ``"energybound"`` (§7.2, crossing block coarser, degenerate rows -> all level 1) or ``"topk"`` (§7.3,
            integer micro-unit boundaries ``round(e*1e6)``, at least one level-1 block).
        ends: cumulative interval ends in canonical level order ``(e1, e2, e4, e8, e0)`` (absent level = empty
            interval = previous end), or a validated ``mask_ratios`` mapping ``{level: (start, end)}``.
        dense_tail_tokens: F1 T (0 disables); tail positions ``[L_end - T, L_end)``, ``L_end = prompt_end or Lk``.
        prompt_end: F1 ``L_end`` in absolute key positions (``None`` -> ``Lk``).
        force_sink: F4 (key block 0 -> level 1).
        sim_cap: optional int8 ``[B, H_kv, nk]`` from ``psa_similarity_cap`` (F5: ``min(level, cap)`` for level > 1).
        gqa_group: map heads per KV head for ``sim_cap``: ``H_q // H_kv`` for ``per_head`` maps, 1 for
            ``per_kv_group`` maps (row head ``h`` reads cap head ``h // gqa_group``).
        counters: optional int32 buffer with at least 6 elements, accumulated with atomics (not zeroed here):
            ``COUNTER_NAMES`` = pairs changed by F1, F3, F4, cap demotions, degenerate rows, F6 firings.
        max_buckets: at most this many launches of equal padded row width (None: ``MAX_BUCKETS``).
        lut, counts, runs, run_blocks: optional: also write the index list of the selected map, exactly what
            :func:`psa_build_lut` would build from ``out_map`` (fused: no second pass over the map). ``lut`` int32
            ``[B, H_m, nq, W]`` with ``W >= nk`` (each row is zero-padded to W), ``counts`` int32 ``[B, H_m, nq, 4]``,
            ``runs`` as in :func:`psa_build_lut`.

    Ordering is deterministic (descending fp32 score, ties to the smaller j); energy and cumsum are fp32. Only the
    scores are sorted (an int32 image): the level boundaries are thresholds in that order, and each block's
    level follows from its score and its rank among the blocks tied with it, so the map is the one a sort of
    (score, j) pairs gives.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if isinstance(ends, Mapping):
        ends = ends_from_ratios(ends)
    ends = tuple(float(e) for e in ends)
    if len(ends) != 5:
        raise ValueError(f"ends must hold 5 cumulative ends in level order {CANONICAL_LEVELS}, got {ends}")
    if any(b < a for a, b in zip(ends, ends[1:])) or not 0.0 <= ends[0] or abs(ends[-1] - 1.0) > 1e-6:
        raise ValueError(f"ends must be non-decreasing in [0, 1] and end at 1, got {ends}")
    ss = shape(scores)
    if len(ss) != 4:
        raise ValueError(f"scores must be 4-D [B, H_m, nq, nk], got {ss}")
    B, Hm, nq, nk = ss
    if nq != -(-Lq // query_block) or nk != -(-Lk // key_block):
        raise ValueError(f"scores {ss} do not match Lq={Lq}, Lk={Lk}, query_block={query_block}, "
                         f"key_block={key_block} (nq={-(-Lq // query_block)}, nk={-(-Lk // key_block)})")
    if causal and Lq > Lk:
        raise ValueError(f"causal masks need Lq <= Lk, got Lq={Lq}, Lk={Lk}")
    if dtype_name(scores) != "float32":
        raise ValueError(f"scores must be float32, got {dtype_name(scores)}")
    if shape(out_map) != ss or dtype_name(out_map) != "int8":
        raise ValueError(f"out_map must be int8 {ss}, got {dtype_name(out_map)} {shape(out_map)}")
    st_s, st_m = strides(scores), strides(out_map)
    if st_s[3] != 1 or st_m[3] != 1:
        raise ValueError("scores and out_map need unit stride on the last axis")
    if int(dense_tail_tokens) < 0:
        raise ValueError(f"dense_tail_tokens must be >= 0, got {dense_tail_tokens}")
    if sim_cap is not None:
        cs = shape(sim_cap)
        if len(cs) != 3 or cs[0] != B or cs[2] != nk or dtype_name(sim_cap) != "int8" or Hm % max(1, gqa_group) \
                or cs[1] * gqa_group != Hm:
            raise ValueError(f"sim_cap must be int8 [B={B}, H_m/gqa_group={Hm}/{gqa_group}, nk={nk}], got "
                             f"{dtype_name(sim_cap)} {cs}")
        st_c = strides(sim_cap)
        if st_c[2] != 1:
            raise ValueError("sim_cap needs unit stride on the last axis")
    else:
        st_c = (0, 0, 1)
    if counters is not None:
        if dtype_name(counters) != "int32" or len(shape(counters)) != 1 or shape(counters)[0] < len(COUNTER_NAMES):
            raise ValueError(f"counters must be a 1-D int32 buffer with >= {len(COUNTER_NAMES)} elements")
    L_end = Lk if prompt_end is None else int(prompt_end)
    T = int(dense_tail_tokens)
    micro = [int(round(e * 1e6)) for e in ends[:4]]
    if lut is not None or counts is not None or runs is not None:
        if lut is None or counts is None:
            raise ValueError("lut and counts go together: pass both (and optionally runs) or none")
        index = _index_list_args(lut, counts, runs, run_blocks, B, Hm, nq, nk, min_width=True)
    else:
        index = None
    lst, cst, rst, width, run = index[1:] if index else ((0, 0, 0), (0, 0, 0), (0, 0), 0, 0)
    for i0, i1, NK_PAD in _row_buckets(Lq, Lk, query_block, key_block, causal, nq, nk, max_buckets):
        _select_levels_kernel[(B * Hm * (i1 - i0),)](
            scores, out_map, sim_cap if sim_cap is not None else scores,
            counters if counters is not None else scores,
            lut if index else scores, counts if index else scores, index[0] if index else scores,
            st_s[0], st_s[1], st_s[2], st_m[0], st_m[1], st_m[2], st_c[0], st_c[1],
            lst[0], lst[1], lst[2], cst[0], cst[1], cst[2], rst[0], rst[1], width,
            Hm, max(1, int(gqa_group)), Lq, Lk, nq, nk, L_end - T, i0, i1 - i0,
            ends[0], ends[1], ends[2], ends[3], micro[0], micro[1], micro[2], micro[3],
            QUERY_BLOCK=query_block, KEY_BLOCK=key_block, NK_PAD=NK_PAD, CAUSAL=bool(causal),
            TOPK=(mode == "topk"), TAIL=T > 0, FORCE_SINK=bool(force_sink), HAS_CAP=sim_cap is not None,
            HAS_COUNTERS=counters is not None, WRITE_LUT=index is not None, RUN=run,
            num_warps=_num_warps(NK_PAD),
        )


def _index_list_args(lut, counts, runs, run_blocks, B, Hm, nq, nk, min_width=False):
    """Validate the index-list outputs; returns (runs or a dummy, lut strides, counts strides, runs strides,
    lut row width, run blocks (0: no runs))."""
    ls = shape(lut)
    if len(ls) != 4 or dtype_name(lut) != "int32" or ls[:3] != (B, Hm, nq) or \
            (ls[3] < nk if min_width else ls[3] != nk):
        want = f"[{B}, {Hm}, {nq}, >= {nk}]" if min_width else str((B, Hm, nq, nk))
        raise ValueError(f"lut must be int32 {want}, got {dtype_name(lut)} {ls}")
    if shape(counts) != (B, Hm, nq, 4) or dtype_name(counts) != "int32":
        raise ValueError(f"counts must be int32 {(B, Hm, nq, 4)}, got {dtype_name(counts)} {shape(counts)}")
    sl, sc = strides(lut), strides(counts)
    if sl[3] != 1 or sc[3] != 1:
        raise ValueError("lut and counts need unit stride on the last axis")
    run_blocks = int(run_blocks)
    if run_blocks < 1 or run_blocks & (run_blocks - 1) or run_blocks > 16:
        raise ValueError(f"run_blocks must be a power of two in [1, 16], got {run_blocks}")
    if runs is None:
        return lut, sl[:3], sc[:3], (0, 0), ls[3], 0
    if shape(runs) != (B, Hm, nq) or dtype_name(runs) != "int32" or strides(runs)[2] != 1:
        raise ValueError(f"runs must be int32 {(B, Hm, nq)} with unit stride on the last axis, got "
                         f"{dtype_name(runs)} {shape(runs)}")
    return runs, sl[:3], sc[:3], strides(runs)[:2], ls[3], run_blocks


def psa_build_lut(level_map, lut, counts, *, Lq: int, Lk: int, query_block: int, key_block: int,
                  causal: bool, max_buckets: int | None = None, runs=None, run_blocks: int = 1) -> None:
    """Dense level map -> index list (docs/ARCHITECTURE.md), into the caller's ``lut`` and ``counts``.

    Args:
        level_map: int8 ``[B, H_m, nq, nk]``.
        lut: int32 ``[B, H_m, nq, nk]``; per row the kept valid key blocks grouped by level 1, 2, 4, 8, ascending j
            inside a group, then zero padding. Upper-triangle blocks (``j > J_i``, causal) are dropped even if
            non-zero; values outside {1, 2, 4, 8} are not kept.
        counts: int32 ``[B, H_m, nq, 4]``: entries of level 1, 2, 4, 8 in the row.
        runs, run_blocks: with ``runs`` (int32 ``[B, H_m, nq]``; ``run_blocks`` a power of two <= 16), the
            level-1 group starts with the row's *runs*: from each maximal stretch of consecutive level-1 blocks
            that are complete and visible to every row of the query block, its first ``run_blocks * floor(length
            / run_blocks)`` blocks, ascending; ``runs`` counts them in units of ``run_blocks``. The other level-1
            blocks follow, ascending. The attention kernel loads each unit of ``run_blocks`` as one slab.
    """
    ms = shape(level_map)
    if len(ms) != 4 or dtype_name(level_map) != "int8":
        raise ValueError(f"level_map must be int8 [B, H_m, nq, nk], got {dtype_name(level_map)} {ms}")
    B, Hm, nq, nk = ms
    if nq != -(-Lq // query_block) or nk != -(-Lk // key_block):
        raise ValueError(f"level_map {ms} does not match Lq={Lq}, Lk={Lk}, query_block={query_block}, "
                         f"key_block={key_block}")
    sm = strides(level_map)
    if sm[3] != 1:
        raise ValueError("level_map needs unit stride on the last axis")
    if causal and Lq > Lk:
        raise ValueError(f"causal masks need Lq <= Lk, got Lq={Lq}, Lk={Lk}")
    runs, sl, sc, sr, _, run_blocks = _index_list_args(lut, counts, runs, run_blocks, B, Hm, nq, nk)
    for i0, i1, NK_PAD in _row_buckets(Lq, Lk, query_block, key_block, causal, nq, nk, max_buckets):
        _build_lut_kernel[(B * Hm * (i1 - i0),)](
            level_map, lut, counts, runs, sm[0], sm[1], sm[2], sl[0], sl[1], sl[2], sc[0], sc[1], sc[2],
            sr[0], sr[1], Hm, Lq, Lk, nq, nk, i0, i1 - i0, QUERY_BLOCK=query_block, KEY_BLOCK=key_block,
            NK_PAD=NK_PAD, CAUSAL=bool(causal), RUN=run_blocks, num_warps=_num_warps(NK_PAD),
        )
