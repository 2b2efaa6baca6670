"""Dense level map -> per-query-block index list sorted by level (the form the attention kernel consumes)."""
from __future__ import annotations

import paddle

from ..config import LEVELS
from ._geometry import valid_mask


def level_map_to_lut(level_map: paddle.Tensor, *, Lq: int, Lk: int, query_block: int, key_block: int,
                     causal: bool = True) -> tuple[paddle.Tensor, paddle.Tensor]:
    """Returns (lut int32 [B, H_m, nq, nk], counts int32 [B, H_m, nq, 4]).

    Row (b, h, i) lists its kept valid key blocks grouped by level 1, 2, 4, 8 (ascending j within a level),
    then padding zeros; counts[..., t] is the number of entries of level LEVELS[t]. Upper-triangle blocks
    are dropped even when the map is non-zero there (docs/ALGORITHM.md §4.4 "Block classes").
    """
    B, H, nq, nk = level_map.shape
    M = level_map.astype("int32")
    valid = valid_mask(Lq, Lk, query_block, key_block, causal)[None, None]
    j = paddle.arange(nk, dtype="int64")
    sort_key = paddle.full(M.shape, len(LEVELS) * nk, "int64") + j
    counts = []
    for t, p in enumerate(LEVELS):
        sel = (M == p) & valid
        sort_key = paddle.where(sel, t * nk + j, sort_key)
        counts.append(sel.astype("int32").sum(axis=-1))
    counts = paddle.stack(counts, axis=-1).astype("int32")
    order = paddle.argsort(sort_key, axis=-1)
    kept = paddle.arange(nk, dtype="int32")[None, None, None, :] < counts.sum(axis=-1, keepdim=True).astype("int32")
    lut = paddle.where(kept, order.astype("int32"), paddle.zeros_like(order, dtype="int32"))
    return lut, counts
