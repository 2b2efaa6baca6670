"""Kernel vs reference: one predicate (`select_backend`) and the Paddle side of the Triton pipeline.

The Triton path runs for Paddle GPU tensors in fp16/bf16 in dynamic-graph mode. Under TRITON_INTERPRET=1
it also runs on CPU tensors through host views (how CI exercises the kernels without a GPU). Anything else
uses the pure-Paddle reference; a GPU call that cannot use the kernels is counted as an unexpected fallback.
"""
from __future__ import annotations

import os

import paddle

from .. import _env
from ..config import LEVELS, AttentionConfig
from ..statistics import REGISTRY
from ._checks import dtype_name
from ._launch import kernel_args, launch_scope

KERNEL_DTYPES = ("float16", "bfloat16")
INTERPRET_DTYPES = ("float16", "float32")      # the interpreter computes bf16 wrongly (TRITON-PADDLE §6)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the install
        return False
    return True


def _kernel_blocker(q: paddle.Tensor) -> str | None:
    """Why the kernels cannot run on q (None when they can)."""
    if q.place.is_cpu_place() and not _interpreting():
        return "cpu_tensor"
    if not paddle.in_dynamic_mode():
        return "static_graph"
    if not _triton_importable():
        return "triton_unavailable"
    dt = dtype_name(q)
    if q.place.is_cpu_place():
        return None if dt in INTERPRET_DTYPES else f"dtype:{dt}"
    if not q.place.is_gpu_place():
        return "device"
    return None if dt in KERNEL_DTYPES else f"dtype:{dt}"


def select_backend(q: paddle.Tensor) -> str:
    """"triton" or "reference" for this call, honouring PADDLEMIX_PSA_BACKEND (auto | triton | reference)."""
    wanted = _env.backend()
    if wanted == "reference":
        return "reference"
    blocker = _kernel_blocker(q)
    if blocker is None:
        return "triton"
    if wanted == "triton":
        raise RuntimeError(f"{_env.BACKEND}=triton but the Triton kernels cannot run here ({blocker}); "
                           f"unset it to use the pure-Paddle reference")
    if blocker != "cpu_tensor":     # CPU tensors are the reference's job; anything else is unexpected
        REGISTRY.record_fallback(f"unsupported:{blocker}", expected=False,
                                 detail="PSA runs the pure-Paddle reference instead of the Triton kernels")
    return "reference"


def backend_reason(backend: str) -> str:
    if backend == "triton":
        return "Triton kernels" + (" under TRITON_INTERPRET=1" if _interpreting() else "")
    if _env.backend() == "reference":
        return f"{_env.BACKEND}=reference"
    return "pure-Paddle reference (CPU tensors or kernels unavailable)"


# ----------------------------------------------------------------------------------------- Triton path
def _kernel_modules():
    from ..kernels import attn_fwd, estimate, pool, select, similarity
    return attn_fwd, estimate, pool, select, similarity


def _empty(shape, dtype, like: paddle.Tensor) -> paddle.Tensor:
    return paddle.empty(shape, dtype=dtype).to(like.place) if not like.place.is_cpu_place() else \
        paddle.empty(shape, dtype=dtype)


def level_map_kernels(qh, kh, config: AttentionConfig, causal: bool, prompt_end, lap=None):
    """Estimator + similarity cap + level selection on the device; returns (level_map int8, counters tensor)."""
    _, estimate, _, select, similarity = _kernel_modules()
    B, Hq, Lq, _ = qh.shape
    Hkv, Lk = kh.shape[1], kh.shape[2]
    G = Hq // Hkv
    nq, nk = -(-Lq // config.query_block), -(-Lk // config.key_block)
    scores = _empty([B, Hq, nq, nk], "float32", qh)
    with launch_scope(qh):
        estimate.psa_estimate_scores(*kernel_args(qh, kh, scores), query_block=config.query_block,
                                     key_block=config.key_block, stride=config.xattn_stride, causal=causal,
                                     scale=config.scale, layout="BHSD")
    if config.gqa_mask == "per_kv_group":
        scores = scores.reshape([B, Hkv, G, nq, nk]).mean(axis=2)
    if lap:
        lap("estimate_ms")
    cap = None
    if config.sim_cap:
        cap = _empty([B, Hkv, nk], "int8", qh)
        with launch_scope(qh):
            similarity.psa_similarity_cap(*kernel_args(kh, cap), key_block=config.key_block,
                                          thresholds=config.sim_thresholds, layout="BHSD")
    level_map = _empty(scores.shape, "int8", qh)
    counters = paddle.zeros([8], "int32").to(qh.place) if not qh.place.is_cpu_place() else paddle.zeros([8], "int32")
    with launch_scope(qh):
        select.psa_select_levels(*kernel_args(scores, level_map), Lq=Lq, Lk=Lk, config=config, causal=causal,
                                 prompt_end=prompt_end, sim_cap=kernel_args(cap)[0] if cap is not None else None,
                                 gqa_group=G if config.gqa_mask == "per_head" else 1,
                                 counters=kernel_args(counters)[0])
    if lap:
        lap("mask_ms")
    return level_map, counters


def _run_attention(q, k, v, level_map, config, causal, scale, layout, lap=None):
    attn_fwd, _, pool, select, _ = _kernel_modules()
    ax_l = 2 if layout == "BHSD" else 1
    ax_h = 1 if layout == "BHSD" else 2
    B, Lq, Lk, Hkv, D = q.shape[0], q.shape[ax_l], k.shape[ax_l], k.shape[ax_h], q.shape[3]
    lut = _empty(level_map.shape, "int32", q)
    counts = _empty(level_map.shape[:3] + [len(LEVELS)], "int32", q)
    with launch_scope(q):
        select.psa_build_lut(*kernel_args(level_map, lut, counts), Lq=Lq, Lk=Lk, query_block=config.query_block,
                             key_block=config.key_block, causal=causal)
    present = [p for p in LEVELS[1:] if bool((level_map == p).any())]
    k_pooled = {p: _empty([B, Hkv, -(-Lk // p), D], dtype_name(k), q) for p in present}
    v_pooled = {p: _empty([B, Hkv, -(-Lk // p), D], dtype_name(k), q) for p in present}
    if present:
        with launch_scope(q):
            pool.psa_pool_kv(*kernel_args(k, v), {p: kernel_args(t)[0] for p, t in k_pooled.items()},
                             {p: kernel_args(t)[0] for p, t in v_pooled.items()}, layout=layout)
    if lap:
        lap("pool_ms")
    out = _empty(q.shape, dtype_name(q), q)
    with launch_scope(q):
        attn_fwd.psa_attn_fwd(*kernel_args(q, k, v), {p: kernel_args(t)[0] for p, t in k_pooled.items()},
                              {p: kernel_args(t)[0] for p, t in v_pooled.items()}, *kernel_args(lut, counts, out),
                              query_block=config.query_block, key_block=config.key_block, causal=causal,
                              scale=scale, layout=layout, gqa_mask=config.gqa_mask)
    if lap:
        lap("attention_ms")
    return out


def attention_kernels(q, k, v, level_map, config, causal, scale, layout):
    return _run_attention(q, k, v, level_map, config, causal, scale, layout)


def psa_kernels(q, k, v, config, causal, scale, layout, prompt_end, lap):
    from ._checks import to_bhsd
    level_map, counters = level_map_kernels(to_bhsd(q, layout), to_bhsd(k, layout), config, causal, prompt_end, lap)
    out = _run_attention(q, k, v, level_map, config, causal, scale, layout, lap)
    names = ("tail", "diagonal", "sink", "cap", "degenerate", "guard")
    values = counters.numpy().tolist()
    return out, level_map, dict(zip(names, values))
