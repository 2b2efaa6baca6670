"""Kernel vs reference: one predicate (`select_backend`) and the Paddle side of the Triton pipeline.

The Triton path runs for Paddle GPU tensors in fp16/bf16 in dynamic-graph mode. Under TRITON_INTERPRET=1
it also runs on CPU tensors through host views (how CI exercises the kernels without a GPU). Anything else
uses the pure-Paddle reference; a GPU call that cannot use the kernels is counted as an unexpected fallback.
When Triton itself cannot launch on the GPU (`_launch.launch_blocker`: no libcuda, capability < 8.0, a
Triton/Paddle version mismatch, a driver error at the first launch) a GPU call raises `TritonCannotLaunch`
instead of running the slow reference unasked.
"""
from __future__ import annotations

import os

import paddle

from .. import _env
from ..config import LEVELS, AttentionConfig
from ..statistics import REGISTRY
from ._checks import dtype_name
from ._launch import TritonCannotLaunch, kernel_args, launch_blocker, launch_scope

KERNEL_DTYPES = ("float16", "bfloat16")
INTERPRET_DTYPES = ("float16", "float32")      # the interpreter computes bf16 wrongly (docs/LAUNCH.md §6)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the install
        return False
    return True


def _kernel_blocker(q: paddle.Tensor, device: int | None) -> str | None:
    """Why the kernels cannot run on q (None when they can); `device`: q's GPU index, None off the GPU."""
    if device is None and q.place.is_cpu_place() and not _interpreting():
        return "cpu_tensor"
    if not paddle.in_dynamic_mode():
        return "static_graph"
    dt = dtype_name(q)
    if device is not None:              # whether Triton itself can launch there is launch_blocker's question
        return None if dt in KERNEL_DTYPES else f"dtype:{dt}"
    if not _triton_importable():
        return "triton_unavailable"
    if q.place.is_cpu_place():
        return None if dt in INTERPRET_DTYPES else f"dtype:{dt}"
    return "device"


def gpu_device(q: paddle.Tensor) -> int | None:
    """The GPU index q lives on, None off the GPU."""
    return q.place.gpu_device_id() if q.place.is_gpu_place() else None


def triton_cannot_launch(q: paddle.Tensor) -> str | None:
    """Why Triton cannot launch on q's GPU (None when it can, off the GPU, or with the reference chosen)."""
    device = gpu_device(q)
    if device is None or _env.backend() == "reference":
        return None
    return launch_blocker(q, device)


def select_backend(q: paddle.Tensor) -> str:
    """"triton" or "reference" for this call, honouring PADDLEMIX_PSA_BACKEND (auto | triton | reference).

    Raises `TritonCannotLaunch` (one line: the cause and the way out) for a GPU tensor Triton cannot serve."""
    wanted = _env.backend()
    if wanted == "reference":
        return "reference"
    device = gpu_device(q)
    blocker = _kernel_blocker(q, device)
    if blocker is None:
        cause = None if device is None else launch_blocker(q, device)
        if cause is not None:
            raise TritonCannotLaunch(cause, device)
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
def allocator(like: paddle.Tensor):
    """alloc(shape, dtype_name) for the kernel pipeline: new Paddle tensors on `like`'s device, as launch args."""
    def alloc(shape, dtype):
        t = paddle.empty(list(shape), dtype=dtype)
        if not like.place.is_cpu_place():
            t = t.to(like.place)
        return kernel_args(t)[0]
    return alloc


def unwrap(x) -> paddle.Tensor:
    return getattr(x, "tensor", x)          # host views keep the Paddle tensor they view


def _config_kwargs(config: AttentionConfig, causal: bool, scale) -> dict:
    return dict(query_block=config.query_block, key_block=config.key_block, causal=causal, scale=scale,
                gqa_mask=config.gqa_mask)


def _plan_kwargs(config: AttentionConfig, prompt_end) -> dict:
    return dict(mask_mode=config.mask_mode, mask_ratios=dict(config.mask_ratios), xattn_stride=config.xattn_stride,
                dense_tail_tokens=config.dense_tail_tokens, prompt_end=prompt_end, force_sink=config.force_sink,
                sim_cap=config.sim_cap, sim_thresholds=config.sim_thresholds)


def _counter_dict(counters: paddle.Tensor) -> dict[str, int]:
    from ..kernels.select import COUNTER_NAMES
    return dict(zip(COUNTER_NAMES, (int(x) for x in counters.numpy().tolist())))


def level_map_kernels(q, k, config: AttentionConfig, causal: bool, prompt_end, layout: str = "BHSD",
                      on_stage=None):
    """Plan on the device. Returns (level map int8 [B, H_m, nq, nk], forced-rule counters)."""
    from ..kernels.pipeline import psa_level_map_kernels
    alloc = allocator(q)
    counters = alloc((8,), "int32")
    unwrap(counters).zero_()
    with launch_scope(q):
        level_map = psa_level_map_kernels(*kernel_args(q, k), alloc=alloc, layout=layout, counters=counters,
                                          on_stage=on_stage or (lambda stage: None),
                                          **_config_kwargs(config, causal, config.scale),
                                          **_plan_kwargs(config, prompt_end))
    return unwrap(level_map), _counter_dict(unwrap(counters))


def attention_kernels(q, k, v, level_map, config: AttentionConfig, causal: bool, scale, layout: str,
                      on_stage=None) -> paddle.Tensor:
    """Run on the device over a given level map (pooling only the pooled levels it contains)."""
    from ..kernels.pipeline import psa_attention_from_map
    present = tuple(p for p in LEVELS[1:] if bool((level_map == p).any()))
    with launch_scope(q):
        out, _, _ = psa_attention_from_map(*kernel_args(q, k, v, level_map), alloc=allocator(q), layout=layout,
                                           pooled_levels=present, on_stage=on_stage or (lambda stage: None),
                                           **_config_kwargs(config, causal, scale))
    return unwrap(out)


def psa_kernels(q, k, v, config: AttentionConfig, causal: bool, scale, layout: str, prompt_end, on_stage):
    """Plan + run on the device, no host round trip between the stages. Returns (out, level_map, counters)."""
    from ..kernels.pipeline import psa_forward_kernels
    alloc = allocator(q)
    counters = alloc((8,), "int32")
    unwrap(counters).zero_()
    with launch_scope(q):
        out, level_map, _, _ = psa_forward_kernels(*kernel_args(q, k, v), alloc=alloc, layout=layout,
                                                   counters=counters, on_stage=on_stage,
                                                   **_config_kwargs(config, causal, scale),
                                                   **_plan_kwargs(config, prompt_end))
    return unwrap(out), unwrap(level_map), _counter_dict(unwrap(counters))
