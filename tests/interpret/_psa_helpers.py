"""Shared helpers for the interpreter tests: run pool + attention on numpy arrays through host views."""
from __future__ import annotations

import numpy as np

import oracle
from hostview import hv


def to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """BHSD numpy array -> a (non-contiguous for BSHD) array in ``layout`` with the same values."""
    if layout == "BHSD":
        return x
    # physical [B, S, H, D], viewed as such (BSHD), values identical
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3))


def from_layout(x: np.ndarray, layout: str) -> np.ndarray:
    return x if layout == "BHSD" else x.transpose(0, 2, 1, 3)


def run_pool(k, v, levels=(2, 4, 8), layout="BHSD"):
    from paddlemix_psa.kernels.pool import psa_pool_kv

    kl, vl = to_layout(k, layout), to_layout(v, layout)
    B, Hkv, Lk, D = k.shape
    kp = {p: np.full((B, Hkv, -(-Lk // p), D), np.nan, k.dtype) for p in levels}
    vp = {p: np.full_like(kp[p], np.nan) for p in levels}
    psa_pool_kv(hv(kl), hv(vl), {p: hv(a) for p, a in kp.items()}, {p: hv(a) for p, a in vp.items()},
                layout=layout)
    return kp, vp


def build_lut_with_runs(M, *, Lq, Lk, query_block, key_block, causal, block_n):
    """The kernel index list with level-1 runs for tile width ``block_n`` (psa_build_lut under the interpreter),
    every output poisoned first. Returns (lut, counts, runs)."""
    from paddlemix_psa.kernels.attn_fwd import run_blocks_for
    from paddlemix_psa.kernels.select import psa_build_lut

    B, H, nq, nk = M.shape
    lut = np.full((B, H, nq, nk), -7, np.int32)
    cnt = np.full((B, H, nq, 4), -7, np.int32)
    runs = np.full((B, H, nq), -7, np.int32)
    psa_build_lut(hv(np.ascontiguousarray(M)), hv(lut), hv(cnt), Lq=Lq, Lk=Lk, query_block=query_block,
                  key_block=key_block, causal=causal, runs=hv(runs), run_blocks=run_blocks_for(block_n, key_block))
    return lut, cnt, runs


def run_psa(q, k, v, M, *, query_block, key_block, causal=True, scale=None, gqa_mask="per_head",
            layout="BHSD", with_lse=False, kv_views=None, runs=None, **config):
    """q, k, v BHSD numpy; M level map. Returns (out BHSD, lse or None). ``kv_views``: optional (k, v) arrays
    already in ``layout`` (e.g. views into larger NaN-padded buffers) used instead of k, v. ``runs``: None (the
    oracle's index list, no runs), "tma" or "gather" (psa_build_lut's list with level-1 runs, loaded as TMA
    slabs or gathered). ``config``: launch overrides (block_n, block_n_pooled, ...)."""
    from paddlemix_psa.kernels.attn_fwd import default_config, psa_attn_fwd

    Lq, Lk = q.shape[2], k.shape[2]
    present = sorted({int(x) for x in np.unique(M)} & {2, 4, 8})
    kl, vl = kv_views if kv_views is not None else (to_layout(k, layout), to_layout(v, layout))
    kp, vp = run_pool(k, v, levels=present, layout="BHSD")
    run_arg = None
    if runs is None:
        lut, cnt = oracle.build_lut(M, Lq=Lq, Lk=Lk, query_block=query_block, key_block=key_block, causal=causal)
    else:
        block_n = config.get("block_n") or default_config(q.shape[3], query_block, key_block,
                                                          str(q.dtype))["block_n"]
        lut, cnt, run_arg = build_lut_with_runs(M, Lq=Lq, Lk=Lk, query_block=query_block, key_block=key_block,
                                                causal=causal, block_n=block_n)
        run_arg = hv(run_arg)
        config["use_tma"] = runs == "tma"
    ql = to_layout(q, layout)
    out = np.full_like(ql, np.nan)
    lse = np.full(q.shape[:3], np.nan, np.float32) if with_lse else None
    psa_attn_fwd(hv(ql), hv(kl), hv(vl), {p: hv(a) for p, a in kp.items()}, {p: hv(a) for p, a in vp.items()},
                 hv(lut), hv(cnt), hv(out), query_block=query_block, key_block=key_block, causal=causal,
                 scale=scale, layout=layout, gqa_mask=gqa_mask, lse=hv(lse) if with_lse else None, runs=run_arg,
                 config=config)
    return from_layout(out, layout), lse


def rand_qkv(rng, B, Hq, Hkv, Lq, Lk, D, dtype=np.float32):
    q = rng.standard_normal((B, Hq, Lq, D)).astype(dtype)
    k = rng.standard_normal((B, Hkv, Lk, D)).astype(dtype)
    v = rng.standard_normal((B, Hkv, Lk, D)).astype(dtype)
    return q, k, v


def oracle_lse(q, k, M, *, query_block, key_block, causal=True, scale=None, gqa_mask="per_head"):
    """fp64 log-sum-exp of docs/ALGORITHM.md §4.1 (brute force), [B, Hq, Lq]."""
    q = q.astype(np.float64)
    k = k.astype(np.float64)
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    nk = -(-Lk // key_block)
    out = np.full((B, Hq, Lq), -np.inf)
    pooled = {p: oracle.pool_mean(k, p) for p in (2, 4, 8)}
    for b in range(B):
        for h in range(Hq):
            hm = h if gqa_mask == "per_head" else h // G
            for r in range(Lq):
                i, t = r // query_block, r + Lk - Lq
                logits = []
                for j in range(nk):
                    p = int(M[b, hm, i, j])
                    if p == 0 or (causal and j > oracle.last_valid_block(i, Lq, Lk, query_block, key_block,
                                                                         True)):
                        continue
                    lo_tok = j * key_block // p
                    hi_tok = -(-min((j + 1) * key_block, Lk) // p)
                    for g in range(lo_tok, hi_tok):
                        lo, hi = g * p, min(g * p + p, Lk)
                        if causal and hi - 1 > t:
                            continue
                        kb = k[b, h // G, g] if p == 1 else pooled[p][0][b, h // G, g]
                        logits.append(scale * q[b, h, r] @ kb + np.log(hi - lo))
                if logits:
                    a = np.array(logits)
                    out[b, h, r] = a.max() + np.log(np.exp(a - a.max()).sum())
    return out
