"""PaddleFormers adapter: the `psa` attention function and the `attn_implementation="psa"` config flow.

PaddleFormers (1.0, 1.1, 1.2; `SUPPORTED_VERSIONS`) dispatches attention through a function registry,
`AttentionInterface`, looked up at every forward with the (sub-)config's `_attn_implementation`
(docs/HOSTS.md §1.2-§1.4). Registering `psa_attention_forward` under `"psa"` with the public
`AttentionInterface.register` is all the attention side needs; lookups go through an instance (a mapping), and
the private class dict `_global_mapping` is read only when a release lacks that mapping API.

Selecting `psa` in one place for both towers needs a small interception, because PaddleFormers 1.x keeps one
`_attn_implementation` per sub-config and rejects `from_pretrained(..., attn_implementation=...)` with a
`TypeError` (docs/HOSTS.md §1.5). `install_config_flow()` replaces exactly three attributes of the Qwen2.5-VL
classes, each a thin wrapper that behaves exactly like the original for every value other than `psa`:

* `Qwen2_5_VLConfig.__setattr__`: setting `_attn_implementation` / `attn_implementation` to `"psa"` on the
  composite config also sets both sub-configs; setting `psa_config` validates it and stores it (as a dict)
  on the composite config (saved in config.json) and, unsaved, on both sub-configs (read at forward).
* `Qwen2_5_VLForConditionalGeneration.__init__` and `Qwen2_5_VLModel.__init__`: accept (pop) the keyword
  arguments `attn_implementation="psa"` and `psa_config=...` that `from_pretrained` forwards to the
  constructor, and when the config selects `psa` anywhere (kwarg, top-level `_attn_implementation` or
  `attn_implementation` from config.json, either sub-config) set it on both sub-configs.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import sys
import types
from collections.abc import Mapping
from typing import Any

from . import qwen2_5_vl as policy

logger = logging.getLogger("paddlemix_psa")

KEY = "psa"
INTERFACE_MODULE = "paddleformers.nn.attention.interface"
QWEN_CONFIG_MODULE = "paddleformers.transformers.qwen2_5_vl.configuration"
QWEN_MODELING_MODULE = "paddleformers.transformers.qwen2_5_vl.modeling"
_WRAPPED = "__psa_wrapped__"
_MISSING = object()
SUPPORTED_VERSIONS = ("1.0", "1.1", "1.2")     # PaddleFormers releases whose AttentionInterface this targets

# "active": psa registered; "failed": registration failed (`why` holds the cause), selecting psa raises
_STATE: dict[str, Any] = {"mode": None, "why": ""}


def _lookup(iface, key: str):
    """`iface[key]` or None, through the public mapping API (an instance of the interface class)."""
    if isinstance(iface, type):
        try:
            view = iface()
        except Exception:  # noqa: BLE001 - a release whose interface cannot be instantiated
            view = None
        if isinstance(view, Mapping):
            return view.get(key)
        private = getattr(iface, "_global_mapping", None)          # guarded private name (pre-mapping API)
        if isinstance(private, Mapping):
            return private.get(key)
        raise TypeError(f"{iface!r} offers neither a mapping API nor a registry dict; paddlemix_psa supports "
                        f"PaddleFormers {', '.join(SUPPORTED_VERSIONS)}")
    return iface.get(key) if isinstance(iface, Mapping) else None


# ------------------------------------------------------------------------------------------ attention function
def _host_dense():
    """The host's own dense attention: `sdpa` (falls back to `eager` should a release drop `sdpa`)."""
    from paddleformers.nn.attention.interface import AttentionInterface

    return _lookup(AttentionInterface, "sdpa") or _lookup(AttentionInterface, "eager")


def psa_attention_forward(module, query, key, value, attention_mask=None, attn_mask_startend_row_indices=None,
                          dropout=0.0, sink=None, scaling=None, is_causal=None, **kwargs):
    """PaddleFormers attention function for `_attn_implementation="psa"` (docs/HOSTS.md §1.3).

    query [b, h, q, d], key/value [b, kv_h, k, d] (GQA not expanded) -> (out [b, q, h*d], None).
    Causality is inferred like the built-in `sdpa` (`is_causal` absent, no mask, `module.is_causal`), aligned
    bottom-right when q < k. Language-model prefill runs PSA; everything else runs the host's `sdpa` with
    the same arguments, counted per reason (`paddlemix_psa.integrations.qwen2_5_vl`).
    """
    q_len, k_len, head_dim = query.shape[2], key.shape[2], query.shape[3]
    noncausal_call = is_causal is False or not getattr(module, "is_causal", True)
    if noncausal_call and not getattr(module, "is_causal", True):
        # the vision tower: one call per window / per image segment
        vcfg = getattr(module, "config", None)
        decision = policy.vision_decision(getattr(module, "_psa_full_attention", None), k_len,
                                          policy.window_tokens(vcfg) if vcfg is not None else None)
    else:
        config = policy.resolve_config(module, getattr(module, "config", None))
        padding = attention_mask is not None and (q_len == 1 or not policy.is_pure_causal_mask(
            attention_mask, q_len, k_len))
        decision = policy.text_decision(
            q_len, head_dim, policy.dtype_name(query), config, padding=padding,
            row_indices=attn_mask_startend_row_indices is not None, dropout=dropout,
            sink=sink is not None, causal=not noncausal_call)
        decision = policy.launch_decision(decision, query)
        if decision.use_psa:
            out = policy.run_psa(module, query, key, value, config, scale=scaling)   # [b, h, q, d]
            out = out.transpose([0, 2, 1, 3])
            return out.reshape([0, 0, out.shape[2] * out.shape[3]]), None
    policy.record_fallback(module, decision)
    return _host_dense()(module, query, key, value, attention_mask=attention_mask,
                         attn_mask_startend_row_indices=attn_mask_startend_row_indices, dropout=dropout,
                         sink=sink, scaling=scaling, is_causal=is_causal, **kwargs)


def _psa_unavailable(module, query, key, value, *args, **kwargs):
    from . import not_registered_error

    raise not_registered_error("paddleformers", _STATE["why"])


# ------------------------------------------------------------------------------------------------ registration
def _interface(module=None):
    if module is None:
        module = sys.modules.get(INTERFACE_MODULE)
        if module is None:
            import importlib

            module = importlib.import_module(INTERFACE_MODULE)
    if hasattr(module, "AttentionInterface"):
        return module.AttentionInterface
    if isinstance(module, types.ModuleType):
        raise TypeError(f"{module.__name__} has no AttentionInterface; paddlemix_psa supports PaddleFormers "
                        f"{', '.join(SUPPORTED_VERSIONS)}")
    return module


def not_registered_reason() -> str:
    """Why `psa` is not registered with PaddleFormers ("" when it is)."""
    mod = sys.modules.get(INTERFACE_MODULE)
    if mod is None:
        return "PaddleFormers' attention interface is not imported"
    try:
        current = _lookup(_interface(mod), KEY)
    except Exception as exc:  # noqa: BLE001 - a broken host must give False, not an exception
        return f"PaddleFormers' AttentionInterface is unusable ({type(exc).__name__}: {exc})"
    if current is psa_attention_forward:
        return ""
    return _STATE["why"] or ("'psa' maps to another function" if current is not None else "'psa' is not registered")


def is_registered() -> bool:
    return not not_registered_reason()


def mark_failed(why: str) -> None:
    """Registration failed: remember `why`, so that selecting `psa` raises the plugin's error naming it.

    The placeholder and the config flow are installed where the host still allows it (each may fail too)."""
    _STATE.update(mode="failed", why=why)
    with contextlib.suppress(Exception):
        iface = _interface(sys.modules.get(INTERFACE_MODULE) or None)
        if _lookup(iface, KEY) is None:
            iface.register(KEY, _psa_unavailable)
    for name in (QWEN_CONFIG_MODULE, QWEN_MODELING_MODULE):
        if name in sys.modules:
            with contextlib.suppress(Exception):
                install_config_flow(sys.modules[name])


def register_paddleformers(module=None) -> bool:
    """Register `psa` in PaddleFormers' `AttentionInterface` (idempotent) and install the config flow.

    `module`: the `paddleformers.nn.attention.interface` module (or the `AttentionInterface` class); imported
    when omitted. Re-registering a different object raises.
    """
    iface = _interface(module)
    current = _lookup(iface, KEY)
    if current is not None and current not in (psa_attention_forward, _psa_unavailable):
        raise RuntimeError(f"AttentionInterface already maps {KEY!r} to {current!r}, not paddlemix_psa's "
                           f"psa_attention_forward; refusing to replace it")
    if current is not psa_attention_forward:
        iface.register(KEY, psa_attention_forward)
        if _lookup(iface, KEY) is not psa_attention_forward:
            raise RuntimeError(f"AttentionInterface.register({KEY!r}, ...) did not take effect; paddlemix_psa "
                               f"supports PaddleFormers {', '.join(SUPPORTED_VERSIONS)}")
        logger.info("paddlemix_psa: registered attn_implementation='psa' with PaddleFormers")
    _STATE["mode"], _STATE["why"] = "active", ""
    for name in (QWEN_CONFIG_MODULE, QWEN_MODELING_MODULE):
        if name in sys.modules:
            install_config_flow(sys.modules[name])
    return True


# ------------------------------------------------------------------------------------------------ config flow
def _own(config, key: str, default=None):
    return object.__getattribute__(config, "__dict__").get(key, default)


def _sub_configs(config):
    d = object.__getattribute__(config, "__dict__")
    return [c for c in (d.get("text_config"), d.get("vision_config")) if c is not None]


def _store_psa_config(config, value) -> None:
    """Validate and keep `psa_config` as a dict on the composite config only (saved once in config.json);
    attention modules reach it through the `_psa_owner_config` reference set at model construction."""
    from paddleformers.transformers.configuration_utils import PretrainedConfig

    value = None if value is None else policy.config_to_dict(value)
    PretrainedConfig.__setattr__(config, "psa_config", value)


def selects_psa(config, attn_kwarg=None) -> bool:
    if attn_kwarg == KEY:
        return True
    if KEY in (_own(config, "_attn_implementation"), _own(config, "attn_implementation")):
        return True
    return any(getattr(sub, "_attn_implementation", None) == KEY for sub in _sub_configs(config))


def apply_psa_selection(config) -> None:
    """Both sub-configs select `psa`; a `psa_config` already on the config is validated now."""
    if _STATE["mode"] != "active":
        from . import not_registered_error

        raise not_registered_error("paddleformers", _STATE["why"])
    for sub in _sub_configs(config):
        sub._attn_implementation = KEY
    value = _own(config, "psa_config")
    if value is not None:
        _store_psa_config(config, value)               # validate early: at construction, not at forward


def _wrap_setattr(orig):
    @functools.wraps(orig)
    def __setattr__(self, key, value):
        if key == "psa_config":
            return _store_psa_config(self, value)
        orig(self, key, value)
        if key in ("_attn_implementation", "attn_implementation") and value == KEY and _sub_configs(self):
            apply_psa_selection(self)

    setattr(__setattr__, _WRAPPED, orig)
    return __setattr__


def _stamp_layers(model, config) -> None:
    """Give every attention module a reference to the composite config (for `psa_config`), and tell each
    vision attention module whether its block is a full-attention block (the policy's reason)."""
    for _, layer in model.named_sublayers(include_self=False):
        if type(layer).__name__.endswith("Attention") and hasattr(layer, "config"):
            object.__setattr__(layer, "_psa_owner_config", config)
    visual = getattr(model, "visual", None)
    if visual is None and getattr(model, "model", None) is not None:
        visual = getattr(model.model, "visual", None)
    vcfg = _own(config, "vision_config")
    if visual is None or vcfg is None:
        return
    full = set(getattr(vcfg, "fullatt_block_indexes", None) or [])
    for i, block in enumerate(getattr(visual, "blocks", []) or []):
        attn = getattr(block, "attn", None)
        if attn is not None:
            object.__setattr__(attn, "_psa_full_attention", i in full)


def _wrap_init(orig):
    @functools.wraps(orig)
    def __init__(self, config, *args, **kwargs):
        attn = kwargs.get("attn_implementation", _MISSING)
        if attn == KEY:
            kwargs.pop("attn_implementation")
        psa_config = kwargs.pop("psa_config", _MISSING)
        if psa_config is not _MISSING:
            _store_psa_config(config, psa_config)
        if selects_psa(config, attn):
            apply_psa_selection(config)
        orig(self, config, *args, **kwargs)
        _stamp_layers(self, config)

    setattr(__init__, _WRAPPED, orig)
    return __init__


def install_config_flow(module=None) -> None:
    """Install the three wrappers (idempotent). `module`: the Qwen2.5-VL configuration or modeling module."""
    import importlib

    names = [QWEN_CONFIG_MODULE, QWEN_MODELING_MODULE] if module is None else [module.__name__]
    for name in names:
        mod = module if module is not None else importlib.import_module(name)
        if hasattr(mod, "Qwen2_5_VLConfig") and not hasattr(mod.Qwen2_5_VLConfig.__setattr__, _WRAPPED):
            if "__setattr__" in mod.Qwen2_5_VLConfig.__dict__:
                mod.Qwen2_5_VLConfig.__setattr__ = _wrap_setattr(mod.Qwen2_5_VLConfig.__dict__["__setattr__"])
        for cls_name in ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel"):
            cls = getattr(mod, cls_name, None)
            if cls is not None and "__init__" in cls.__dict__ and not hasattr(cls.__init__, _WRAPPED):
                cls.__init__ = _wrap_init(cls.__dict__["__init__"])


def set_attn_implementation(model, text: str | None = KEY, vision: str | None = KEY) -> None:
    """Per-tower choice on a built PaddleFormers model (both towers read the key at forward time)."""
    config = model.config
    for sub_name, value in (("text_config", text), ("vision_config", vision)):
        sub = _own(config, sub_name) if hasattr(config, "__dict__") else None
        if value is None or sub is None:
            continue
        if value == KEY and _STATE["mode"] != "active":
            from . import not_registered_error

            raise not_registered_error("paddleformers", _STATE["why"])
        sub._attn_implementation = value
    _stamp_layers(model, config)


__all__ = ["psa_attention_forward", "register_paddleformers", "install_config_flow", "is_registered",
           "set_attn_implementation"]
