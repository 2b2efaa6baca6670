"""Duck-typed host view over a numpy array for TRITON_INTERPRET=1 (docs/LAUNCH.md §6, layer 1).

The interpreter stages every pointer argument through torch's storage API (``untyped_storage``, ``new_empty``,
``set_``); this view provides just enough of it, works in place on the numpy memory, and reports **element**
strides through ``stride()`` (numpy's ``strides`` are bytes).
"""
from __future__ import annotations

import numpy as np


class _Storage:
    def __init__(self, ptr):
        self._ptr = ptr

    def data_ptr(self):
        return self._ptr

    def cpu(self):
        return self

    def copy_(self, other):  # the interpreter worked in place
        return self


class HostView:
    """View of a numpy array (any strides) that Triton's interpreter accepts as a tensor."""

    def __init__(self, arr: np.ndarray, *, _shape=None, _stride=None, _ptr=None):
        self.arr = arr
        self._ptr = arr.ctypes.data if _ptr is None else _ptr
        self.shape = tuple(arr.shape) if _shape is None else tuple(_shape)
        self._stride = (tuple(s // arr.itemsize for s in arr.strides) if _stride is None else tuple(_stride))
        self.dtype = arr.dtype

    # --- what Triton reads
    def data_ptr(self):
        return self._ptr

    def untyped_storage(self):
        return _Storage(self._ptr)

    def new_empty(self, *args, **kwargs):
        return HostView(self.arr, _shape=(0,), _stride=(1,), _ptr=self._ptr)

    def set_(self, storage, offset, size, stride):
        self._ptr = storage.data_ptr() + offset * self.arr.itemsize
        self.shape, self._stride = tuple(size), tuple(stride)
        return self

    def storage_offset(self):
        return 0

    def size(self):
        return self.shape

    def stride(self):
        return self._stride

    def numel(self):
        return int(np.prod(self.shape))

    def element_size(self):
        return self.arr.itemsize


def hv(arr: np.ndarray) -> HostView:
    """Wrap ``arr`` (must stay alive while the view is used)."""
    return HostView(arr)
