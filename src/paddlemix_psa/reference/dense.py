"""Dense attention reference: bottom-right causal alignment, GQA without repeating K/V, chunked rows."""
from __future__ import annotations

import math

import paddle

from ._softmax import masked_softmax_matmul


def dense_attention_ref(q, k, v, *, causal: bool = True, scale: float | None = None,
                        chunk: int = 256) -> paddle.Tensor:
    """softmax(λ·q·kᵀ)·v on [B, H, L, D] tensors; query row r sees key j iff j <= r + (Lk - Lq).

    Computes in fp32 (fp64 for fp64 inputs) and returns the input dtype. Rows with no visible key give 0.
    """
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    cdt = "float64" if q.dtype == paddle.float64 else "float32"
    kf, vf = k.astype(cdt), v.astype(cdt)
    outs = []
    keys = paddle.arange(Lk, dtype="int64")
    for r0 in range(0, Lq, chunk):
        r1 = min(r0 + chunk, Lq)
        qc = q[:, :, r0:r1].astype(cdt).reshape([B, Hkv, G * (r1 - r0), D])
        logits = paddle.matmul(qc, kf, transpose_y=True) * scale          # [B, Hkv, G*rows, Lk]
        if causal:
            t = paddle.arange(r0, r1, dtype="int64") + (Lk - Lq)
            vis = (keys[None, :] <= t[:, None]).tile([G, 1])[None, None]
        else:
            vis = paddle.ones([1, 1, 1, Lk], "bool")
        out = masked_softmax_matmul(logits, vis, vf)
        outs.append(out.reshape([B, Hq, r1 - r0, D]))
    return paddle.concat(outs, axis=2).astype(q.dtype)
