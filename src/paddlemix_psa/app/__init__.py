"""The user tool: Qwen2.5-VL image/video understanding with PSA (`QwenVLInference`), media inputs, the tiny
offline model, and plots. Paddle, the hosts, PyAV and matplotlib are imported only when used."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "QwenVLInference": "paddlemix_psa.app.inference",
    "InferenceResult": "paddlemix_psa.app.inference",
    "InferenceError": "paddlemix_psa.app.inference",
    "MediaError": "paddlemix_psa.app.media",
    "load_image": "paddlemix_psa.app.media",
    "load_video": "paddlemix_psa.app.media",
    "smart_resize": "paddlemix_psa.app.media",
    "build_tiny_model": "paddlemix_psa.app.tiny",
    "plot_levels": "paddlemix_psa.app.plot",
    "sample_image_path": "paddlemix_psa.app.samples",
    "make_sample_video": "paddlemix_psa.app.samples",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'paddlemix_psa.app' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
