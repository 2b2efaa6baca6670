"""Public PSA ops on Paddle tensors: plan (`build_level_map`) and run (`psa_attention_with_map`), or both.

Backend choice (`dispatch.select_backend`): Triton kernels for Paddle GPU tensors when they can run, the
pure-Paddle reference otherwise (CPU tensors, or PADDLEMIX_PSA_BACKEND=reference). Which one ran is counted
in the statistics and logged once.
"""
from __future__ import annotations

import math
import time
from typing import Any

import paddle

from ..config import AttentionConfig
from ..reference import (build_level_map_ref, level_histogram, psa_attention_ref, similarity_cap,
                         xattn_block_scores)
from ..statistics import REGISTRY, PSAStats
from . import dispatch
from ._checks import (check_level_map, check_prompt_end, check_qkv, check_scale, check_scale_for_kernels,
                      dtype_name, reference_compute_dtype, to_bhsd)


class _Timer:
    """Wall time per stage; synchronises the device first so GPU stages are attributed correctly."""

    def __init__(self, enabled: bool, on_gpu: bool) -> None:
        self.enabled, self.on_gpu, self.times = enabled, on_gpu, {}
        self._t = time.perf_counter()

    def lap(self, key: str) -> None:
        if not self.enabled:
            return
        if self.on_gpu:
            paddle.device.synchronize()
        now = time.perf_counter()
        self.times[key] = self.times.get(key, 0.0) + (now - self._t) * 1e3
        self._t = now


def _resolve(config, causal) -> tuple[AttentionConfig, bool]:
    config = AttentionConfig.coerce(config)
    return config, config.causal if causal is None else bool(causal)


def _effective_scale(scale: float | None, D: int) -> float:
    return 1.0 / math.sqrt(D) if scale is None else scale


def _check_kernel_scale(q, scale: float | None, config: AttentionConfig, D: int) -> None:
    """Triton path: host-side bound on the scale only (no device sync in the forward)."""
    for s in {_effective_scale(scale, D), _effective_scale(config.scale, D)}:
        check_scale_for_kernels(s, dtype_name(q), D)


def _reference_inputs(tensors, scale: float | None, D: int):
    """The BHSD tensors the reference computes on, upcast to fp64 when fp32 logits would overflow (counted and
    logged once as the `reference_fp64` backend); plus the compute dtype of the estimator and the cap."""
    cdt = reference_compute_dtype(tensors[0], tensors[1], tensors[-1], _effective_scale(scale, D))
    if cdt is None:
        return tensors, "float32"
    REGISTRY.record_backend("reference_fp64", "q/k/v magnitudes whose logits overflow fp32; computing in fp64")
    return tuple(t.astype(cdt) for t in tensors), cdt


def _level_map_ref(qh, kh, config: AttentionConfig, causal: bool, prompt_end, timer: _Timer,
                   compute_dtype: str = "float32"):
    B, Hq, Lq, _ = qh.shape
    Hkv, Lk = kh.shape[1], kh.shape[2]
    G = Hq // Hkv
    scores = xattn_block_scores(qh, kh, query_block=config.query_block, key_block=config.key_block,
                                stride=config.xattn_stride, causal=causal, scale=config.scale,
                                compute_dtype=compute_dtype)
    if config.gqa_mask == "per_kv_group":
        scores = scores.reshape([B, Hkv, G] + scores.shape[2:]).mean(axis=2)
    timer.lap("estimate_ms")
    cap = similarity_cap(kh, config.key_block, config.sim_thresholds, compute_dtype) if config.sim_cap else None
    res = build_level_map_ref(scores, Lq=Lq, Lk=Lk, config=config, causal=causal, prompt_end=prompt_end,
                              sim_cap_levels=cap, gqa_group=G if config.gqa_mask == "per_head" else 1)
    timer.lap("mask_ms")
    return res


def _attention_ref(qh, kh, vh, level_map, config: AttentionConfig, causal: bool, scale, layout: str, dtype):
    """Reference attention on [B, H, L, D] inputs, returned in the caller's `layout` and `dtype`."""
    out = psa_attention_ref(qh, kh, vh, level_map, query_block=config.query_block, key_block=config.key_block,
                            causal=causal, scale=scale, gqa_mask=config.gqa_mask)
    if out.dtype != dtype:
        out = out.astype(dtype)
    return to_bhsd(out, layout)          # the BHSD <-> BSHD swap is its own inverse


def _make_stats(level_map, counters, *, Lq, Lk, config, causal, backend, times) -> PSAStats:
    hist, per_head, n_valid, weighted = level_histogram(level_map, Lq=Lq, Lk=Lk, query_block=config.query_block,
                                                        key_block=config.key_block, causal=causal)
    s = PSAStats(Lq=Lq, Lk=Lk, nq=level_map.shape[2], nk=level_map.shape[3], query_block=config.query_block,
                 key_block=config.key_block, backend=backend, config_fingerprint=config.fingerprint(),
                 valid_pairs=n_valid, weighted_kept=weighted, histogram=hist, per_head_density=per_head,
                 times=dict(times), backends={backend: 1})
    for key, n in (counters or {}).items():
        s.forced[key] = n
    s.call_densities = [s.density]
    return s


def build_level_map(q: paddle.Tensor, k: paddle.Tensor, config: Any = None, *, causal: bool | None = None,
                    layout: str = "BHSD", prompt_end: int | None = None) -> paddle.Tensor:
    """Plan: the int8 level map [B, H_m, nq, nk] (values 0/1/2/4/8) PSA would use for q, k.

    H_m = H_q for `gqa_mask="per_head"`, H_kv for `"per_kv_group"`; nq = ceil(Lq/query_block),
    nk = ceil(Lk/key_block). Scores, thresholds and forced rules follow docs/ALGORITHM.md §6-§8.
    """
    config, causal = _resolve(config, causal)
    D = check_qkv(q, k, k, layout, causal)[-1]
    prompt_end = check_prompt_end(prompt_end)
    if dispatch.select_backend(q) == "triton":
        _check_kernel_scale(q, None, config, D)
        return dispatch.level_map_kernels(q, k, config, causal, prompt_end, layout)[0]
    (qh, kh), cdt = _reference_inputs((to_bhsd(q, layout), to_bhsd(k, layout)), config.scale, D)
    return _level_map_ref(qh, kh, config, causal, prompt_end, _Timer(False, False), cdt).level_map


def psa_attention_with_map(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, level_map: paddle.Tensor, *,
                           config: Any = None, causal: bool | None = None, scale: float | None = None,
                           layout: str = "BHSD", return_stats: bool = False):
    """Run: docs/ALGORITHM.md §4 attention on a caller-supplied level map (int8 [B, H_m, nq, nk] for the config's
    block sizes). Returns the output in q's layout and dtype (and a `PSAStats` when `return_stats`)."""
    config, causal = _resolve(config, causal)
    B, Hq, Hkv, Lq, Lk, D = check_qkv(q, k, v, layout, causal)
    scale = check_scale(config.scale if scale is None else scale)
    check_level_map(level_map, B=B, Hq=Hq, Hkv=Hkv, Lq=Lq, Lk=Lk, config=config)
    want_stats = return_stats or REGISTRY.enabled
    backend = dispatch.select_backend(q)
    timer = _Timer(want_stats, not q.place.is_cpu_place())
    if backend == "triton":
        _check_kernel_scale(q, scale, config, D)
        out = dispatch.attention_kernels(q, k, v, level_map, config, causal, scale, layout, timer.lap)
    else:
        qkv, _ = _reference_inputs(tuple(to_bhsd(t, layout) for t in (q, k, v)), scale, D)
        out = _attention_ref(*qkv, level_map, config, causal, scale, layout, q.dtype)
        timer.lap("attention_ms")
    return _finish(out, level_map, {}, Lq=Lq, Lk=Lk, config=config, causal=causal, backend=backend,
                   times=timer.times, want_stats=want_stats, return_stats=return_stats)


def psa_attention(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, *, config: Any = None,
                  causal: bool | None = None, scale: float | None = None, layout: str = "BHSD",
                  return_stats: bool = False, prompt_end: int | None = None):
    """Pyramid Sparse Attention: estimate block importance, pick a level per block, attend.

    q: [B, H_q, Lq, D] ("BHSD") or [B, Lq, H_q, D] ("BSHD"); k, v: the same with H_kv heads and Lk keys.
    H_q must be a multiple of H_kv (GQA; K/V are never repeated), D in {64, 80, 96, 128}, dtypes fp16/bf16
    (fp32/fp64 on the reference path). Causal masking is bottom-right aligned (query row r sees key j iff
    j <= r + Lk - Lq), e.g. Lq=2, Lk=4::

        row 0: 1 1 1 0
        row 1: 1 1 1 1

    With every block at level 1 the result equals dense attention:

    >>> import paddle
    >>> from paddlemix_psa import AttentionConfig, psa_attention
    >>> from paddlemix_psa.reference import dense_attention_ref
    >>> q, k, v = (paddle.randn([1, 2, 200, 64]) for _ in range(3))
    >>> dense_cfg = AttentionConfig(mask_ratios={1: (0.0, 1.0)})
    >>> bool((psa_attention(q, k, v, config=dense_cfg) - dense_attention_ref(q, k, v)).abs().max() < 1e-5)
    True

    Returns the output in q's layout and dtype, or (output, PSAStats) with `return_stats=True`.
    `prompt_end` (None or an int in [1, 2**31 - 1]) moves the dense tail (docs/ALGORITHM.md §8 F1) for chunked
    prefill. Finite inputs never give NaN: on the reference path logits beyond the fp32 range are computed in
    fp64, and inputs beyond fp64 are rejected; on the Triton path `scale` is bounded on the host.
    """
    config, causal = _resolve(config, causal)
    _, _, _, Lq, Lk, D = check_qkv(q, k, v, layout, causal)
    scale = check_scale(config.scale if scale is None else scale)
    prompt_end = check_prompt_end(prompt_end)
    want_stats = return_stats or REGISTRY.enabled
    backend = dispatch.select_backend(q)
    timer = _Timer(want_stats, not q.place.is_cpu_place())
    if backend == "triton":
        _check_kernel_scale(q, scale, config, D)
        out, level_map, counters = dispatch.psa_kernels(q, k, v, config, causal, scale, layout, prompt_end,
                                                        timer.lap)
    else:
        (qh, kh, vh), cdt = _reference_inputs(tuple(to_bhsd(t, layout) for t in (q, k, v)), scale, D)
        res = _level_map_ref(qh, kh, config, causal, prompt_end, timer, cdt)
        level_map, counters = res.level_map, res.counters
        out = _attention_ref(qh, kh, vh, level_map, config, causal, scale, layout, q.dtype)
        timer.lap("attention_ms")
    return _finish(out, level_map, counters, Lq=Lq, Lk=Lk, config=config, causal=causal, backend=backend,
                   times=timer.times, want_stats=want_stats, return_stats=return_stats)


def _finish(out, level_map, counters, *, Lq, Lk, config, causal, backend, times, want_stats, return_stats):
    REGISTRY.record_backend(backend, dispatch.backend_reason(backend))
    if not want_stats:
        return out
    stats = _make_stats(level_map, counters, Lq=Lq, Lk=Lk, config=config, causal=causal, backend=backend,
                        times=times)
    REGISTRY.record_call(stats)
    return (out, stats) if return_stats else out
