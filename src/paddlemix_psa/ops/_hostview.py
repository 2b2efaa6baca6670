"""Host views: let the Triton interpreter (TRITON_INTERPRET=1) work in place on Paddle CPU tensors.

The interpreter stages arguments through torch's storage API (`untyped_storage`, `set_`, ...), which Paddle
tensors lack. A view answers those calls with the tensor's own address, element strides and dtype, so the
interpreter reads and writes Paddle's memory directly (docs/LAUNCH.md §6). CPU only; never on GPU.
"""
from __future__ import annotations


class _Storage:
    def __init__(self, ptr: int) -> None:
        self._ptr = ptr

    def data_ptr(self) -> int:
        return self._ptr

    def cpu(self) -> "_Storage":
        return self

    def copy_(self, other) -> "_Storage":      # same memory on both sides: nothing to copy
        return self


class _HostDType(str):
    """Paddle's dtype as its str() ("paddle.float16"), plus the `itemsize` Triton's TensorDescriptor reads
    (Paddle's dtype objects have none, and under the interpreter the descriptor's base must be the view)."""

    @property
    def itemsize(self) -> int:
        name = self.split(".")[-1]
        return {"float64": 8, "int64": 8, "float32": 4, "int32": 4, "float16": 2, "bfloat16": 2,
                "int16": 2}.get(name, 1)


class PaddleHostView:
    """Duck-typed stand-in for a CPU tensor as the Triton interpreter expects one."""

    def __init__(self, tensor, *, ptr: int | None = None, shape=None, strides=None) -> None:
        self.tensor = tensor
        self._ptr = tensor.data_ptr() if ptr is None else ptr
        self.shape = tuple(tensor.shape if shape is None else shape)
        self._strides = tuple(tensor.strides if strides is None else strides)
        self.dtype = _HostDType(tensor.dtype)     # str() ends in float16 / bfloat16 / int32 ...

    # what Triton and our launchers read
    def data_ptr(self) -> int:
        return self._ptr

    def stride(self, dim: int | None = None):
        return self._strides if dim is None else self._strides[dim]

    @property
    def strides(self):
        return self._strides

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return len(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    # what the interpreter's staging calls
    def untyped_storage(self) -> _Storage:
        return _Storage(self._ptr)

    def storage_offset(self) -> int:
        return 0                                   # the offset is already inside data_ptr()

    def new_empty(self, *args, **kwargs) -> "PaddleHostView":
        return PaddleHostView(self.tensor, ptr=self._ptr, shape=self.shape, strides=self._strides)

    def set_(self, storage, offset=0, size=None, stride=None) -> "PaddleHostView":
        self._ptr = storage.data_ptr()
        if size is not None:
            self.shape = tuple(size)
        if stride is not None:
            self._strides = tuple(stride)
        return self

    def copy_(self, other) -> "PaddleHostView":
        return self
