"""Block geometry shared by the reference modules (docs/ALGORITHM.md §1): valid, diagonal and upper blocks."""
from __future__ import annotations

import paddle


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def block_bounds(Lq: int, Lk: int, query_block: int, key_block: int, causal: bool):
    """Per query block i: (first diagonal key block, J_i = last valid key block), as int64 tensors [nq]."""
    nq, nk = cdiv(Lq, query_block), cdiv(Lk, key_block)
    i = paddle.arange(nq, dtype="int64")
    off = Lk - Lq
    if not causal:
        return paddle.zeros([nq], "int64"), paddle.full([nq], nk - 1, "int64")
    first = (i * query_block + off) // key_block
    last = (paddle.minimum((i + 1) * query_block, paddle.full([nq], Lq, "int64")) - 1 + off) // key_block
    return first, last


def valid_mask(Lq: int, Lk: int, query_block: int, key_block: int, causal: bool) -> paddle.Tensor:
    """bool [nq, nk]: key block j is valid (not in the causal upper triangle) for query block i."""
    nk = cdiv(Lk, key_block)
    _, last = block_bounds(Lq, Lk, query_block, key_block, causal)
    return paddle.arange(nk, dtype="int64")[None, :] <= last[:, None]


def diagonal_mask(Lq: int, Lk: int, query_block: int, key_block: int) -> paddle.Tensor:
    """bool [nq, nk]: key block j intersects query block i's causal position range (the set D_i)."""
    nk = cdiv(Lk, key_block)
    first, last = block_bounds(Lq, Lk, query_block, key_block, True)
    j = paddle.arange(nk, dtype="int64")[None, :]
    return (j >= first[:, None]) & (j <= last[:, None])
