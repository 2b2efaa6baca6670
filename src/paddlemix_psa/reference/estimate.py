"""XAttention antidiagonal block importance (docs/ALGORITHM.md §6.1, §6.2, §6.4), fp32, chunked over query blocks."""
from __future__ import annotations

import math

import paddle

from ._geometry import cdiv
from ._softmax import masked_softmax

_MAX_CHUNK_ELEMS = 1 << 25    # bound on one chunk's fp32 probability tensor (128 MiB)


def xattn_block_scores(q: paddle.Tensor, k: paddle.Tensor, *, query_block: int, key_block: int, stride: int,
                       causal: bool = True, scale: float | None = None,
                       compute_dtype: str = "float32") -> paddle.Tensor:
    """Block scores A: fp32 [B, H_q, nq, nk] from q [B, H_q, Lq, D] and k [B, H_kv, Lk, D].

    X[a, c] = Σ_s ⟨q[a·S + S−1−s], k[c·S + s]⟩ (antidiagonal of each S×S tile), softmax over the visible
    reshaped keys of X·λ/S, summed per (query block, key block). Rows of A sum to the number of valid
    reshaped queries of the block; upper-triangle blocks are exactly 0. `compute_dtype="float64"` is for
    logits beyond the fp32 range (docs/ALGORITHM.md §11 pitfall 13); the result is fp32 either way.
    """
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G, S, off = Hq // Hkv, stride, Lk - Lq
    lam = (1.0 / math.sqrt(D) if scale is None else scale) / S
    nq, nk = cdiv(Lq, query_block), cdiv(Lk, key_block)
    na_blk, nc_blk = query_block // S, key_block // S
    nc = nk * nc_blk
    cdt = compute_dtype
    qf, kf = q.astype(cdt), k.astype(cdt)
    if nq * query_block != Lq:
        qf = paddle.concat([qf, paddle.zeros([B, Hq, nq * query_block - Lq, D], cdt)], axis=2)
    if nk * key_block != Lk:
        kf = paddle.concat([kf, paddle.zeros([B, Hkv, nk * key_block - Lk, D], cdt)], axis=2)
    # Reversing each query group of S rows turns the antidiagonal sum into one dot product of length S·D.
    q_rev = qf.reshape([B, Hq, nq * na_blk, S, D]).flip(axis=3).reshape([B, Hkv, G, nq * na_blk, S * D])
    k_flat = kf.reshape([B, Hkv, 1, nc, S * D])
    c = paddle.arange(nc, dtype="int64")
    blocks_per_chunk = max(1, _MAX_CHUNK_ELEMS // max(1, B * Hq * na_blk * nc))
    out = []
    for i0 in range(0, nq, blocks_per_chunk):
        i1 = min(nq, i0 + blocks_per_chunk)
        a = paddle.arange(i0 * na_blk, i1 * na_blk, dtype="int64")
        X = paddle.matmul(q_rev[:, :, :, i0 * na_blk:i1 * na_blk], k_flat, transpose_y=True) * lam
        vis = (c[None, :] * S < Lk)
        if causal:
            vis = vis & (c[None, :] * S <= a[:, None] * S + S - 1 + off)
        P = masked_softmax(X, vis[None, None, None])
        P = P * (a * S < Lq).astype(cdt)[:, None]                        # reshaped queries with no real row
        P = P.reshape([B, Hq, i1 - i0, na_blk, nk, nc_blk]).sum(axis=[3, 5])
        out.append(P.astype("float32"))
    return paddle.concat(out, axis=2)
