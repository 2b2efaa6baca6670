"""Compile-only helpers (docs/LAUNCH.md §6 layer 2): metadata-only tensors and a stub sm_90 driver, so that
``kernel.warmup`` runs the whole compiler (TTIR -> TTGIR -> PTX -> cubin with the bundled ptxas) on a CPU machine.
"""
from __future__ import annotations

import contextlib
import os
import sys

import pytest

#: the repository root; the compile tests build the kernels of this checkout's src/, not an installed copy
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if os.path.join(ROOT, "src") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "src"))

#: module mark of every compile-only test file
COMPILE_ONLY = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                                  reason="compile-only tests need compiled (not interpreted) kernels")

#: opt-in shared memory per block on sm_90
SMEM_LIMIT = 227 * 1024


class FakeTensor:
    """Tensor-like with metadata only and a 16-byte aligned fake address (never dereferenced)."""

    def __init__(self, shape, dtype, stride=None):
        self.shape = tuple(shape)
        self.dtype = dtype
        if stride is None:
            stride, acc = [], 1
            for s in reversed(self.shape):
                stride.append(acc)
                acc *= max(int(s), 1)
            stride = tuple(reversed(stride))
        self._stride = tuple(stride)

    def data_ptr(self):
        return 1 << 24

    def stride(self):
        return self._stride


class StubDriver:
    """Enough of a Triton driver to compile: device 0, stream 0, a fixed CUDA target."""

    def __init__(self, arch: int = 90):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def get_device_capability(self, device=0):
        return divmod(self.target.arch, 10)

    def is_active(self):
        return True


@contextlib.contextmanager
def stub_driver(arch: int = 90):
    """Make a :class:`StubDriver` Triton's active driver; restore the previous one afterwards."""
    import triton

    cfg = triton.runtime.driver
    prev = cfg._active
    cfg.set_active(StubDriver(arch))
    try:
        yield
    finally:
        cfg._active = prev
