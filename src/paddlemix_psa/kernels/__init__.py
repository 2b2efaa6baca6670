"""Framework-neutral Triton kernels of PSA (Triton + stdlib only; tensor-likes in, caller-allocated outputs).

Importing this package imports nothing heavy: Triton is imported only when a launcher module is, e.g.
``from paddlemix_psa.kernels import attn_fwd`` or ``paddlemix_psa.kernels.psa_attn_fwd`` (resolved lazily).

| launcher | module |
|---|---|
| ``psa_pool_kv`` | ``pool`` |
| ``psa_attn_fwd`` | ``attn_fwd`` |
| ``psa_estimate_scores`` | ``estimate`` |
| ``psa_select_levels``, ``psa_build_lut`` | ``select`` |
| ``psa_similarity_cap`` | ``similarity`` |
| ``psa_forward_kernels`` | ``pipeline`` |
"""

from __future__ import annotations

import importlib

_LAUNCHERS = {
    "psa_pool_kv": "pool",
    "psa_attn_fwd": "attn_fwd",
    "psa_estimate_scores": "estimate",
    "psa_select_levels": "select",
    "psa_build_lut": "select",
    "psa_similarity_cap": "similarity",
    "psa_forward_kernels": "pipeline",
}
_MODULES = ("pool", "attn_fwd", "estimate", "select", "similarity", "pipeline", "geometry", "_tensorlike")

__all__ = sorted(_LAUNCHERS)


def __getattr__(name):
    if name in _LAUNCHERS:
        return getattr(importlib.import_module(f".{_LAUNCHERS[name]}", __name__), name)
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAUNCHERS) | set(_MODULES))
