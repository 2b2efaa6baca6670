"""Argument validation for the public ops: every error names the argument and the allowed values."""
from __future__ import annotations

import math
import operator

import numpy as np
import paddle

from ..config import CANONICAL_ORDER, INT32_MAX, AttentionConfig

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


def check_prompt_end(prompt_end) -> int | None:
    """`prompt_end` (docs/ALGORITHM.md §8 F1): None (= Lk) or an int key position in [1, 2**31 - 1].

    A value above Lk is allowed: in chunked prefill the prompt may end after the current chunk."""
    if prompt_end is None:
        return None
    try:
        if isinstance(prompt_end, bool):
            raise TypeError
        value = operator.index(prompt_end)
    except TypeError:
        raise TypeError(f"prompt_end={prompt_end!r} is invalid: must be None or an int in [1, {INT32_MAX}] "
                        f"(the absolute key position where the prompt ends)") from None
    if not 1 <= value <= INT32_MAX:
        raise ValueError(f"prompt_end={value} is invalid: must be None or an int in [1, {INT32_MAX}] "
                         f"(the absolute key position where the prompt ends)")
    return value


# Logit magnitude (docs/ALGORITHM.md §11 pitfall 13). The reference computes logits in fp32; it switches to fp64
# when the Cauchy-Schwarz bound scale*max|q|*max|k| could leave fp32 (margin for the max subtraction and the
# ln c bias), and rejects inputs whose bound would leave fp64 too. Pooling sums up to 8 values of v, hence 8*|v|.
FP32_SAFE = float(np.finfo(np.float32).max) / 4
FP64_SAFE = float(np.finfo(np.float64).max) / 4
DTYPE_MAX = {"float16": 65504.0, "bfloat16": float(np.finfo(np.float32).max),
             "float32": float(np.finfo(np.float32).max), "float64": float(np.finfo(np.float64).max)}


def _max_row_norm(t: paddle.Tensor) -> float:
    return float(paddle.linalg.norm(t.astype("float64"), axis=-1).max())


def reference_compute_dtype(q, k, v, scale: float) -> str | None:
    """For the CPU reference: None when fp32 is safe, "float64" when only fp64 keeps the logits finite.

    Reads the tensors (a host sync): call it on the reference path only. Raises when fp64 cannot hold them."""
    nq, nk = _max_row_norm(q), _max_row_norm(k)
    vmax = float(v.astype("float64").abs().max())
    bound = max(scale, 1.0) * nq * nk
    if bound < FP32_SAFE and 8 * vmax < FP32_SAFE:
        return None
    if bound < FP64_SAFE and math.isfinite(8 * vmax):
        return "float64"
    raise ValueError(f"q/k magnitudes with scale={scale:g} give logits up to {bound:.3g}, beyond the float64 "
                     f"limit {FP64_SAFE:.3g}: scale * max|q| * max|k| must stay below it")


def check_scale_for_kernels(scale: float, dtype: str, D: int) -> None:
    """Triton path (fp32 logits), host side only (no device sync): reject a `scale` for which even inputs at
    their dtype's limit could not give representable logits. float16 is fully covered by this bound; for
    bfloat16 the bound is scale * max|q| * max|k| < 8.5e37, which only the caller can guarantee."""
    worst = scale * DTYPE_MAX[dtype] ** 2 * D if dtype == "float16" else scale
    if worst >= FP32_SAFE:
        raise ValueError(f"scale={scale:g} is invalid for {dtype} inputs on the Triton path: the fp32 logits "
                         f"scale * |q| * |k| could reach {worst:.3g}, beyond the limit {FP32_SAFE:.3g}")


def check_level_map(level_map, *, B: int, Hq: int, Hkv: int, Lq: int, Lk: int, config: AttentionConfig) -> None:
    """docs/ALGORITHM.md §11 pitfall 12: the map's (nq, nk) must match the config's block sizes."""
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
