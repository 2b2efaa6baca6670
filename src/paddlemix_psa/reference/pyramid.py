"""Pyramid K/V (docs/ALGORITHM.md §3) and the key-similarity cap (§8 F5), in Paddle."""
from __future__ import annotations

import math

import paddle

from ._geometry import cdiv


def group_counts(L: int, p: int) -> paddle.Tensor:
    """c_p(g) = min(p, L - g*p) for every pooled token g: int64 [ceil(L/p)]."""
    g = paddle.arange(cdiv(L, p), dtype="int64")
    return paddle.clip(L - g * p, max=p)


def pool_tokens(x: paddle.Tensor, p: int) -> paddle.Tensor:
    """Mean over aligned groups of p *valid* tokens along axis 2 of [B, H, L, D]; fp32 sums; dtype kept.

    The last group may be partial: it is the mean of the tokens that exist (no replicate padding).
    """
    B, H, L, D = x.shape
    n = cdiv(L, p)
    acc = x.astype("float64" if x.dtype == paddle.float64 else "float32")
    if n * p != L:
        acc = paddle.concat([acc, paddle.zeros([B, H, n * p - L, D], acc.dtype)], axis=2)
    sums = acc.reshape([B, H, n, p, D]).sum(axis=3)
    means = sums / group_counts(L, p).astype(acc.dtype)[None, None, :, None]
    return means.astype(x.dtype)


def pool_kv(k: paddle.Tensor, v: paddle.Tensor, levels=(2, 4, 8)) -> dict[int, tuple[paddle.Tensor, paddle.Tensor]]:
    """{p: (K̄ᵖ, V̄ᵖ)} for each requested pooling factor; inputs [B, H_kv, Lk, D]."""
    return {p: (pool_tokens(k, p), pool_tokens(v, p)) for p in levels}


def similarity_cap(k: paddle.Tensor, key_block: int, thresholds=(0.75, 0.70, 0.70),
                   compute_dtype: str = "float32") -> paddle.Tensor:
    """Per (b, kv head, key block) the finest-allowed cap L_j in {1, 2, 4, 8}: int64 [B, H_kv, nk].

    sim_p(j) is the mean cosine of the first and last key of each *complete* aligned group of p keys in
    block j (computed in fp32 on the keys the attention consumes); a block with no complete group has
    sim = -inf. L_j = max(1, 2·[sim2>τ2], 4·[sim4>τ4], 8·[sim8>τ8]) — deliberately not monotone (§8).
    `compute_dtype="float64"` is for keys whose norms overflow fp32 (docs/ALGORITHM.md §11 pitfall 13).
    """
    B, H, Lk, D = k.shape
    nk = cdiv(Lk, key_block)
    kf = k.astype(compute_dtype)
    if nk * key_block != Lk:   # zero padding; padded positions are excluded below through completeness
        kf = paddle.concat([kf, paddle.zeros([B, H, nk * key_block - Lk, D], compute_dtype)], axis=2)
    cap = paddle.ones([B, H, nk], dtype="int64")
    for p, tau in zip((2, 4, 8), thresholds):
        groups = kf.reshape([B, H, nk, key_block // p, p, D])
        first, last = groups[..., 0, :], groups[..., p - 1, :]
        nf = paddle.clip(paddle.linalg.norm(first, axis=-1), min=1e-8)
        nl = paddle.clip(paddle.linalg.norm(last, axis=-1), min=1e-8)
        cos = (first * last).sum(axis=-1) / (nf * nl)                       # [B, H, nk, bk/p]
        g_last = paddle.arange(nk * key_block // p, dtype="int64").reshape([nk, key_block // p]) * p + p - 1
        complete = (g_last < Lk).astype(compute_dtype)[None, None]
        n_complete = complete.sum(axis=-1)
        mean = (cos * complete).sum(axis=-1) / paddle.clip(n_complete, min=1.0)
        sim = paddle.where(n_complete > 0, mean, paddle.full_like(mean, -math.inf))
        cap = paddle.where(sim > tau, paddle.maximum(cap, paddle.full_like(cap, p)), cap)
    return cap
