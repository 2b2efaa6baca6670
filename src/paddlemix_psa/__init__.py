"""paddlemix_psa: Pyramid Sparse Attention (arXiv 2512.04025) for PaddlePaddle.

Importing the package is cheap: Paddle, Triton and the hosts are imported only when a name that needs them
is first used.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AttentionConfig": "paddlemix_psa.config",
    "psa_attention": "paddlemix_psa.ops.attention",
    "psa_attention_with_map": "paddlemix_psa.ops.attention",
    "build_level_map": "paddlemix_psa.ops.attention",
    "PSAStats": "paddlemix_psa.statistics",
    "stats": "paddlemix_psa.statistics",
    "print_stats": "paddlemix_psa.statistics",
    "enable_stats": "paddlemix_psa.statistics",
    "QwenVLInference": "paddlemix_psa.app.inference",
}
_EXPORTS.update({name: "paddlemix_psa.integrations" for name in (
    "register", "is_registered", "collect_stats", "reset_stats", "set_attn_implementation",
    "load_attention_plugins")})

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'paddlemix_psa' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def _arm_hosts() -> None:
    """Register `psa` with hosts already imported and arm the post-import hook for the others (cheap)."""
    import sys
    hook = sys.modules.get("paddlemix_psa.integrations._autoload")
    if getattr(hook, "_IN_HOOK", False):     # imported by the autoload hook itself, not by the user
        return
    try:
        from .integrations import _autoload
        _autoload.arm()
        if any(name in sys.modules for name in _autoload.WATCHED):
            from .integrations import arm
            arm()
    except Exception as exc:  # never break `import paddlemix_psa`
        import logging
        logging.getLogger("paddlemix_psa").warning("paddlemix_psa: host registration failed: %r", exc)


_arm_hosts()
