"""Pyramid K/V pooling (docs/ALGORITHM.md §3): one pass over K and V builds every requested level.

Token g of level p is the plain mean of the *valid* keys ``[g*p, min((g+1)*p, Lk))`` (count ``c = min(p, Lk - g*p)``),
summed in fp32 and stored in the input dtype. Sums come straight from the raw tokens, which is exactly the
count-weighted hierarchical rule of §3.4. No ghost tokens: level p has ``ceil(Lk/p)`` tokens.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._tensorlike import dtype_name, shape, strides
from .geometry import HEAD_DIMS as _HEAD_DIMS

__all__ = ["psa_pool_kv", "POOL_LEVELS"]

POOL_LEVELS = (2, 4, 8)


@triton.jit
def _pool_store(x, tok0, Lk, out_ptr, s_on, offs_d, dmask, P: tl.constexpr, BLOCK_T: tl.constexpr,
                D_PAD: tl.constexpr):
    # x: fp32 [BLOCK_T, D_PAD] with zero rows beyond Lk; tok0: first token of this tile (multiple of 8)
    sums = tl.sum(tl.reshape(x, [BLOCK_T // P, P, D_PAD]), axis=1)  # [BLOCK_T // P, D_PAD]
    g = tok0 // P + tl.arange(0, BLOCK_T // P)
    first = g * P
    cnt = tl.minimum(Lk - first, P)
    ok = cnt > 0
    mean = sums / tl.maximum(cnt, 1).to(tl.float32)[:, None]
    ptrs = out_ptr + g.to(tl.int64)[:, None] * s_on + offs_d[None, :]
    tl.store(ptrs, mean.to(out_ptr.dtype.element_ty), mask=ok[:, None] & dmask[None, :])


@triton.jit(do_not_specialize=["Lk", "s2kh", "s2kb", "s2vh", "s2vb", "s4kh", "s4kb", "s4vh", "s4vb", "s8kh",
                               "s8kb", "s8vh", "s8vb"])
def _psa_pool_kernel(K, V, K2, V2, K4, V4, K8, V8,
                     skb, skh, skn, svb, svh, svn,
                     s2kb, s2kh, s2kn, s2vb, s2vh, s2vn,
                     s4kb, s4kh, s4kn, s4vb, s4vh, s4vn,
                     s8kb, s8kh, s8kn, s8vb, s8vh, s8vn,
                     Hkv, Lk,
                     BLOCK_T: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                     HAS2: tl.constexpr, HAS4: tl.constexpr, HAS8: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hkv).to(tl.int64)
    hk = (pid_bh % Hkv).to(tl.int64)
    tok0 = pid_t * BLOCK_T
    tok = tok0 + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, D_PAD)
    dmask = offs_d < D
    lmask = (tok < Lk)[:, None] & dmask[None, :]
    tok64 = tok.to(tl.int64)
    for which in tl.static_range(2):
        if which == 0:
            src = K + b * skb + hk * skh
            sn = skn
        else:
            src = V + b * svb + hk * svh
            sn = svn
        x = tl.load(src + tok64[:, None] * sn + offs_d[None, :], mask=lmask, other=0.0).to(tl.float32)
        if HAS2:
            if which == 0:
                _pool_store(x, tok0, Lk, K2 + b * s2kb + hk * s2kh, s2kn, offs_d, dmask, 2, BLOCK_T, D_PAD)
            else:
                _pool_store(x, tok0, Lk, V2 + b * s2vb + hk * s2vh, s2vn, offs_d, dmask, 2, BLOCK_T, D_PAD)
        if HAS4:
            if which == 0:
                _pool_store(x, tok0, Lk, K4 + b * s4kb + hk * s4kh, s4kn, offs_d, dmask, 4, BLOCK_T, D_PAD)
            else:
                _pool_store(x, tok0, Lk, V4 + b * s4vb + hk * s4vh, s4vn, offs_d, dmask, 4, BLOCK_T, D_PAD)
        if HAS8:
            if which == 0:
                _pool_store(x, tok0, Lk, K8 + b * s8kb + hk * s8kh, s8kn, offs_d, dmask, 8, BLOCK_T, D_PAD)
            else:
                _pool_store(x, tok0, Lk, V8 + b * s8vb + hk * s8vh, s8vn, offs_d, dmask, 8, BLOCK_T, D_PAD)


def _bhsd_strides(t, layout):
    st = strides(t)
    if layout == "BHSD":
        return st[0], st[1], st[2], st[3]
    return st[0], st[2], st[1], st[3]  # BSHD: [B, L, H, D] -> (b, h, l, d)


def _bhsd_shape(t, layout):
    s = shape(t)
    if len(s) != 4:
        raise ValueError(f"expected a 4-D tensor, got shape {s}")
    if layout == "BHSD":
        return s
    return (s[0], s[2], s[1], s[3])


def _pool_launch_args(k, v, k_out, v_out, *, layout, block_t, num_warps, geometry=None):
    """Validate and build ``(grid, args, meta)`` for ``_psa_pool_kernel`` (None when there is no work)."""
    if layout not in ("BHSD", "BSHD"):
        raise ValueError(f"layout must be 'BHSD' or 'BSHD', got {layout!r}")
    if set(k_out) != set(v_out) or not set(k_out) <= set(POOL_LEVELS):
        raise ValueError(f"k_out/v_out must have the same keys, a subset of {POOL_LEVELS}; got {sorted(k_out)}"
                         f" and {sorted(v_out)}")
    if geometry is None:
        B, Hkv, Lk, D = _bhsd_shape(k, layout)
        if _bhsd_shape(v, layout) != (B, Hkv, Lk, D):
            raise ValueError(f"k and v shapes differ: {shape(k)} vs {shape(v)}")
        if D not in _HEAD_DIMS:
            raise ValueError(f"head dim must be one of {_HEAD_DIMS}, got {D}")
        dt = dtype_name(k)
        if dt != dtype_name(v):
            raise ValueError(f"k and v dtypes differ: {dt} vs {dtype_name(v)}")
        kst, vst = _bhsd_strides(k, layout), _bhsd_strides(v, layout)
    else:  # validated by call_geometry
        geometry.check(needs_v=True, layout=layout)
        B, Hkv, Lk, D, dt = geometry.B, geometry.Hkv, geometry.Lk, geometry.D, geometry.dtype
        kst, vst = geometry.k_strides, geometry.v_strides
    if block_t % 8 or block_t & (block_t - 1):
        raise ValueError("block_t must be a power of two >= 8")
    if kst[3] != 1 or vst[3] != 1:
        raise ValueError("k and v need unit stride along D")
    if not k_out or B * Hkv * Lk == 0:
        return None
    ost = {}
    for p in POOL_LEVELS:
        if p in k_out:
            for name, t in (("k_out", k_out[p]), ("v_out", v_out[p])):
                want = (B, Hkv, -(-Lk // p), D)
                if shape(t) != want:
                    raise ValueError(f"{name}[{p}] must have shape {want}, got {shape(t)}")
                if dtype_name(t) != dt:
                    raise ValueError(f"{name}[{p}] must have dtype {dt}, got {dtype_name(t)}")
                if strides(t)[3] != 1:
                    raise ValueError(f"{name}[{p}] needs unit stride along D")
            ost[p] = strides(k_out[p])[:3] + strides(v_out[p])[:3]
        else:
            ost[p] = (0,) * 6
    ptr = {p: (k_out.get(p, k), v_out.get(p, v)) for p in POOL_LEVELS}
    grid = (triton.cdiv(Lk, block_t), B * Hkv)
    args = (
        k, v, ptr[2][0], ptr[2][1], ptr[4][0], ptr[4][1], ptr[8][0], ptr[8][1],
        kst[0], kst[1], kst[2], vst[0], vst[1], vst[2],
        *ost[2], *ost[4], *ost[8],
        Hkv, Lk,
    )
    meta = dict(
        BLOCK_T=block_t, D=D, D_PAD=triton.next_power_of_2(D),
        HAS2=2 in k_out, HAS4=4 in k_out, HAS8=8 in k_out,
        num_warps=num_warps,
    )
    return grid, args, meta


def psa_pool_kv(k, v, k_out: dict, v_out: dict, *, layout: str = "BHSD", block_t: int = 64,
                num_warps: int = 4, geometry=None) -> None:
    """Pool K and V for every level in ``k_out`` (a subset of {2, 4, 8}) in one pass.

    k, v: ``[B, H_kv, Lk, D]`` (``"BHSD"``) or ``[B, Lk, H_kv, D]`` (``"BSHD"``), fp16/bf16 (fp32 allowed), unit
    stride along D. ``k_out[p]``/``v_out[p]``: caller-allocated ``[B, H_kv, ceil(Lk/p), D]`` in the input dtype
    (any strides with unit stride along D). Nothing is returned; outputs are written in place. ``geometry``: the
    call's :class:`~.geometry.CallGeometry` (built with v) from the pipeline; k and v are then not read again.
    """
    launch = _pool_launch_args(k, v, k_out, v_out, layout=layout, block_t=block_t, num_warps=num_warps,
                               geometry=geometry)
    if launch is not None:
        grid, args, meta = launch
        _psa_pool_kernel[grid](*args, **meta)
