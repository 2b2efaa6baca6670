"""Torch float64 port of ``tests/oracle.py`` pieces for large GPU shapes (cross-checked against the numpy oracle
in the GPU tests). Test-only; torch is never a package dependency."""
from __future__ import annotations

import math


def xattn_scores_torch(q, k, *, query_block, key_block, stride, causal=True, scale=None):
    """docs/ALGORITHM.md §6.1 in float64 on q's device; q [B, Hq, Lq, D], k [B, Hkv, Lk, D] (BHSD). Returns [B, Hq, nq, nk]."""
    import torch

    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G, S, off = Hq // Hkv, stride, Lk - Lq
    nq, nk = -(-Lq // query_block), -(-Lk // key_block)
    na, nc = nq * query_block // S, nk * key_block // S
    dev = q.device
    qp = torch.zeros(B, Hq, nq * query_block, D, dtype=torch.float64, device=dev)
    qp[:, :, :Lq] = q.double()
    kp = torch.zeros(B, Hkv, nk * key_block, D, dtype=torch.float64, device=dev)
    kp[:, :, :Lk] = k.double()
    a = torch.arange(na, device=dev)
    c = torch.arange(nc, device=dev)
    vis = (c * S < Lk)[None, :].expand(na, nc)
    if causal:
        vis = vis & (c[None, :] * S <= a[:, None] * S + S - 1 + off)
    valid_a = a * S < Lq
    lam = (1.0 / math.sqrt(D)) if scale is None else scale
    out = torch.empty(B, Hq, nq, nk, dtype=torch.float64, device=dev)
    for h in range(Hq):
        X = torch.zeros(B, na, nc, dtype=torch.float64, device=dev)
        for s in range(S):
            X += qp[:, h, S - 1 - s::S][:, :na] @ kp[:, h // G, s::S][:, :nc].transpose(-1, -2)
        logits = (X * (lam / S)).masked_fill(~vis, float("-inf"))
        P = torch.softmax(logits, dim=-1)
        P[:, ~valid_a] = 0
        out[:, h] = P.reshape(B, nq, query_block // S, nk, key_block // S).sum(dim=(2, 4))
    return out
