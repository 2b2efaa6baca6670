"""PaddleMIX adapter: `psa` vision and language attention classes for Qwen2.5-VL (docs/HOSTS.md §2).

PaddleMIX picks attention *classes* at construction from two module-level dicts,
`QWEN2_5_VL_VISION_ATTENTION_CLASSES` and `QWEN2_5_VL_ATTENTION_CLASSES`. `register_paddlemix(module=M)` builds
subclasses of the host's eager classes (inside the call, from the installed module, so parameter names, the
tuple KV cache and mRoPE stay the host's) and inserts them with `setdefault("psa", ...)`.

* Language model: a call the policy sends to PSA (prefill with a purely causal mask, ...) runs the host's
  projections and mRoPE, appends to the tuple cache, and calls PSA on the unexpanded K/V; every other call is
  the parent's own `forward` (eager math), counted per reason.
* Vision: dense in v1 (`vision_window` / `vision_dense`): the parent's eager math on CPU, one varlen flash
  call over `cu_seqlens` on GPU when PaddleMIX found a flash kernel.

`Qwen2_5_VLForConditionalGeneration.__init__` is wrapped (the only host attribute replaced): it accepts
`psa_config=` and, when no `attn_implementation` argument is given but the config says `psa`
(`_attn_implementation` / `attn_implementation` from config.json or set on the object), passes
`attn_implementation="psa"` instead of the constructor's default `"flash_attention_2"`. Any other value
behaves exactly as without the plugin.
"""
from __future__ import annotations

import functools
import inspect
import logging
import sys
from typing import Any

from . import qwen2_5_vl as policy

logger = logging.getLogger("paddlemix_psa")

KEY = "psa"
MODULE_NAME = "paddlemix.models.qwen2_5_vl.modeling_qwen2_5_vl"
VISION_DICT = "QWEN2_5_VL_VISION_ATTENTION_CLASSES"
TEXT_DICT = "QWEN2_5_VL_ATTENTION_CLASSES"
_WRAPPED = "__psa_wrapped__"
_MISSING = object()
DEFAULT_WINDOW_TOKENS = 64            # Qwen2.5-VL: window_size 112 / patch 14 -> 8 x 8 patches

_STATE: dict[str, Any] = {"mode": None, "why": "", "modules": []}


def _not_registered():
    from . import not_registered_error

    return not_registered_error("PaddleMIX", _STATE["why"])


# ------------------------------------------------------------------------------------------------ classes
def _make_vision_class(M):
    parent = M.QWEN2_5_VL_VISION_ATTENTION_CLASSES["eager"]

    class PsaQwen2_5_VLVisionAttention(parent):
        """Vision attention for `attn_implementation="psa"`: dense in v1 (docs/HOSTS.md §4), counted per layer."""

        _psa_host_module = M

        def forward(self, hidden_states, cu_seqlens, rotary_pos_emb=None, **kwargs):
            seg = cu_seqlens[1:] - cu_seqlens[:-1]
            longest = int(seg.max().item()) if seg.shape[0] else 0
            window = self.__dict__.get("_psa_window_tokens", DEFAULT_WINDOW_TOKENS)
            decision = policy.vision_decision(self.__dict__.get("_psa_full_attention"), longest, window)
            policy.record_fallback(self, decision)
            if not hidden_states.place.is_cpu_place() and getattr(M, "flash_attn_varlen_func", None) is not None:
                return self._psa_varlen_dense(hidden_states, cu_seqlens, rotary_pos_emb, longest)
            return super().forward(hidden_states, cu_seqlens, rotary_pos_emb, **kwargs)

        def _psa_varlen_dense(self, hidden_states, cu_seqlens, rotary_pos_emb, max_seqlen):
            """One variable-length flash call over all segments (GPU); returns the input dtype."""
            import paddle

            S = hidden_states.shape[0]
            qkv = self.qkv(hidden_states).reshape([S, 3, self.num_heads, -1]).transpose([1, 0, 2, 3])
            q, k, v = qkv.unbind(axis=0)
            rope = getattr(M, "apply_rotary_pos_emb_flashatt", None) or M.apply_rotary_pos_emb_vision
            q = rope(q.unsqueeze(0), rotary_pos_emb).squeeze(0)
            k = rope(k.unsqueeze(0), rotary_pos_emb).squeeze(0)
            dt = hidden_states.dtype if hidden_states.dtype in (paddle.float16, paddle.bfloat16) else paddle.bfloat16
            out = M.flash_attn_varlen_func(q.astype(dt), k.astype(dt), v.astype(dt), cu_seqlens, cu_seqlens,
                                           max_seqlen, max_seqlen, scale=self.head_dim ** -0.5)[0]
            return self.proj(out.reshape([S, -1]).astype(hidden_states.dtype))

    _mirror_signature(PsaQwen2_5_VLVisionAttention, parent)
    return PsaQwen2_5_VLVisionAttention


def _make_text_class(M):
    parent = M.QWEN2_5_VL_ATTENTION_CLASSES["eager"]
    params = inspect.signature(parent.forward).parameters
    names = [p for p in params if p != "self" and params[p].kind not in (inspect.Parameter.VAR_KEYWORD,
                                                                            inspect.Parameter.VAR_POSITIONAL)]
    names = names[1:]                                   # hidden_states is passed separately
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    class PsaQwen2_5_VLAttention(parent):
        """Language-model attention for `attn_implementation="psa"`: PSA on prefill, the parent's eager math
        otherwise (docs/HOSTS.md §4). Accepts every parameter of the installed parent plus **kwargs."""

        _psa_host_module = M
        _psa_parent_params = tuple(names)

        def forward(self, hidden_states, *args, **kwargs):
            bound = dict(zip(names, args))
            bound.update({k: v for k, v in kwargs.items() if k in names})
            extra = {k: v for k, v in kwargs.items() if k not in names} if takes_kwargs else {}
            mask = bound.get("attention_mask")
            q_len = hidden_states.shape[1]
            decision = self._psa_decide(hidden_states, mask, bound.get("past_key_value"))
            if not decision.use_psa:
                policy.record_fallback(self, decision)
                return super().forward(hidden_states, **bound, **extra)
            return self._psa_forward(hidden_states, bound, q_len)

        def _psa_decide(self, hidden_states, mask, past):
            config = policy.resolve_config(self, self.config)
            q_len = hidden_states.shape[1]
            k_len = q_len + (past[0].shape[2] if past is not None and past[0] is not None else 0)
            padding = mask is not None and (q_len == 1 or not policy.is_pure_causal_mask(mask, q_len, k_len))
            decision = policy.text_decision(q_len, self.head_dim, policy.dtype_name(hidden_states), config,
                                            padding=padding, dropout=self.attention_dropout if self.training else 0.0)
            return policy.launch_decision(decision, hidden_states)

        def _psa_forward(self, hidden_states, bound, q_len):
            bsz = hidden_states.shape[0]
            q = self.q_proj(hidden_states).reshape([0, 0, self.num_heads, self.head_dim]).transpose([0, 2, 1, 3])
            k = self.k_proj(hidden_states).reshape([0, 0, self.num_key_value_heads, self.head_dim])
            v = self.v_proj(hidden_states).reshape([0, 0, self.num_key_value_heads, self.head_dim])
            k, v = k.transpose([0, 2, 1, 3]), v.transpose([0, 2, 1, 3])
            if bound.get("position_embeddings") is not None:         # newer PaddleMIX passes cos/sin in
                cos, sin = bound["position_embeddings"]
            else:
                cos, sin = self.rotary_emb(v, bound.get("position_ids"))
            q, k = M.apply_multimodal_rotary_pos_emb(q, k, cos, sin, self.rope_scaling["mrope_section"])
            past = bound.get("past_key_value")
            if past is not None:                                      # tuple cache [b, kv_h, s, d], unexpanded
                import paddle

                k = paddle.concat([past[0], k], axis=2)
                v = paddle.concat([past[1], v], axis=2)
            present = (k, v) if bound.get("use_cache") else None
            config = policy.resolve_config(self, self.config)
            out = policy.run_psa(self, q, k, v, config, scale=self.head_dim ** -0.5)   # [b, h, q, d]
            out = out.transpose([0, 2, 1, 3]).reshape([bsz, q_len, -1])
            return self.o_proj(out), None, present

    _mirror_signature(PsaQwen2_5_VLAttention, parent)
    return PsaQwen2_5_VLAttention


def _mirror_signature(cls, parent) -> None:
    """`cls.forward` shows the installed parent's parameters, plus **kwargs (docs/HOSTS.md §2.5)."""
    sig = inspect.signature(parent.forward)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    cls.forward.__signature__ = sig.replace(parameters=params)


def _make_guard_class(parent, kind: str):
    class PsaUnavailable(parent):
        def __init__(self, *args, **kwargs):
            raise _not_registered()

    PsaUnavailable.__name__ = f"PsaUnavailable{kind}"
    return PsaUnavailable


# ------------------------------------------------------------------------------------------------ registration
def _resolve_module(module):
    if module is None:
        module = sys.modules.get(MODULE_NAME)
        if module is None:
            import importlib

            module = importlib.import_module(MODULE_NAME)
    for name in (VISION_DICT, TEXT_DICT):
        if not isinstance(getattr(module, name, None), dict):
            raise TypeError(f"{getattr(module, '__name__', module)!r} has no dict {name}: not a PaddleMIX "
                            f"Qwen2.5-VL modeling module")
    return module


def _ours(cls) -> bool:
    return isinstance(cls, type) and getattr(cls, "_psa_host_module", None) is not None


def register_paddlemix(module=None, *, guard: bool = False, why: str = "") -> bool:
    """Insert `psa` into both Qwen2.5-VL attention dicts of `module` (a module object, or imported by name).

    Idempotent. `guard=True` (after a failed registration, `mark_failed`) inserts classes that raise the
    plugin's error naming `why`. A different class already registered under `psa` raises.
    """
    M = _resolve_module(module)
    tables = (getattr(M, VISION_DICT), getattr(M, TEXT_DICT))
    for table in tables:
        cur = table.get(KEY)
        if cur is not None and not _ours(cur) and not getattr(cur, "_psa_guard", False):
            raise RuntimeError(f"{M.__name__} already maps {KEY!r} to {cur!r}, not paddlemix_psa's class; "
                               f"refusing to replace it")
    if guard:
        if any(_ours(t.get(KEY)) for t in tables):
            return True
        for table, kind in zip(tables, ("Vision", "Text")):
            if KEY not in table:
                cls = _make_guard_class(table["eager"], kind)
                cls._psa_guard = True
                table[KEY] = cls
        _STATE.update(mode="guard", why=why)
    else:
        vision, text = tables
        for table, factory in ((vision, _make_vision_class), (text, _make_text_class)):
            if not _ours(table.get(KEY)):
                table.pop(KEY, None) if getattr(table.get(KEY), "_psa_guard", False) else None
                table.setdefault(KEY, factory(M))
        _STATE.update(mode="active", why="")
        logger.info("paddlemix_psa: registered attn_implementation='psa' with PaddleMIX (%s)", M.__name__)
    if M not in _STATE["modules"]:
        _STATE["modules"].append(M)
    _install_init(M)
    return not guard


def is_registered(module=None) -> bool:
    mods = [module] if module is not None else (_STATE["modules"] or
                                                 [m for m in [sys.modules.get(MODULE_NAME)] if m is not None])
    return any(_ours(_table(m, VISION_DICT).get(KEY)) and _ours(_table(m, TEXT_DICT).get(KEY)) for m in mods)


def _table(module, name: str) -> dict:
    table = getattr(module, name, None)
    return table if isinstance(table, dict) else {}


def not_registered_reason() -> str:
    """Why `psa` is not registered with PaddleMIX ("" when it is)."""
    if is_registered():
        return ""
    if _STATE["why"]:
        return _STATE["why"]
    return "PaddleMIX's Qwen2.5-VL modeling is not imported" if sys.modules.get(MODULE_NAME) is None else \
        "'psa' is not in its attention class tables"


def mark_failed(module, why: str) -> None:
    """Registration failed: remember `why`; selecting `psa` then raises the plugin's error naming it (the
    placeholder classes go in where the host's tables still allow it)."""
    _STATE.update(mode="failed", why=why)
    try:
        register_paddlemix(module=module, guard=True, why=why)
    except Exception:  # noqa: BLE001 - the cause is already warned; the host may be too broken for tables
        pass


# ------------------------------------------------------------------------------------------------ config flow
def _own(config, key, default=None):
    return config.__dict__.get(key, default)


def _selects_psa(config) -> bool:
    return KEY in (_own(config, "_attn_implementation"), _own(config, "attn_implementation"))


def _stamp(model, config) -> None:
    vcfg = _own(config, "vision_config")
    window = policy.window_tokens(vcfg) if vcfg is not None else None
    full = set(getattr(vcfg, "fullatt_block_indexes", None) or []) if vcfg is not None else set()
    visual = getattr(model, "visual", None)
    for i, block in enumerate(getattr(visual, "blocks", None) or []):
        attn = getattr(block, "attn", None)
        if attn is not None:
            object.__setattr__(attn, "_psa_full_attention", i in full)
            if window is not None:
                object.__setattr__(attn, "_psa_window_tokens", window)
            object.__setattr__(attn, "_psa_owner_config", config)
    for _, layer in model.named_sublayers():
        if _ours(type(layer)):
            object.__setattr__(layer, "_psa_owner_config", config)


def _install_init(M) -> None:
    cls = getattr(M, "Qwen2_5_VLForConditionalGeneration", None)
    if cls is None or hasattr(cls.__dict__.get("__init__"), _WRAPPED):
        return
    orig = cls.__dict__["__init__"]

    @functools.wraps(orig)
    def __init__(self, config, *args, **kwargs):
        psa_config = kwargs.pop("psa_config", _MISSING)
        if psa_config is not _MISSING:
            config.psa_config = None if psa_config is None else policy.config_to_dict(psa_config)
        elif _own(config, "psa_config") is not None:
            config.psa_config = policy.config_to_dict(_own(config, "psa_config"))   # validate early
        explicit = args[0] if args else kwargs.get("attn_implementation", _MISSING)
        if explicit is _MISSING and _selects_psa(config):
            kwargs["attn_implementation"] = KEY
            explicit = KEY
        if explicit == KEY and not is_registered(M):
            raise _not_registered()
        orig(self, config, *args, **kwargs)
        if explicit == KEY:
            _stamp(self, config)
            if getattr(config, "fuse_attention_ffn", False):
                logger.warning("paddlemix_psa: attn_implementation='psa' was selected but config.fuse_attention_ffn"
                               "=True builds PaddleNLP's fused attention layers: PSA is NOT in use")

    setattr(__init__, _WRAPPED, orig)
    cls.__init__ = __init__


def set_attn_implementation(model, text: str | None = KEY, vision: str | None = KEY) -> None:
    """Swap the attention classes of a built PaddleMIX model within the host's tables (same parameters)."""
    M = getattr(type(model), "_psa_host_module", None) or sys.modules.get(type(model).__module__)
    for value, table_name in ((text, TEXT_DICT), (vision, VISION_DICT)):
        if value is None:
            continue
        table = getattr(M, table_name)
        if value not in table:
            raise KeyError(f"unknown attn_implementation {value!r}: valid values are {sorted(table)}")
        target = table[value]
        if getattr(target, "_psa_guard", False):
            raise _not_registered()
        bases = set(table.values())
        for _, layer in model.named_sublayers():
            if type(layer) in bases and type(layer) is not target:
                object.__setattr__(layer, "__class__", target)
    _stamp(model, model.config)


__all__ = ["register_paddlemix", "is_registered", "set_attn_implementation"]
