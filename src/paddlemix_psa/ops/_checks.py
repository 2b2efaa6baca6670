"""Argument validation for the public ops: every error names the argument and the allowed values."""
from __future__ import annotations

import math

import paddle

from ..config import CANONICAL_ORDER, AttentionConfig

LAYOUTS = ("BHSD", "BSHD")
HEAD_DIMS = (64, 80, 96, 128)
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def dtype_name(t: paddle.Tensor) -> str:
    return str(t.dtype).split(".")[-1]


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is invalid: must be one of {list(LAYOUTS)} "
                         f"('BHSD' = [B, H, L, D], 'BSHD' = [B, L, H, D])")
    return layout


def to_bhsd(t: paddle.Tensor, layout: str) -> paddle.Tensor:
    return t if layout == "BHSD" else t.transpose([0, 2, 1, 3])


def check_qkv(q, k, v, layout: str, causal: bool) -> tuple[int, int, int, int, int, int]:
    """Validate q, k, v; returns (B, H_q, H_kv, Lq, Lk, D)."""
    check_layout(layout)
    names = ("q", "k", "v")
    for name, t in zip(names, (q, k, v)):
        if not isinstance(t, paddle.Tensor):
            raise TypeError(f"{name} must be a paddle.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"{name} must be 4-D ({'[B, H, L, D]' if layout == 'BHSD' else '[B, L, H, D]'} "
                             f"for layout {layout!r}), got shape {list(t.shape)}")
        if dtype_name(t) not in FLOAT_DTYPES:
            raise TypeError(f"{name}.dtype={dtype_name(t)} is not supported: use one of {list(FLOAT_DTYPES)}")
    if not (dtype_name(q) == dtype_name(k) == dtype_name(v)):
        raise TypeError(f"q, k, v must share one dtype, got {dtype_name(q)}, {dtype_name(k)}, {dtype_name(v)}")
    ax_h, ax_l = (1, 2) if layout == "BHSD" else (2, 1)
    B, Hq, Lq, D = q.shape[0], q.shape[ax_h], q.shape[ax_l], q.shape[3]
    Hkv, Lk = k.shape[ax_h], k.shape[ax_l]
    if D not in HEAD_DIMS:
        raise ValueError(f"q head dim D={D} is not supported: must be one of {list(HEAD_DIMS)}")
    for name, t in (("k", k), ("v", v)):
        if t.shape[0] != B:
            raise ValueError(f"{name} batch size {t.shape[0]} != q batch size {B}")
        if t.shape[3] != D:
            raise ValueError(f"{name} head dim {t.shape[3]} != q head dim {D}")
    if list(v.shape) != list(k.shape):
        raise ValueError(f"v shape {list(v.shape)} must equal k shape {list(k.shape)}")
    if Hkv < 1 or Hq % Hkv:
        raise ValueError(f"q has {Hq} heads and k has {Hkv}: the query head count must be a multiple of "
                         f"the key/value head count (GQA)")
    if Lq < 1 or Lk < 1:
        raise ValueError(f"sequence lengths must be >= 1, got Lq={Lq}, Lk={Lk}")
    if causal and Lq > Lk:
        raise ValueError(f"causal attention needs Lq <= Lk (bottom-right alignment), got Lq={Lq}, Lk={Lk}")
    return B, Hq, Hkv, Lq, Lk, D


def check_scale(scale) -> float | None:
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale={scale!r} is invalid: must be None (1/sqrt(D)) or a finite real > 0")
    return float(scale)


def check_level_map(level_map, *, B: int, Hq: int, Hkv: int, Lq: int, Lk: int, config: AttentionConfig) -> None:
    """Pitfall 12: the map's (nq, nk) must match the config's block sizes."""
    if not isinstance(level_map, paddle.Tensor):
        raise TypeError(f"level_map must be a paddle.Tensor, got {type(level_map).__name__}")
    if dtype_name(level_map) != "int8":
        raise TypeError(f"level_map.dtype={dtype_name(level_map)} is invalid: must be int8")
    Hm = Hq if config.gqa_mask == "per_head" else Hkv
    nq, nk = -(-Lq // config.query_block), -(-Lk // config.key_block)
    if list(level_map.shape) != [B, Hm, nq, nk]:
        raise ValueError(f"level_map shape {list(level_map.shape)} is invalid: need [B, H_m, nq, nk] = "
                         f"{[B, Hm, nq, nk]} for Lq={Lq}, Lk={Lk}, query_block={config.query_block}, "
                         f"key_block={config.key_block}, gqa_mask={config.gqa_mask!r}")
    m = level_map.astype("int32")
    ok = (m == 0) | (m == 1) | (m == 2) | (m == 4) | (m == 8)
    if not bool(ok.all()):
        raise ValueError(f"level_map values must be in {sorted(CANONICAL_ORDER)}")
