"""TMA (the tensor-memory accelerator of sm_90+) descriptors for the kernels, framework-neutral.

A kernel that can load tiles through TMA asks :func:`descriptor` for a host ``TensorDescriptor`` over any
tensor-like. When the address or a stride is not 16-byte aligned there is none: the kernel keeps pointer loads,
the launch is counted in ``TMA_FALLBACKS[(kernel, "unaligned")]`` and logged once per kernel.
"""
from __future__ import annotations

import collections
import logging
import os

from ._tensorlike import dtype_name

__all__ = ["tma_available", "descriptor", "TMA_FALLBACKS"]

_log = logging.getLogger(__name__)

#: launches that wanted TMA on a TMA-capable target but kept pointer loads, by (kernel, reason)
TMA_FALLBACKS: collections.Counter = collections.Counter()


def tma_available() -> bool:
    """Whether the active Triton target has TMA (sm_90+); the interpreter emulates it."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True
    import triton

    target = triton.runtime.driver.active.get_current_target()
    return target.backend == "cuda" and isinstance(target.arch, int) and target.arch >= 90


class _DescDtype(str):
    """A dtype name with the ``itemsize`` Triton's TensorDescriptor checks (not every framework's dtype has it)."""

    @property
    def itemsize(self) -> int:
        return 4 if self == "float32" else 2


class _DescBase:
    """What a TensorDescriptor reads from its base: the pointer and the dtype (name)."""

    def __init__(self, t, dt: str):
        self._ptr = t.data_ptr()
        self.dtype = _DescDtype(dt)

    def data_ptr(self) -> int:
        return self._ptr


def descriptor(t, shape, strides, block_shape, *, kernel: str, dtype: str | None = None):
    """TMA descriptor of the view (``shape``, element ``strides``, last stride 1) of ``t`` with box
    ``block_shape``, or None (counted, logged once per kernel) when the address or a stride is not 16-byte
    aligned. ``dtype``: t's dtype name when the caller already knows it."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    dtype = dtype_name(t) if dtype is None else dtype
    esize = 4 if dtype == "float32" else 2
    if t.data_ptr() % 16 or any((st * esize) % 16 for st in strides[:-1]):
        key = (kernel, "unaligned")
        if not any(k[0] == kernel for k in TMA_FALLBACKS):
            _log.warning("%s: an input's address or strides are not 16-byte aligned; pointer loads instead of TMA "
                         "(counted in paddlemix_psa.kernels._tma.TMA_FALLBACKS)", kernel)
        TMA_FALLBACKS[key] += 1
        return None
    base = t if hasattr(t.dtype, "itemsize") else _DescBase(t, dtype)  # the interpreter needs the tensor itself
    return TensorDescriptor(base, list(shape), list(strides), list(block_shape))
