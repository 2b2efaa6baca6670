"""Level maps from block scores (docs/ALGORITHM.md §7), forced rules and similarity cap (§8), histograms (§9).

All arithmetic after the scores is fp32 (thresholds are compared in fp32, never bf16: pitfall 8).
"""
from __future__ import annotations

import dataclasses

import paddle

from ..config import CANONICAL_ORDER, LEVELS, AttentionConfig
from ._geometry import block_bounds, cdiv, diagonal_mask, valid_mask

COUNTER_KEYS = ("tail", "diagonal", "sink", "cap", "degenerate", "guard")


@dataclasses.dataclass
class LevelMapResult:
    level_map: paddle.Tensor          # int8 [B, H_m, nq, nk], values in {0, 1, 2, 4, 8}
    counters: dict[str, int]          # forced pairs per rule, cap demotions, degenerate rows, guard firings


def _rank_levels_energybound(sorted_scores, n_valid, ratios):
    """Level of each rank (sorted descending) from cumulative energy; plus the degenerate-row flag."""
    nk = sorted_scores.shape[-1]
    rank = paddle.arange(nk, dtype="int64")
    in_row = rank < n_valid[:, None]
    cum = paddle.cumsum(sorted_scores, axis=-1)
    # T is the inclusive cumsum at the last valid rank: cum/T is then exactly 1 from the last positive score on.
    total = paddle.take_along_axis(cum, paddle.clip(n_valid - 1, min=0)[None, None, :, None]
                                   .expand(cum.shape[:-1] + [1]), axis=-1)
    degenerate = ~((total > 0) & paddle.isfinite(total))[..., 0]
    safe_total = paddle.where(total > 0, total, paddle.ones_like(total))
    E = paddle.clip(cum / safe_total, max=1.0)
    E = paddle.where(rank == (n_valid - 1)[:, None], paddle.ones_like(E), E)
    levels = paddle.zeros(E.shape, "int32")
    for level in CANONICAL_ORDER:
        if level in ratios:
            s, e = ratios[level]
            sel = (E > s) & (E <= e)
            levels = paddle.where(sel, paddle.full_like(levels, level), levels)
    return paddle.where(in_row, levels, paddle.zeros_like(levels)), degenerate


def _rank_levels_topk(shape, n_valid, ratios):
    """Level of each rank from integer micro-unit boundaries (§7.3), at least one level-1 block per row."""
    nk = shape[-1]
    k = paddle.arange(1, nk + 1, dtype="int64")[None, :]           # 1-based rank
    n = n_valid[:, None]
    levels = paddle.zeros([shape[-2], nk], "int32")
    prev = paddle.zeros_like(n)
    for level in CANONICAL_ORDER:
        if level not in ratios:
            continue
        e_micro = int(round(ratios[level][1] * 1_000_000))
        beta = paddle.clip((e_micro * n + 500_000) // 1_000_000, min=1)
        sel = (k > prev) & (k <= beta) & (k <= n)
        levels = paddle.where(sel, paddle.full_like(levels, level), levels)
        prev = paddle.maximum(prev, beta)
    return levels.expand(list(shape))


def build_level_map_ref(scores: paddle.Tensor, *, Lq: int, Lk: int, config: AttentionConfig,
                        causal: bool = True, prompt_end: int | None = None,
                        sim_cap_levels: paddle.Tensor | None = None, gqa_group: int = 1) -> LevelMapResult:
    """Level map from scores [B, H_m, nq, nk] (§7), then F1-F6 (§8).

    `sim_cap_levels` is the int [B, H_kv, nk] cap of `pyramid.similarity_cap`; mask head h reads kv head
    h // gqa_group (gqa_group = G for per-head masks, 1 for per-kv-group masks).
    """
    qb, kb = config.query_block, config.key_block
    B, Hm, nq, nk = scores.shape
    if (nq, nk) != (cdiv(Lq, qb), cdiv(Lk, kb)):
        raise ValueError(f"scores has blocks (nq, nk)={(nq, nk)} but Lq={Lq}, Lk={Lk} with blocks "
                         f"{qb}x{kb} need {(cdiv(Lq, qb), cdiv(Lk, kb))}")
    A = scores.astype("float32")
    valid = valid_mask(Lq, Lk, qb, kb, causal)                         # [nq, nk]
    n_valid = valid.astype("int64").sum(axis=-1)                       # [nq]
    neg = paddle.full([], float("-inf"), "float32")
    order = paddle.argsort(paddle.where(valid[None, None], A, neg), axis=-1, descending=True, stable=True)
    sorted_scores = paddle.where(valid[None, None], A, paddle.zeros_like(A))
    sorted_scores = paddle.take_along_axis(sorted_scores, order, axis=-1)
    counters = dict.fromkeys(COUNTER_KEYS, 0)
    if config.mask_mode == "energybound":
        rank_levels, degenerate = _rank_levels_energybound(sorted_scores, n_valid, config.mask_ratios)
    else:
        rank_levels = _rank_levels_topk(sorted_scores.shape, n_valid, config.mask_ratios)
        degenerate = paddle.zeros(A.shape[:-1], "bool")
    M = paddle.put_along_axis(paddle.zeros(A.shape, "int32"), order, rank_levels, axis=-1)
    one = paddle.ones_like(M)
    M = paddle.where(degenerate[..., None] & valid[None, None], one, M)
    counters["degenerate"] = int(degenerate.astype("int64").sum())

    def force(where_, key):
        nonlocal M
        where_ = where_ & (M != 1)
        counters[key] += int(where_.astype("int64").sum())
        M = paddle.where(where_, one, M)

    T = config.dense_tail_tokens
    if T > 0:                                                          # F1 dense tail (position based)
        L_end = Lk if prompt_end is None else int(prompt_end)
        _, last = block_bounds(Lq, Lk, qb, kb, causal)
        z = paddle.minimum((paddle.arange(nq, dtype="int64") + 1) * qb, paddle.full([nq], Lq, "int64")) - 1 + (Lk - Lq)
        col_last = paddle.minimum((paddle.arange(nk, dtype="int64") + 1) * kb, paddle.full([nk], Lk, "int64")) - 1
        tail = (z[:, None] >= L_end - T) | (col_last[None, :] >= L_end - T)
        force((tail & valid)[None, None], "tail")
    M = paddle.where(valid[None, None], M, paddle.zeros_like(M))         # F2 upper triangle -> 0
    if causal:                                                         # F3 diagonal -> 1
        force(diagonal_mask(Lq, Lk, qb, kb)[None, None], "diagonal")
    if config.force_sink:                                              # F4 sink column -> 1
        force((paddle.arange(nk) == 0)[None, None, None, :].expand(M.shape), "sink")
    if sim_cap_levels is not None:                                     # F5 similarity cap
        cap = sim_cap_levels.astype("int32")
        if gqa_group > 1:
            cap = paddle.repeat_interleave(cap, gqa_group, axis=1)
        cap = cap[:, :, None, :]
        demote = (M > 1) & (cap < M)
        counters["cap"] = int(demote.astype("int64").sum())
        M = paddle.where(demote, cap.expand(M.shape), M)
    empty = ~((M > 0) & valid[None, None]).any(axis=-1)                # F6 empty-row guard
    n_empty = int(empty.astype("int64").sum())
    if n_empty:
        counters["guard"] = n_empty
        top = (paddle.arange(nk, dtype="int64")[None, None, None, :] == order[..., :1]) & empty[..., None]
        M = paddle.where(top, one, M)
    return LevelMapResult(M.astype("int8"), counters)


def level_histogram(level_map: paddle.Tensor, *, Lq: int, Lk: int, query_block: int, key_block: int,
                    causal: bool = True):
    """Valid-pair level counts {"1","2","4","8","0"}, per-head density [H_m] and totals (§9).

    Returns (histogram dict, per-head density list (batch-averaged), valid pair count, weighted kept sum).
    """
    valid = valid_mask(Lq, Lk, query_block, key_block, causal)[None, None]
    M = level_map.astype("int32")
    hist, weighted = {}, paddle.zeros(M.shape[:2], "float64")
    for p in LEVELS:
        sel = ((M == p) & valid).astype("int64")
        hist[str(p)] = int(sel.sum())
        weighted = weighted + sel.sum(axis=[2, 3]).astype("float64") / p
    n_valid_per_head = int(valid.astype("int64").sum())
    B, H = M.shape[:2]
    hist["0"] = n_valid_per_head * B * H - sum(hist.values())
    per_head = (weighted / n_valid_per_head).mean(axis=0)
    return hist, [float(x) for x in per_head.numpy()], n_valid_per_head * B * H, float(weighted.sum())
