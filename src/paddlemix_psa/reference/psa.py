"""Combined pyramid attention over a level map (docs/ALGORITHM.md §4.2, vectorized form), in pure Paddle.

For each query block, the candidate keys are `[K ; K̄² ; K̄⁴ ; K̄⁸]` up to the block's last valid key block,
with logit bias `[0 ; ln c² ; ln c⁴ ; ln c⁸]`; a key token is visible to a row iff its block carries its
level in the map, the block is valid, and (causal) its last covered key is at or before the row's position.
One softmax over all of them. K/V are read per KV head (h // G) and never repeated.
"""
from __future__ import annotations

import math

import paddle

from ..config import LEVELS
from ._geometry import block_bounds, cdiv
from ._softmax import masked_softmax
from .pyramid import group_counts, pool_tokens


def psa_attention_ref(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, level_map: paddle.Tensor, *,
                      query_block: int, key_block: int, causal: bool = True, scale: float | None = None,
                      gqa_mask: str = "per_head") -> paddle.Tensor:
    """q [B, H_q, Lq, D], k/v [B, H_kv, Lk, D], level_map int8 [B, H_m, nq, nk] -> out [B, H_q, Lq, D].

    Computes in fp32 (fp64 for fp64 inputs), returns q's dtype. Rows with no visible key give exactly 0.
    """
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    off = Lk - Lq
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    cdt = "float64" if q.dtype == paddle.float64 else "float32"
    nq = cdiv(Lq, query_block)
    M = level_map.astype("int32")
    if gqa_mask == "per_kv_group":
        M = paddle.repeat_interleave(M, G, axis=1)        # small: [B, H_q, nq, nk] of int32
    present = [p for p in LEVELS if bool((M == p).any())]
    # Per level: keys, values, bias ln c, key block of each token, last covered key of each token.
    pyramid = {}
    for p in present:
        kp = k.astype(cdt) if p == 1 else pool_tokens(k.astype(cdt), p)
        vp = v.astype(cdt) if p == 1 else pool_tokens(v.astype(cdt), p)
        n = kp.shape[2]
        g = paddle.arange(n, dtype="int64")
        bias = paddle.log(group_counts(Lk, p).astype(cdt))
        last_key = paddle.minimum((g + 1) * p, paddle.full([n], Lk, "int64")) - 1
        pyramid[p] = (kp, vp, bias, (g * p) // key_block, last_key)
    _, J = block_bounds(Lq, Lk, query_block, key_block, causal)
    J = J.numpy().tolist()
    out = paddle.zeros([B, Hq, Lq, D], cdt)
    for i in range(nq):
        r0, r1 = i * query_block, min((i + 1) * query_block, Lq)
        rows = r1 - r0
        k_end = min((J[i] + 1) * key_block, Lk)
        keys, vals, bias, allowed = [], [], [], []
        row_map = M[:, :, i, :J[i] + 1]
        for p, (kp, vp, b_p, blk, last_key) in pyramid.items():
            if not bool((row_map == p).any()):     # no head keeps this level in this row: no keys to add
                continue
            n = cdiv(k_end, p)
            row_levels = paddle.index_select(M[:, :, i, :], blk[:n], axis=2)   # [B, H_q, n]
            ok = row_levels == p
            if causal:
                t = paddle.arange(r0, r1, dtype="int64") + off
                ok = ok[:, :, None, :] & (last_key[:n][None, :] <= t[:, None])[None, None]
            else:
                ok = ok[:, :, None, :].expand([B, Hq, rows, n])
            keys.append(kp[:, :, :n]); vals.append(vp[:, :, :n]); bias.append(b_p[:n]); allowed.append(ok)
        if not keys:
            continue
        K, V = paddle.concat(keys, axis=2), paddle.concat(vals, axis=2)
        qi = q[:, :, r0:r1].astype(cdt).reshape([B, Hkv, G * rows, D])
        logits = paddle.matmul(qi, K, transpose_y=True).reshape([B, Hq, rows, -1]) * scale
        logits = logits + paddle.concat(bias)[None, None, None, :]
        P = masked_softmax(logits, paddle.concat(allowed, axis=-1))
        o = paddle.matmul(P.reshape([B, Hkv, G * rows, -1]), V).reshape([B, Hq, rows, D])
        out[:, :, r0:r1] = o
    return out.astype(q.dtype)
