"""The one policy module: which Qwen2.5-VL attention call runs PSA and which stays dense (docs/HOSTS.md §4).

Both host adapters (`paddleformers.py`, `paddlemix.py`) ask `text_decision(...)` / `vision_decision(...)` and
then either call `run_psa(...)` or their host's own dense attention. Every dense call is counted here, per
reason, process-wide (`paddlemix_psa.stats()`) and per layer (`collect_stats(model)`), and logged once.

| Call | Condition | Action | Reason (expected?) |
|---|---|---|---|
| LLM prefill | q > 1, no padding, supported dtype / head dim, q >= `AttentionConfig.min_seq_len` | PSA | - |
| LLM decode | q == 1 | dense | `decode` (yes) |
| LLM short prefill | q < `min_seq_len` | dense | `short` (yes) |
| LLM padding / packing | a mask that is not purely causal / flashmask row indices | dense with the mask | `padding`, `row_indices` (no) |
| vision window layer | segments of about 64 patches | dense | `vision_window` (yes) |
| vision full layer | one segment per image / frame | dense (v1) | `vision_dense` (yes) |
| anything else | dtype, head dim, dropout > 0, sink, non-causal LLM call | dense | `unsupported:<what>` (no) |
| Triton cannot launch | no libcuda, capability < 8.0, version mismatch, first-launch driver error | dense | `unsupported:triton` (no) |

Head counts always come from the tensors received, never from the config, so tensor parallelism (heads
sharded over ranks) needs nothing special.
"""
from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from typing import Any

from ..config import AttentionConfig
from ..statistics import REGISTRY, PSAStats

HEAD_DIMS = (64, 80, 96, 128)                       # docs/ALGORITHM.md §1
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
# Vision PSA is not offered in v1: the vision tower's attention is a few percent of its compute and its
# window segments hold ~64 patches (docs/HOSTS.md §4); a non-causal opt-in (docs/ALGORITHM.md §6.4) for the
# full-attention layers comes only once a measurement shows it pays.

EXPECTED = {"decode": True, "short": True, "vision_window": True, "vision_dense": True,
            "padding": False, "row_indices": False}

STATS_ATTR = "_psa_layer_stats"                     # per-layer record attached to the attention module
CONFIG_ATTR = "psa_config"                          # where the settings live on a host config


@dataclasses.dataclass(frozen=True)
class Decision:
    """`use_psa` or the dense-fallback `reason` (with whether that reason is expected)."""

    use_psa: bool
    reason: str = ""
    expected: bool = True
    detail: str = ""


PSA = Decision(True)


def _dense(reason: str, detail: str = "") -> Decision:
    return Decision(False, reason, EXPECTED.get(reason, False), detail)


def dtype_name(t: Any) -> str:
    return str(t.dtype).split(".")[-1]


# ------------------------------------------------------------------------------------------------ config
_CACHE_LOCK = threading.Lock()
_CACHE: dict[Any, AttentionConfig] = {}


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def resolve_config(*sources: Any) -> AttentionConfig:
    """The first `psa_config` found on `sources` (modules, host configs), coerced; default `AttentionConfig()`.

    Host configs hold the settings as a JSON-able dict (so they travel in config.json); the coerced
    object is cached by content, so this is cheap on every call.
    """
    value = None
    for src in sources:
        if src is None:
            continue
        d = getattr(src, "__dict__", {})
        owner = d.get("_psa_owner_config")
        value = d.get("_psa_attention_config") or (getattr(owner, CONFIG_ATTR, None) if owner is not None
                                                   else None) or getattr(src, CONFIG_ATTR, None)
        if value is not None:
            break
    if value is None or isinstance(value, AttentionConfig):
        return AttentionConfig.coerce(value)
    try:
        key = _freeze(value)
        hash(key)
    except TypeError:
        return AttentionConfig.coerce(value)
    cfg = _CACHE.get(key)
    if cfg is None:
        cfg = AttentionConfig.coerce(value)
        with _CACHE_LOCK:
            _CACHE[key] = cfg
    return cfg


def config_to_dict(value: Any) -> dict[str, Any]:
    """`psa_config` as stored on a host config: a JSON-able dict of a validated `AttentionConfig`."""
    return AttentionConfig.coerce(value).to_dict()


# ------------------------------------------------------------------------------------------------ policy
def text_decision(q_len: int, head_dim: int, dtype: str, config: AttentionConfig, *,
                  padding: bool = False, row_indices: bool = False, dropout: float = 0.0,
                  sink: bool = False, causal: bool = True) -> Decision:
    """Policy for one language-model attention call (q_len = query tokens of this call)."""
    if dropout and dropout > 0:
        return _dense("unsupported:dropout", f"dropout={dropout} (PSA is inference-only)")
    if sink:
        return _dense("unsupported:sink", "attention sinks are not part of PSA")
    if not causal:
        return _dense("unsupported:noncausal", "a non-causal language-model call")
    if q_len == 1:
        return _dense("decode")
    if row_indices:
        return _dense("row_indices", "flashmask row indices (packed or padded batch)")
    if padding:
        return _dense("padding", "the attention mask is not purely causal (padding)")
    if dtype not in FLOAT_DTYPES:
        return _dense("unsupported:dtype", f"dtype {dtype}; PSA takes {list(FLOAT_DTYPES)}")
    if head_dim not in HEAD_DIMS:
        return _dense("unsupported:head_dim", f"head_dim {head_dim}; PSA takes {list(HEAD_DIMS)}")
    if q_len < config.min_seq_len:
        return _dense("short", f"prefill of {q_len} < min_seq_len={config.min_seq_len} tokens")
    return PSA


def launch_decision(decision: Decision, q) -> Decision:
    """A PSA decision stays PSA only where the Triton kernels can launch on q's GPU; otherwise the host's
    dense attention runs, counted as `unsupported:triton` with the cause (never the slow reference unasked)."""
    if not decision.use_psa:
        return decision
    from ..ops.dispatch import triton_cannot_launch

    cause = triton_cannot_launch(q)
    return decision if cause is None else _dense("unsupported:triton", f"{cause}; the host's dense attention runs")


def vision_decision(full_attention: bool | None, seg_len: int, window_tokens: int | None) -> Decision:
    """Policy for the vision tower: dense in v1 (window layers and full-attention layers alike).

    `full_attention` is the layer's kind when known; otherwise the segment length decides (segments no
    longer than a window belong to a window layer).
    """
    if full_attention is None:
        full_attention = window_tokens is None or seg_len > window_tokens
    return _dense("vision_dense" if full_attention else "vision_window")


def window_tokens(vision_config: Any) -> int | None:
    """Patches per vision window: (window_size / patch_size)^2, e.g. 112 / 14 -> 64."""
    try:
        side = int(vision_config.window_size) // int(vision_config.patch_size)
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return None
    return side * side if side > 0 else None


# ------------------------------------------------------------------------------------------------ stats
class LayerStats:
    """What one attention module did: PSA calls, their statistics (when collection is on), fallbacks."""

    def __init__(self) -> None:
        self.psa_calls = 0
        self.items: list[PSAStats] = []
        self.fallbacks: Counter[str] = Counter()

    def summary(self) -> PSAStats:
        s = PSAStats.merge(self.items) if self.items else PSAStats(calls=0)
        s.calls = self.psa_calls
        s.fallbacks = dict(self.fallbacks)
        return s


_STATS_LOCK = threading.Lock()      # one lock for creating and updating per-layer records (threads share layers)


def layer_stats(module: Any) -> LayerStats:
    rec = module.__dict__.get(STATS_ATTR)
    if rec is None:
        with _STATS_LOCK:
            rec = module.__dict__.get(STATS_ATTR)
            if rec is None:
                rec = LayerStats()
                object.__setattr__(module, STATS_ATTR, rec)
    return rec


def record_fallback(module: Any, decision: Decision) -> None:
    rec = layer_stats(module)
    with _STATS_LOCK:
        rec.fallbacks[decision.reason] += 1
    REGISTRY.record_fallback(decision.reason, expected=decision.expected, detail=decision.detail)


def run_psa(module: Any, q, k, v, config: AttentionConfig, *, scale: float | None):
    """PSA on q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D] (GQA unexpanded), causal bottom-right; returns BHSD."""
    from ..ops.attention import psa_attention

    rec = layer_stats(module)
    st = None
    if REGISTRY.enabled:
        out, st = psa_attention(q, k, v, config=config, causal=True, scale=scale, layout="BHSD",
                                return_stats=True)
    else:
        out = psa_attention(q, k, v, config=config, causal=True, scale=scale, layout="BHSD")
    with _STATS_LOCK:
        if st is not None:
            rec.items.append(st)
        rec.psa_calls += 1
    return out


def is_pure_causal_mask(mask, q_len: int, k_len: int) -> bool:
    """True when `mask` ([b, 1|h, q, k] additive float or boolean keep-mask) only encodes bottom-right causality.

    Costs one comparison over the mask and one host sync; used only on prefill calls.
    """
    import paddle

    if mask is None:
        return True
    if mask.ndim != 4 or mask.shape[-2] != q_len or mask.shape[-1] < k_len:
        return False
    m = mask[:, :, :, :k_len]
    keep = m if m.dtype == paddle.bool else (m > -1.0)   # additive masks: 0 keeps, a large negative drops
    rows = paddle.arange(q_len).unsqueeze(1) + (k_len - q_len)
    cols = paddle.arange(k_len).unsqueeze(0)
    causal = (cols <= rows).unsqueeze(0).unsqueeze(0)
    return bool(paddle.all(keep == causal).item())
