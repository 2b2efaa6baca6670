"""Fast fp32 (or fp64) torch oracle for PSA (docs/ALGORITHM.md §4.2, vectorised form) used by the GPU tests/benchmarks.

Layout BHSD, GQA through h // G without repeating K/V in memory. Cross-checked against tests/oracle.py (numpy
fp64 brute force) at small shapes in tests/gpu/test_attn_gpu.py.
"""
from __future__ import annotations

import math

import torch


def pool_mean(x: torch.Tensor, p: int) -> torch.Tensor:
    """Valid-token means of aligned groups of p along dim -2 (no ghost tokens), in x's dtype."""
    L = x.shape[-2]
    n = -(-L // p)
    pad = n * p - L
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    if pad:
        xf = torch.cat([xf, xf.new_zeros(xf.shape[:-2] + (pad, xf.shape[-1]))], dim=-2)
    s = xf.reshape(xf.shape[:-2] + (n, p, xf.shape[-1])).sum(-2)
    cnt = torch.clamp(L - torch.arange(n, device=x.device) * p, max=p).to(s.dtype)
    return s / cnt[:, None]


def psa_attention(q, k, v, level_map, *, query_block, key_block, causal=True, scale=None, gqa_mask="per_head",
                  dtype=torch.float32, chunk=1024, pooled=None):
    """PSA reference: out [B, Hq, Lq, D] in ``dtype``. ``pooled``: optional {p: (K̄, V̄)} (e.g. the kernel's own
    pooled tensors, to isolate the attention kernel from pooling rounding)."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    off = Lk - Lq
    dev = q.device
    levels = [p for p in (2, 4, 8) if bool((level_map == p).any())]
    keys, vals, bias, tok_level, tok_block, tok_last = [], [], [], [], [], []
    kk = {1: (k.to(dtype), v.to(dtype))}
    for p in levels:
        if pooled is not None and p in pooled:
            kk[p] = (pooled[p][0].to(dtype), pooled[p][1].to(dtype))
        else:
            kk[p] = (pool_mean(k, p).to(dtype), pool_mean(v, p).to(dtype))
    for p in [1] + levels:
        n = -(-Lk // p)
        g = torch.arange(n, device=dev)
        first = g * p
        last = torch.clamp(first + p, max=Lk) - 1
        keys.append(kk[p][0])
        vals.append(kk[p][1])
        bias.append(torch.log((last - first + 1).to(dtype)))
        tok_level.append(torch.full((n,), p, device=dev, dtype=torch.int8))
        tok_block.append(first // key_block)
        tok_last.append(last)
    K = torch.cat(keys, dim=2)  # [B, Hkv, T, D]
    V = torch.cat(vals, dim=2)
    bias = torch.cat(bias)
    tl_ = torch.cat(tok_level)
    tb = torch.cat(tok_block)
    tlast = torch.cat(tok_last)
    out = torch.empty((B, Hq, Lq, D), device=dev, dtype=dtype)
    for b in range(B):
        for h in range(Hq):
            hm = h if gqa_mask == "per_head" else h // G
            Kh, Vh = K[b, h // G], V[b, h // G]
            for r0 in range(0, Lq, chunk):
                r1 = min(Lq, r0 + chunk)
                rows = torch.arange(r0, r1, device=dev)
                Mrows = level_map[b, hm][rows // query_block].to(torch.int8)  # [R, nk]
                keep = Mrows[:, tb] == tl_[None, :]
                if causal:
                    keep &= tlast[None, :] <= (rows + off)[:, None]
                s = (q[b, h, r0:r1].to(dtype) @ Kh.T) * scale + bias[None, :]
                s = s.masked_fill(~keep, float("-inf"))
                m = s.amax(-1, keepdim=True)
                m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
                e = torch.exp(s - m)
                den = e.sum(-1, keepdim=True)
                o = (e @ Vh) / torch.where(den > 0, den, torch.ones_like(den))
                out[b, h, r0:r1] = torch.where(den > 0, o, torch.zeros_like(o))
    return out


def dense_attention(q, k, v, *, causal=True, scale=None, dtype=torch.float32, chunk=2048):
    """Dense attention, bottom-right causal, GQA by h // G, in ``dtype``."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = torch.empty((B, Hq, Lq, D), device=q.device, dtype=dtype)
    kpos = torch.arange(Lk, device=q.device)
    for b in range(B):
        for h in range(Hq):
            for r0 in range(0, Lq, chunk):
                r1 = min(Lq, r0 + chunk)
                s = (q[b, h, r0:r1].to(dtype) @ k[b, h // G].to(dtype).T) * scale
                if causal:
                    rows = torch.arange(r0, r1, device=q.device) + (Lk - Lq)
                    s = s.masked_fill(kpos[None, :] > rows[:, None], float("-inf"))
                p = torch.softmax(s, -1).nan_to_num(0.0)
                out[b, h, r0:r1] = p @ v[b, h // G].to(dtype)
    return out


def rel_l2(x, ref):
    x, ref = x.double(), ref.double()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def build_lut(level_map, *, Lq, Lk, query_block, key_block, causal=True):
    """Vectorised torch version of the ARCHITECTURE.md index list: (lut int32, counts int32)."""
    M = level_map
    B, H, nq, nk = M.shape
    dev = M.device
    j = torch.arange(nk, device=dev)
    i = torch.arange(nq, device=dev)
    if causal:
        z = torch.clamp((i + 1) * query_block, max=Lq) - 1 + (Lk - Lq)
        J = z // key_block
    else:
        J = torch.full((nq,), nk - 1, device=dev)
    valid = j[None, :] <= J[:, None]  # [nq, nk]
    rank = torch.full_like(M, 4, dtype=torch.int64)
    for t, p in enumerate((1, 2, 4, 8)):
        rank = torch.where(M == p, torch.full_like(rank, t), rank)
    rank = torch.where(valid[None, None], rank, torch.full_like(rank, 4))
    key = rank * nk + j
    order = torch.argsort(key, dim=-1)
    counts = torch.stack([(rank == t).sum(-1) for t in range(4)], dim=-1).to(torch.int32)
    total = counts.sum(-1, keepdim=True)
    lut = torch.where(j[None, None, None, :] < total, order, torch.zeros_like(order)).to(torch.int32)
    return lut.contiguous(), counts.contiguous()


def structured_level_map(B, H, Lq, Lk, query_block, key_block, density, *, seed=0, device="cuda",
                         causal=True, levels=(1, 2, 4, 8)):
    """Realistic fixed level map of FLOP density ~``density`` (callers report the measured density).

    Per row: the sink block, the diagonal blocks and a local window next to the diagonal at level 1, then pooled
    bands of growing coarseness further away (2, then 4, then 8, each twice as wide as the previous), plus
    scattered level-1 'retrieval' blocks (different per head); the rest is skipped. The window width is found
    by bisection on a single head."""
    rnd_frac = min(0.02, density / 5)
    if density >= 1.0:
        return _structured(B, H, Lq, Lk, query_block, key_block, None, 0.0, seed, causal, levels, device)
    lo, hi = 0.0, 1.0
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        M = _structured(1, 1, Lq, Lk, query_block, key_block, mid, rnd_frac, seed, causal, levels, "cpu")
        d = globals()["density"](M, Lq=Lq, Lk=Lk, query_block=query_block, key_block=key_block, causal=causal)
        if d > density:
            hi = mid
        else:
            lo = mid
    return _structured(B, H, Lq, Lk, query_block, key_block, 0.5 * (lo + hi), rnd_frac, seed, causal, levels,
                       device)


def _structured(B, H, Lq, Lk, query_block, key_block, w1, rnd_frac, seed, causal, levels, device):
    nq, nk = -(-Lq // query_block), -(-Lk // key_block)
    off = Lk - Lq
    i = torch.arange(nq, device=device)
    j = torch.arange(nk, device=device)
    z = torch.clamp((i + 1) * query_block, max=Lq) - 1 + off
    J = z // key_block if causal else torch.full_like(i, nk - 1)
    diag_lo = (i * query_block + off) // key_block
    one = torch.ones((), dtype=torch.int8, device=device)
    if w1 is None:
        base = torch.ones((nq, nk), dtype=torch.int8, device=device)
    else:
        frac = (J[:, None] - j[None, :]).float() / (J + 1).float()[:, None]
        base = torch.zeros((nq, nk), dtype=torch.int8, device=device)
        for p, bnd in reversed([(1, w1), (2, 3 * w1), (4, 7 * w1), (8, 15 * w1)]):
            if p in levels:
                base = torch.where(frac < bnd, torch.full_like(base, p), base)
        base[:, 0] = 1
    M = base.expand(B, H, nq, nk).clone()
    if w1 is not None and rnd_frac > 0:
        g = torch.Generator(device=device).manual_seed(seed)
        rnd = torch.rand((B, H, nq, nk), generator=g, device=device) < rnd_frac
        M = torch.where(rnd, one, M)
    diag = (j[None, :] >= diag_lo[:, None]) & (j[None, :] <= J[:, None])
    M = torch.where(diag, one, M)
    if causal:
        M = torch.where(j[None, :] > J[:, None], torch.zeros_like(M), M)
    return M.contiguous()


def density(level_map, *, Lq, Lk, query_block, key_block, causal=True):
    """docs/ALGORITHM.md §9 FLOP density over valid pairs, averaged over (b, h) with valid-pair weights."""
    M = level_map
    B, H, nq, nk = M.shape
    j = torch.arange(nk, device=M.device)
    i = torch.arange(nq, device=M.device)
    if causal:
        J = (torch.clamp((i + 1) * query_block, max=Lq) - 1 + (Lk - Lq)) // key_block
    else:
        J = torch.full((nq,), nk - 1, device=M.device)
    valid = (j[None, :] <= J[:, None])[None, None]
    w = torch.zeros(M.shape, device=M.device, dtype=torch.float64)
    for p in (1, 2, 4, 8):
        w = torch.where(M == p, torch.full_like(w, 1.0 / p), w)
    w = torch.where(valid, w, torch.zeros_like(w))
    return float(w.sum() / (valid.sum() * B * H))


# ----------------------------------------------------------------------------- kernel launch helpers (torch)
def to_layout(x, layout):
    """BHSD tensor -> same values in ``layout`` (a permuted view of a BSHD-contiguous copy for "BSHD")."""
    if layout == "BHSD":
        return x
    return x.transpose(1, 2).contiguous()


def from_layout(x, layout):
    return x if layout == "BHSD" else x.transpose(1, 2)


def run_pool_kernel(k, v, levels=(2, 4, 8), layout="BHSD"):
    """k, v already in ``layout``; returns dicts of pooled [B, Hkv, n_p, D]."""
    from paddlemix_psa.kernels.pool import psa_pool_kv

    if layout == "BHSD":
        B, Hkv, Lk, D = k.shape
    else:
        B, Lk, Hkv, D = k.shape
    kp = {p: torch.full((B, Hkv, -(-Lk // p), D), float("nan"), device=k.device, dtype=k.dtype) for p in levels}
    vp = {p: torch.full_like(kp[p], float("nan")) for p in levels}
    psa_pool_kv(k, v, kp, vp, layout=layout)
    return kp, vp


def run_psa_kernel(q, k, v, level_map, *, query_block, key_block, causal=True, scale=None, layout="BHSD",
                   gqa_mask="per_head", levels=None, lse=False, out=None, runs=False, **config):
    """q, k, v given in ``layout``; the map in BHSD terms. Output poisoned with NaN before the call.
    ``runs``: use psa_build_lut's index list with level-1 runs (slab loads) instead of the oracle's list.
    ``config``: launch overrides (block_n, use_tma, ...). Returns (out in ``layout``, lse or None, (kp, vp))."""
    from paddlemix_psa.kernels.attn_fwd import default_config, psa_attn_fwd, run_blocks_for
    from paddlemix_psa.kernels.select import psa_build_lut

    if layout == "BHSD":
        Lq, Lk = q.shape[2], k.shape[2]
    else:
        Lq, Lk = q.shape[1], k.shape[1]
    if levels is None:
        levels = (2, 4, 8)
    kp, vp = run_pool_kernel(k, v, levels=levels, layout=layout)
    run_t = None
    if runs:
        D = q.shape[-1]
        block_n = config.get("block_n") or default_config(D, query_block, key_block, str(q.dtype))["block_n"]
        lut = torch.full(level_map.shape, -7, device=q.device, dtype=torch.int32)
        cnt = torch.full(level_map.shape[:3] + (4,), -7, device=q.device, dtype=torch.int32)
        run_t = torch.full(level_map.shape[:3], -7, device=q.device, dtype=torch.int32)
        psa_build_lut(level_map.contiguous(), lut, cnt, Lq=Lq, Lk=Lk, query_block=query_block,
                      key_block=key_block, causal=causal, runs=run_t, run_blocks=run_blocks_for(block_n, key_block))
    else:
        lut, cnt = build_lut(level_map, Lq=Lq, Lk=Lk, query_block=query_block, key_block=key_block, causal=causal)
    if out is None:
        out = torch.full_like(q, float("nan"))
    lse_t = None
    if lse:
        B, Hq = q.shape[0], (q.shape[1] if layout == "BHSD" else q.shape[2])
        lse_t = torch.full((B, Hq, Lq), float("nan"), device=q.device, dtype=torch.float32)
    psa_attn_fwd(q, k, v, kp, vp, lut, cnt, out, query_block=query_block, key_block=key_block, causal=causal,
                 scale=scale, layout=layout, gqa_mask=gqa_mask, lse=lse_t, runs=run_t, config=config)
    return out, lse_t, (kp, vp)
