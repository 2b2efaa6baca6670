"""Similarity cap of docs/ALGORITHM.md §8 F5: int8 ``L_j`` per (b, KV head, key block).

For p in (2, 4, 8) the complete groups of key block j are the aligned groups ``[g*p, g*p + p)`` that lie inside
``[j*b_k, min((j+1)*b_k, Lk))``; ``sim_p(j)`` is the mean over them of ``cos(K[g*p], K[g*p + p - 1])`` with
``cos(x, y) = <x, y> / (max(|x|, 1e-8) * max(|y|, 1e-8))``, or ``-inf`` when there is none.
``L_j = max(1, 2*[sim2 > t2], 4*[sim4 > t4], 8*[sim8 > t8])``. Everything is fp32; loads past ``Lk`` are masked
and such groups are excluded, so the tail block and ``Lk < key_block`` are handled.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._tensorlike import dtype_name, shape, strides
from .geometry import HEAD_DIMS as _HEAD_DIMS, KEY_BLOCKS

__all__ = ["psa_similarity_cap"]

_LAYOUTS = ("BHSD", "BSHD")


@triton.jit
def _group_sim(k_base, offs_j, offs_d, dmask, Lk, stride_kl, tau,
               P: tl.constexpr, KEY_BLOCK: tl.constexpr, BLOCK_J: tl.constexpr):
    # returns int1 [BLOCK_J]: sim_p(j) > tau over the complete groups of each block
    NG: tl.constexpr = KEY_BLOCK // P
    g = tl.arange(0, NG)
    first = offs_j.to(tl.int64)[:, None] * KEY_BLOCK + g[None, :] * P  # [BLOCK_J, NG]
    last = first + (P - 1)
    ok = last < Lk  # complete group (never crosses a key block: P divides KEY_BLOCK)
    m3 = ok[:, :, None] & dmask[None, None, :]
    x = tl.load(k_base + first[:, :, None] * stride_kl + offs_d[None, None, :], mask=m3, other=0.0)
    y = tl.load(k_base + last[:, :, None] * stride_kl + offs_d[None, None, :], mask=m3, other=0.0)
    x = x.to(tl.float32)
    y = y.to(tl.float32)
    dot = tl.sum(x * y, axis=2)
    nx = tl.maximum(tl.sqrt(tl.sum(x * x, axis=2)), 1e-8)
    ny = tl.maximum(tl.sqrt(tl.sum(y * y, axis=2)), 1e-8)
    cos = tl.where(ok, dot / (nx * ny), 0.0)
    cnt = tl.sum(ok.to(tl.float32), axis=1)
    sim = tl.where(cnt > 0, tl.sum(cos, axis=1) / tl.maximum(cnt, 1.0), float("-inf"))
    return sim > tau


@triton.jit(do_not_specialize=["Lk", "nk", "stride_ob", "stride_oh"])
def _similarity_cap_kernel(K, Out, stride_kb, stride_kh, stride_kl, stride_ob, stride_oh,
                           H, Lk, nk, tau2, tau4, tau8,
                           HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, KEY_BLOCK: tl.constexpr,
                           BLOCK_J: tl.constexpr):
    pid_j = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < HEAD_DIM
    ok2 = _group_sim(k_base, offs_j, offs_d, dmask, Lk, stride_kl, tau2, 2, KEY_BLOCK, BLOCK_J)
    ok4 = _group_sim(k_base, offs_j, offs_d, dmask, Lk, stride_kl, tau4, 4, KEY_BLOCK, BLOCK_J)
    ok8 = _group_sim(k_base, offs_j, offs_d, dmask, Lk, stride_kl, tau8, 8, KEY_BLOCK, BLOCK_J)
    cap = tl.full([BLOCK_J], 1, dtype=tl.int32)
    cap = tl.where(ok2, tl.maximum(cap, 2), cap)
    cap = tl.where(ok4, tl.maximum(cap, 4), cap)
    cap = tl.where(ok8, tl.maximum(cap, 8), cap)
    o_base = Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(o_base + offs_j, cap.to(tl.int8), mask=offs_j < nk)


def psa_similarity_cap(k, out, *, key_block: int, thresholds, layout: str, geometry=None) -> None:
    """Per-block similarity cap ``L_j`` (docs/ALGORITHM.md §8 F5) into the caller's ``out``.

    Args:
        k: post-RoPE keys ``[B, H_kv, Lk, D]`` (``"BHSD"``) or ``[B, Lk, H_kv, D]`` (``"BSHD"``), fp16 / bf16 / fp32,
            unit stride on D. Read with masked loads; nothing at or past ``Lk`` is touched.
        out: contiguous int8 ``[B, H_kv, nk]``, ``nk = ceil(Lk / key_block)``; values in {1, 2, 4, 8}.
        key_block: b_k in {16, 32, 64, 128}.
        thresholds: ``(tau2, tau4, tau8)``; a level passes when ``sim_p > tau_p`` (strict).
        layout: ``"BHSD"`` or ``"BSHD"``.
        geometry: the call's :class:`~.geometry.CallGeometry` from the pipeline (its k is this ``k``); k is then
            not read again.
    """
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    if geometry is None:
        s = shape(k)
        if len(s) != 4:
            raise ValueError(f"k must be 4-D, got shape {s}")
        st = strides(k)
        if layout == "BHSD":
            B, H, Lk, D = s
            skb, skh, skl, skd = st
        else:
            B, Lk, H, D = s
            skb, skl, skh, skd = st
        if D not in _HEAD_DIMS:
            raise ValueError(f"head dim must be one of {_HEAD_DIMS}, got {D}")
        if key_block not in KEY_BLOCKS:
            raise ValueError(f"key_block must be one of {KEY_BLOCKS}, got {key_block}")
        if dtype_name(k) not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"k must be float16, bfloat16 or float32, got {dtype_name(k)}")
    else:  # validated by call_geometry
        geometry.check(layout=layout, key_block=key_block)
        B, H, Lk, D = geometry.B, geometry.Hkv, geometry.Lk, geometry.D
        skb, skh, skl, skd = geometry.k_strides
    if skd != 1:
        raise ValueError("k needs unit stride along D")
    if Lk < 1:
        raise ValueError("empty key sequence")
    t = tuple(float(x) for x in thresholds)
    if len(t) != 3:
        raise ValueError(f"thresholds must be (tau2, tau4, tau8), got {thresholds!r}")
    nk = -(-Lk // key_block)
    if shape(out) != (B, H, nk) or dtype_name(out) != "int8":
        raise ValueError(f"out must be int8 {(B, H, nk)}, got {dtype_name(out)} {shape(out)}")
    so = strides(out)
    if so[2] != 1:
        raise ValueError(f"out must have unit stride on its last axis, got {so}")
    BLOCK_J = max(1, 64 // key_block)  # 64 keys (or one block) per program: bounded registers
    grid = (triton.cdiv(nk, BLOCK_J), B * H)
    _similarity_cap_kernel[grid](k, out, skb, skh, skl, so[0], so[1], H, Lk, nk, t[0], t[1], t[2],
                                 HEAD_DIM=D, BLOCK_D=1 << (D - 1).bit_length(), KEY_BLOCK=key_block,
                                 BLOCK_J=BLOCK_J, num_warps=8)
