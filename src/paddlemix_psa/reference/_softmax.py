"""The one safe masked softmax of every reference path (docs/ALGORITHM.md §4.4: no -inf - -inf, empty rows -> 0)."""
from __future__ import annotations

import paddle


def masked_softmax(logits: paddle.Tensor, visible: paddle.Tensor) -> paddle.Tensor:
    """Softmax over the last axis restricted to `visible` (broadcastable bool); all-invisible rows give 0."""
    neg = paddle.full([], float("-inf"), logits.dtype)
    s = paddle.where(visible, logits, neg)
    m = s.max(axis=-1, keepdim=True)
    m = paddle.where(paddle.isfinite(m), m, paddle.zeros_like(m))
    e = paddle.where(visible, paddle.exp(s - m), paddle.zeros([], logits.dtype))
    den = e.sum(axis=-1, keepdim=True)
    return e / paddle.where(den > 0, den, paddle.ones_like(den))


def masked_softmax_matmul(logits: paddle.Tensor, visible: paddle.Tensor, values: paddle.Tensor) -> paddle.Tensor:
    return paddle.matmul(masked_softmax(logits, visible), values)
