"""A CuPy-backed stand-in for the `paddle` module, for the GPU machine that has no Paddle.

It implements the Paddle 3.2 / 3.3 API surface that the plugin's ops layer uses on the Triton path (the list
is in the docstring of `paddlemix_psa/ops/_driver.py`). Each name is written against Paddle's own signature
and return type, so the real `ops` layer runs unchanged on GPU memory: the driver scope, the allocator,
dispatch, and the public ops. `install(api="3.3")` puts it in `sys.modules["paddle"]`. Do this before
anything imports paddle.

- `api="3.3"` exposes `paddle.base.libpaddle._get_current_raw_stream`.
- `api="3.2"` has no raw getter, so the driver goes through `paddle.device.cuda.current_stream(dev).cuda_stream`.
- The current stream is one non-blocking CuPy stream, made current for CuPy at install. This matches Paddle
  computing on its own stream, not on legacy stream 0.
- bfloat16 is stored as uint16 bit patterns. CuPy has no bf16 dtype.
- Conversions to bf16 round to nearest even, like Paddle's and torch's casts.

Test helpers, not Paddle API: `from_bits`, `bits`, `host_pointer_tensor`.
"""
from __future__ import annotations

import sys
import types

import cupy as cp
import numpy as np


class DType:
    """`paddle.float16` etc.: hashable singletons whose str() is "paddle.<name>" (what Triton canonicalises)."""

    def __init__(self, name: str, storage: str) -> None:
        self.name, self.storage = name, np.dtype(storage)

    def __repr__(self) -> str:
        return f"paddle.{self.name}"

    __str__ = __repr__


DTYPES = {n: DType(n, s) for n, s in (("float16", "float16"), ("bfloat16", "uint16"), ("float32", "float32"),
                                      ("float64", "float64"), ("int8", "int8"), ("int16", "int16"),
                                      ("int32", "int32"), ("int64", "int64"), ("uint8", "uint8"), ("bool", "bool"))}


def _dtype(d) -> DType:
    return d if isinstance(d, DType) else DTYPES[str(d).split(".")[-1]]


def _bf16_to_f32(u16):
    return (cp.ascontiguousarray(u16).astype(cp.uint32) << 16).view(cp.float32)


def _f32_to_bf16(x):
    u = cp.ascontiguousarray(x.astype(cp.float32)).view(cp.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(cp.uint16)


class Place:
    """`Tensor.place` / `paddle.CUDAPlace(i)`: a GPU place."""

    def __init__(self, device: int) -> None:
        self._device = int(device)

    def is_gpu_place(self) -> bool:
        return True

    def is_cpu_place(self) -> bool:
        return False

    def gpu_device_id(self) -> int:
        return self._device

    def __eq__(self, other) -> bool:
        return isinstance(other, Place) and other._device == self._device

    def __hash__(self) -> int:
        return hash(("gpu", self._device))

    def __repr__(self) -> str:
        return f"Place(gpu:{self._device})"


class Tensor:
    """A dygraph GPU tensor over a CuPy array (raw storage; bf16 as uint16 bits)."""

    def __init__(self, storage, dtype) -> None:
        self._a, self._dtype = storage, _dtype(dtype)
        self._device = storage.device.id

    # --- what the ops layer and Triton read
    @property
    def dtype(self) -> DType:
        return self._dtype

    @property
    def shape(self) -> list:
        return [int(s) for s in self._a.shape]

    @property
    def ndim(self) -> int:
        return self._a.ndim

    @property
    def strides(self) -> list:                  # elements, as Paddle's Tensor.strides
        return [int(s) // self._a.itemsize for s in self._a.strides]

    @property
    def place(self) -> Place:
        return Place(self._device)

    def data_ptr(self) -> int:
        return int(self._a.data.ptr)

    def numpy(self) -> np.ndarray:               # bf16 comes back as uint16, as in Paddle
        return cp.asnumpy(self._a)

    def zero_(self) -> "Tensor":
        self._a.fill(0)
        return self

    def to(self, *args, **kwargs) -> "Tensor":   # one device only
        return self

    def astype(self, dtype) -> "Tensor":
        return _from_values(self._values(), dtype)

    def contiguous(self) -> "Tensor":
        return Tensor(cp.ascontiguousarray(self._a), self._dtype)

    def transpose(self, perm) -> "Tensor":
        return Tensor(self._a.transpose(perm), self._dtype)

    def reshape(self, shape) -> "Tensor":
        return Tensor(cp.ascontiguousarray(self._a).reshape(shape), self._dtype)

    def flatten(self) -> "Tensor":
        return self.reshape([-1])

    # --- reductions and element-wise maths the checks use (`(m == p).any()`, `bool(ok.all())`, ...)
    def _values(self):
        return _bf16_to_f32(self._a) if self._dtype.name == "bfloat16" else self._a

    def any(self) -> "Tensor":
        return Tensor(cp.asarray(self._values().any()), "bool")

    def all(self) -> "Tensor":
        return Tensor(cp.asarray(self._values().all()), "bool")

    def abs(self) -> "Tensor":
        return _from_values(cp.abs(self._values()), self._dtype)

    def max(self) -> "Tensor":
        return _from_values(self._values().max(), self._dtype)

    def item(self):
        return self._values().item()

    def __bool__(self) -> bool:
        return bool(self._values())

    def __float__(self) -> float:
        return float(self._values())

    def __int__(self) -> int:
        return int(self._values())

    def _binary(self, other, op, result_dtype=None):
        o = other._values() if isinstance(other, Tensor) else other
        return _from_values(op(self._values(), o), result_dtype or self._dtype)

    def __eq__(self, other):
        return self._binary(other, cp.equal, "bool")

    def __ne__(self, other):
        return self._binary(other, cp.not_equal, "bool")

    def __or__(self, other):
        return self._binary(other, cp.logical_or, "bool")

    def __and__(self, other):
        return self._binary(other, cp.logical_and, "bool")

    def __sub__(self, other):
        return self._binary(other, cp.subtract)

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape}, dtype={self._dtype.name}, place={self.place})"


def _from_values(values, dtype) -> Tensor:
    d = _dtype(dtype)
    values = cp.asarray(values)
    storage = _f32_to_bf16(values) if d.name == "bfloat16" else values.astype(d.storage)
    return Tensor(storage, d)


def _shape(shape) -> tuple:
    return tuple(int(s) for s in (shape if isinstance(shape, (list, tuple)) else [shape]))


def empty(shape, dtype="float32", name=None) -> Tensor:
    d = _dtype(dtype)
    return Tensor(cp.empty(_shape(shape), d.storage), d)


def zeros(shape, dtype="float32", name=None) -> Tensor:
    d = _dtype(dtype)
    return Tensor(cp.zeros(_shape(shape), d.storage), d)


# ------------------------------------------------------------------------------------------ test helpers
def from_bits(array: np.ndarray, dtype: str) -> Tensor:
    """A tensor whose storage is exactly `array` (bf16: uint16 bit patterns), copied on the current stream."""
    d = _dtype(dtype)
    return Tensor(cp.asarray(np.ascontiguousarray(array).view(d.storage)), d)


def bits(t: Tensor) -> np.ndarray:
    """The raw storage of `t` on the host (bf16: uint16 bits): what a bit-for-bit comparison reads."""
    return cp.asnumpy(cp.ascontiguousarray(t._a))


class _HostPointerTensor(Tensor):
    """Claims to live on the GPU but points at host memory: the first kernel launch on it raises."""

    def __init__(self, like: Tensor) -> None:
        super().__init__(like._a, like._dtype)
        self._host = np.zeros(like._a.nbytes + 64, np.uint8)

    def data_ptr(self) -> int:
        return int(self._host.ctypes.data + (-self._host.ctypes.data) % 64)


def host_pointer_tensor(like: Tensor) -> Tensor:
    return _HostPointerTensor(like)


# ------------------------------------------------------------------------------------------ the module
class _State:
    device = 0
    stream = None


def _current_stream(device=None):
    return types.SimpleNamespace(cuda_stream=_State.stream.ptr, device=device)


def _set_device(name: str) -> str:
    text = str(name)
    if not text.startswith("gpu"):
        raise ValueError(f"the stand-in only has GPU devices, got {name!r}")
    _State.device = int(text.split(":")[1]) if ":" in text else 0
    cp.cuda.Device(_State.device).use()
    return text


def _capability(device=None):
    cc = cp.cuda.Device(_State.device if device is None else int(device)).compute_capability   # e.g. "90"
    return int(cc[:-1]), int(cc[-1])


def _synchronize(device=None) -> None:
    cp.cuda.Device(_State.device if device is None else int(device)).synchronize()


def install(api: str = "3.3") -> types.ModuleType:
    """Build the stand-in and make it `sys.modules["paddle"]`; `api` picks the Paddle release to imitate."""
    if api not in ("3.2", "3.3"):
        raise ValueError(f"api={api!r} is invalid: must be '3.2' or '3.3'")
    cp.cuda.Device(0).use()
    _State.stream = cp.cuda.Stream(non_blocking=True)
    _State.stream.use()                          # CuPy's own work (allocation, casts, copies) is ordered on it
    paddle = types.ModuleType("paddle")
    paddle.__version__ = "3.3.1" if api == "3.3" else "3.2.2"
    paddle.__file__ = __file__
    paddle.Tensor = Tensor
    paddle.CUDAPlace = Place
    for name, d in DTYPES.items():
        setattr(paddle, name, d)
    paddle.empty, paddle.zeros = empty, zeros
    paddle.in_dynamic_mode = lambda: True
    paddle.is_compiled_with_cuda = lambda: True

    device = types.ModuleType("paddle.device")
    device.get_device = lambda: f"gpu:{_State.device}"
    device.set_device = _set_device
    device.synchronize = _synchronize
    cuda = types.ModuleType("paddle.device.cuda")
    cuda.current_stream = _current_stream
    cuda.get_device_capability = _capability
    cuda.device_count = lambda: cp.cuda.runtime.getDeviceCount()
    cuda.get_device_name = lambda device=None: cp.cuda.runtime.getDeviceProperties(
        _State.device if device is None else int(device))["name"].decode()
    cuda.synchronize = _synchronize
    device.cuda = cuda
    paddle.device = device

    base = types.ModuleType("paddle.base")
    libpaddle = types.ModuleType("paddle.base.libpaddle")
    if api == "3.3":
        libpaddle._get_current_raw_stream = lambda dev: _State.stream.ptr
    base.libpaddle = libpaddle
    paddle.base = base
    version = types.ModuleType("paddle.version")
    version.cuda = lambda: str(cp.cuda.runtime.runtimeGetVersion())
    paddle.version = version
    sys.modules.update({"paddle": paddle, "paddle.device": device, "paddle.device.cuda": cuda,
                        "paddle.base": base, "paddle.base.libpaddle": libpaddle, "paddle.version": version})
    return paddle


def current_stream():
    """The CuPy stream the stand-in reports as Paddle's current stream."""
    return _State.stream
