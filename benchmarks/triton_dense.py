"""A dense causal attention forward in Triton with host TMA descriptors: the `triton-dense` benchmark row.

It is the ceiling a plain Triton kernel reaches on the card with the PSA kernel's tiles (128-row query blocks,
base-2 online softmax, GQA by head index), so the PSA rows can be read against "what Triton can do here" as well
as against cuDNN. Benchmark code only: the plugin never calls it. Inputs: contiguous BHSD torch tensors.
"""
from __future__ import annotations

import math

import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

_LOG2E = 1.4426950408889634


@triton.jit
def _step(acc, l_i, m_i, q, k_desc, v_desc, bh_kv, n0, rows, qk_scale, MASK: tl.constexpr,
          BLOCK_N: tl.constexpr, D: tl.constexpr):
    k = k_desc.load([bh_kv, n0, 0]).reshape([BLOCK_N, D])
    s = tl.dot(q, tl.trans(k)) * qk_scale
    if MASK:
        cols = n0 + tl.arange(0, BLOCK_N)
        s = tl.where(cols[None, :] <= rows[:, None], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = v_desc.load([bh_kv, n0, 0]).reshape([BLOCK_N, D])
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit
def _dense_causal_kernel(q_desc, k_desc, v_desc, o_desc, Hq, G, L, qk_scale,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    i = tl.num_programs(0) - 1 - tl.program_id(0)  # longest rows first
    bh = tl.program_id(1)
    bh_kv = (bh // Hq) * (Hq // G) + (bh % Hq) // G
    m0 = i * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    q = q_desc.load([bh, m0, 0]).reshape([BLOCK_M, D])
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for n0 in tl.range(0, m0, BLOCK_N):  # fully visible key tiles: no mask
        acc, l_i, m_i = _step(acc, l_i, m_i, q, k_desc, v_desc, bh_kv, n0, rows, qk_scale, False, BLOCK_N, D)
    for n0 in tl.range(m0, m0 + BLOCK_M, BLOCK_N):  # the diagonal tiles
        acc, l_i, m_i = _step(acc, l_i, m_i, q, k_desc, v_desc, bh_kv, n0, rows, qk_scale, True, BLOCK_N, D)
    out = acc / l_i[:, None]
    o_desc.store([bh, m0, 0], out.to(o_desc.dtype).reshape([1, BLOCK_M, D]))


def dense_causal_attention(q, k, v, out, *, block_m=128, block_n=64, num_warps=4, num_stages=2):
    """q/out ``[B, H_q, L, D]``, k/v ``[B, H_kv, L, D]``, contiguous, fp16/bf16, L a multiple of ``block_m``."""
    B, Hq, L, D = q.shape
    Hkv = k.shape[1]
    if L % block_m or block_m % block_n:
        raise ValueError(f"L={L} must be a multiple of block_m={block_m}, itself a multiple of block_n={block_n}")

    def desc(t, rows):
        return TensorDescriptor(t, [t.shape[0] * t.shape[1], L, D], [L * D, D, 1], [1, rows, D])

    grid = (L // block_m, B * Hq)
    _dense_causal_kernel[grid](desc(q, block_m), desc(k, block_n), desc(v, block_n), desc(out, block_m),
                               Hq, Hq // Hkv, L, _LOG2E / math.sqrt(D), BLOCK_M=block_m, BLOCK_N=block_n, D=D,
                               num_warps=num_warps, num_stages=num_stages)
    return out
