"""Float64 brute-force oracle for PSA (docs/ALGORITHM.md), in numpy only.

Independent of the package: it shares no code with `paddlemix_psa.reference` or the kernels, so both are
checked against it. Everything is written the slow, obvious way: pooled K/V are built explicitly, every
row's key set is assembled from (block, level) pairs, one softmax per row. Arrays are numpy, layout BHSD.
"""
from __future__ import annotations

import math

import numpy as np

LEVELS = (1, 2, 4, 8)
CANONICAL = (1, 2, 4, 8, 0)


# --------------------------------------------------------------------------- geometry
def n_blocks(length: int, block: int) -> int:
    return -(-length // block)


def last_valid_block(i: int, Lq: int, Lk: int, query_block: int, key_block: int, causal: bool) -> int:
    """J_i: the last key block row i may touch (nk-1 in non-causal mode)."""
    if not causal:
        return n_blocks(Lk, key_block) - 1
    z = min((i + 1) * query_block, Lq) - 1 + (Lk - Lq)
    return z // key_block


def diagonal_blocks(i: int, Lq: int, Lk: int, query_block: int, key_block: int) -> range:
    a = i * query_block + (Lk - Lq)
    z = min((i + 1) * query_block, Lq) - 1 + (Lk - Lq)
    return range(a // key_block, z // key_block + 1)


# --------------------------------------------------------------------------- pooling
def pool_mean(x: np.ndarray, p: int):
    """Mean over aligned groups of p valid tokens along axis -2. Returns (means, counts)."""
    L = x.shape[-2]
    n = n_blocks(L, p)
    means = np.empty(x.shape[:-2] + (n, x.shape[-1]), dtype=np.float64)
    counts = np.empty(n, dtype=np.int64)
    for g in range(n):
        lo, hi = g * p, min(g * p + p, L)
        means[..., g, :] = x[..., lo:hi, :].astype(np.float64).mean(axis=-2)
        counts[g] = hi - lo
    return means, counts


# --------------------------------------------------------------------------- attention
def _softmax_rows(logits: np.ndarray, visible: np.ndarray) -> np.ndarray:
    s = np.where(visible, logits, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.where(visible, np.exp(s - m), 0.0)
    den = e.sum(axis=-1, keepdims=True)
    return np.where(den > 0, e / np.where(den > 0, den, 1.0), 0.0)


def dense_attention(q, k, v, *, causal=True, scale=None):
    """Dense attention, bottom-right causal alignment, GQA through h // G. Empty rows give 0."""
    q, k, v = (np.asarray(t, dtype=np.float64) for t in (q, k, v))
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = np.zeros_like(q)
    rows = np.arange(Lq)[:, None] + (Lk - Lq)
    vis = (np.arange(Lk)[None, :] <= rows) if causal else np.ones((Lq, Lk), bool)
    for b in range(B):
        for h in range(Hq):
            logits = scale * q[b, h] @ k[b, h // G].T
            out[b, h] = _softmax_rows(logits, vis) @ v[b, h // G]
    return out


def psa_attention(q, k, v, level_map, *, query_block, key_block, causal=True, scale=None,
                  gqa_mask="per_head"):
    """docs/ALGORITHM.md §4.2: one softmax per row over every kept pooled token, bias ln(count)."""
    q, k, v = (np.asarray(t, dtype=np.float64) for t in (q, k, v))
    level_map = np.asarray(level_map)
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    off = Lk - Lq
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    nq, nk = n_blocks(Lq, query_block), n_blocks(Lk, key_block)
    assert level_map.shape == (B, Hq if gqa_mask == "per_head" else Hkv, nq, nk), level_map.shape
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(Hq):
            hm = h if gqa_mask == "per_head" else h // G
            kk, vv = k[b, h // G], v[b, h // G]
            for i in range(nq):
                r0, r1 = i * query_block, min((i + 1) * query_block, Lq)
                J = last_valid_block(i, Lq, Lk, query_block, key_block, causal)
                keys, vals, bias, last_key = [], [], [], []
                for j in range(nk):
                    p = int(level_map[b, hm, i, j])
                    if p == 0 or j > J:
                        continue
                    for g in range(j * key_block // p, n_blocks(min((j + 1) * key_block, Lk), p)):
                        lo, hi = g * p, min(g * p + p, Lk)
                        keys.append(kk[lo:hi].mean(axis=0))
                        vals.append(vv[lo:hi].mean(axis=0))
                        bias.append(math.log(hi - lo))
                        last_key.append(hi - 1)
                if not keys:
                    continue
                K, V = np.stack(keys), np.stack(vals)
                logits = scale * q[b, h, r0:r1] @ K.T + np.asarray(bias)[None, :]
                t = np.arange(r0, r1)[:, None] + off
                vis = (np.asarray(last_key)[None, :] <= t) if causal else np.ones(logits.shape, bool)
                out[b, h, r0:r1] = _softmax_rows(logits, vis) @ V
    return out


# --------------------------------------------------------------------------- estimator
def xattn_scores(q, k, *, query_block, key_block, stride, causal=True, scale=None):
    """docs/ALGORITHM.md §6.1: antidiagonal strided logits, fp64 softmax per reshaped query, block sums."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G, S, off = Hq // Hkv, stride, Lk - Lq
    nq, nk = n_blocks(Lq, query_block), n_blocks(Lk, key_block)
    na, nc = nq * query_block // S, nk * key_block // S
    qp = np.zeros((B, Hq, nq * query_block, D)); qp[:, :, :Lq] = q
    kp = np.zeros((B, Hkv, nk * key_block, D)); kp[:, :, :Lk] = k
    out = np.zeros((B, Hq, nq, nk))
    a_idx, c_idx = np.arange(na), np.arange(nc)
    vis = (c_idx[None, :] * S < Lk)
    if causal:
        vis = vis & (c_idx[None, :] * S <= a_idx[:, None] * S + S - 1 + off)
    vis = np.broadcast_to(vis, (na, nc))
    valid_a = a_idx * S < Lq
    for b in range(B):
        for h in range(Hq):
            X = np.zeros((na, nc))
            for s in range(S):
                X += qp[b, h, (S - 1 - s)::S][:na] @ kp[b, h // G, s::S][:nc].T
            P = _softmax_rows(X / (math.sqrt(D) * S) if scale is None else X * scale / S, vis)
            P[~valid_a] = 0.0
            out[b, h] = P.reshape(nq, query_block // S, nk, key_block // S).sum(axis=(1, 3))
    return out


def similarity_cap(k, *, key_block, thresholds=(0.75, 0.70, 0.70)):
    """docs/ALGORITHM.md §8 F5: per (b, kv head, key block) cap L_j from first/last-key cosines of complete groups."""
    k = np.asarray(k, np.float64)
    B, Hkv, Lk, _ = k.shape
    nk = n_blocks(Lk, key_block)
    cap = np.ones((B, Hkv, nk), dtype=np.int64)
    for b in range(B):
        for h in range(Hkv):
            for j in range(nk):
                end = min((j + 1) * key_block, Lk) - 1
                level = 1
                for p, tau in zip((2, 4, 8), thresholds):
                    cos = []
                    g = j * key_block // p
                    while g * p + p - 1 <= end:
                        x, y = k[b, h, g * p], k[b, h, g * p + p - 1]
                        nx, ny = max(np.linalg.norm(x), 1e-8), max(np.linalg.norm(y), 1e-8)
                        cos.append(float(x @ y) / (nx * ny))
                        g += 1
                    sim = np.mean(cos) if cos else -np.inf
                    if sim > tau:
                        level = max(level, p)
                cap[b, h, j] = level
    return cap


# --------------------------------------------------------------------------- masks
def _assign_row(A, valid, mode, mask_ratios):
    """Levels for one row's valid blocks (list of j) from scores A (fp64), before forcing."""
    order = sorted(valid, key=lambda j: (-A[j], j))
    n = len(order)
    present = [lv for lv in CANONICAL if lv in mask_ratios]
    ends = [(lv, float(mask_ratios[lv][1])) for lv in present]
    starts = {lv: float(mask_ratios[lv][0]) for lv in present}
    out = {}
    if mode == "energybound":
        T = sum(A[j] for j in order)
        if not (T > 0 and math.isfinite(T)):
            return {j: 1 for j in order}, True
        acc = 0.0
        for rank, j in enumerate(order):
            acc += A[j]
            E = 1.0 if rank == n - 1 else min(1.0, acc / T)
            for lv, e in ends:
                if starts[lv] < E <= e:
                    out[j] = lv
                    break
        return out, False
    # topk: integer micro-unit boundaries, chained, level 1 gets at least rank 1
    betas = [(lv, max((round(e * 1e6) * n + 500000) // 10 ** 6, 1)) for lv, e in ends]
    prev = 0
    for lv, beta in betas:
        for rank in range(prev + 1, beta + 1):
            if rank <= n:
                out.setdefault(order[rank - 1], lv)
        prev = max(prev, beta)
    return out, False


def level_map(scores, *, Lq, Lk, query_block, key_block, causal=True, mode="energybound",
              mask_ratios=None, dense_tail_tokens=512, prompt_end=None, force_sink=True,
              sim_cap_levels=None, gqa_group=1):
    """docs/ALGORITHM.md §7 + §8. scores [B, H_m, nq, nk]; sim_cap_levels [B, H_kv, nk] or None.

    Returns (int8 level map, counters dict).
    """
    if mask_ratios is None:
        mask_ratios = {1: (0, .6), 2: (.6, .8), 4: (.8, .9), 8: (.9, .9), 0: (.9, 1)}
    scores = np.asarray(scores, np.float64)
    B, Hm, nq, nk = scores.shape
    M = np.zeros(scores.shape, dtype=np.int8)
    cnt = dict(tail=0, diagonal=0, sink=0, cap=0, degenerate=0, guard=0)
    L_end = Lk if prompt_end is None else prompt_end
    T = dense_tail_tokens
    for b in range(B):
        for h in range(Hm):
            for i in range(nq):
                J = last_valid_block(i, Lq, Lk, query_block, key_block, causal)
                valid = list(range(J + 1))
                lv, degenerate = _assign_row(scores[b, h, i], valid, mode, mask_ratios)
                cnt["degenerate"] += int(degenerate)
                row = np.zeros(nk, dtype=np.int64)
                for j, p in lv.items():
                    row[j] = p
                z = min((i + 1) * query_block, Lq) - 1 + (Lk - Lq)
                if T > 0:
                    tail_row = z >= L_end - T
                    for j in valid:
                        tail_col = min((j + 1) * key_block, Lk) - 1 >= L_end - T
                        if (tail_row or tail_col) and row[j] != 1:
                            row[j] = 1
                            cnt["tail"] += 1
                row[J + 1:] = 0
                if causal:
                    for j in diagonal_blocks(i, Lq, Lk, query_block, key_block):
                        if row[j] != 1:
                            row[j] = 1
                            cnt["diagonal"] += 1
                if force_sink and row[0] != 1:
                    row[0] = 1
                    cnt["sink"] += 1
                if sim_cap_levels is not None:
                    caps = np.asarray(sim_cap_levels)[b, h // gqa_group]
                    for j in valid:
                        if row[j] > 1 and caps[j] < row[j]:
                            row[j] = caps[j]
                            cnt["cap"] += 1
                if not any(row[j] > 0 for j in valid):
                    top = sorted(valid, key=lambda j: (-scores[b, h, i, j], j))[0]
                    row[top] = 1
                    cnt["guard"] += 1
                M[b, h, i] = row
    return M, cnt


def build_lut(level_map, *, Lq, Lk, query_block, key_block, causal=True):
    """Dense level map -> (lut int32 [B,H,nq,nk], counts int32 [B,H,nq,4]) as in docs/ARCHITECTURE.md."""
    M = np.asarray(level_map)
    B, H, nq, nk = M.shape
    lut = np.zeros(M.shape, dtype=np.int32)
    counts = np.zeros((B, H, nq, 4), dtype=np.int32)
    for b in range(B):
        for h in range(H):
            for i in range(nq):
                J = last_valid_block(i, Lq, Lk, query_block, key_block, causal)
                pos = 0
                for t, p in enumerate(LEVELS):
                    js = [j for j in range(min(J + 1, nk)) if M[b, h, i, j] == p]
                    lut[b, h, i, pos:pos + len(js)] = js
                    counts[b, h, i, t] = len(js)
                    pos += len(js)
    return lut, counts


def density(level_map, *, Lq, Lk, query_block, key_block, causal=True):
    """docs/ALGORITHM.md §9 FLOP-equivalent density over valid pairs, per (b, h) -> array [B, H]."""
    M = np.asarray(level_map)
    B, H, nq, nk = M.shape
    out = np.zeros((B, H))
    for b in range(B):
        for h in range(H):
            num, den = 0.0, 0
            for i in range(nq):
                J = last_valid_block(i, Lq, Lk, query_block, key_block, causal)
                for j in range(J + 1):
                    p = int(M[b, h, i, j])
                    num += 1.0 / p if p else 0.0
                    den += 1
            out[b, h] = num / den
    return out
