"""The only place that knows how each framework spells tensor metadata.

Launchers in ``kernels/`` accept *tensor-likes*: Paddle tensors, torch tensors, or the numpy host views used
under ``TRITON_INTERPRET=1``. Triton itself reads only ``data_ptr()`` and ``dtype``; the launchers read shapes,
element strides and dtype names through the helpers below. Stdlib only.
"""

from __future__ import annotations

__all__ = ["strides", "dtype_name", "shape", "narrow", "SliceView", "DTYPE_NAMES"]

#: canonical dtype names the kernels accept somewhere (attention: the first three)
DTYPE_NAMES = ("float16", "bfloat16", "float32", "int8", "int32", "int64", "float64")


def shape(t) -> tuple:
    """Shape of ``t`` as a tuple of Python ints."""
    s = t.shape
    if callable(s):  # defensive: some wrappers expose shape()
        s = s()
    return tuple(int(x) for x in s)


def strides(t) -> tuple:
    """Element strides of ``t``.

    Paddle: the ``t.strides`` property (elements). torch and the interpreter host views: ``t.stride()``.
    numpy arrays are rejected because their ``strides`` are in bytes (wrap them in a host view).
    """
    if type(t).__module__.split(".")[0] == "numpy":
        raise TypeError("numpy arrays have byte strides; wrap them in a host view (tests/interpret/hostview.py)")
    st = getattr(t, "strides", None)
    if st is not None and not callable(st):
        return tuple(int(x) for x in st)
    fn = getattr(t, "stride", None)
    if callable(fn):
        return tuple(int(x) for x in fn())
    if callable(st):
        return tuple(int(x) for x in st())
    raise TypeError(f"cannot read strides of {type(t).__name__}: expected `.strides` (Paddle) or `.stride()` (torch)")


def dtype_name(t) -> str:
    """Canonical dtype name of ``t``: "float16", "bfloat16", "float32", "int8", "int32", ...

    Works for ``paddle.float16`` / ``paddle.bfloat16`` (``str`` gives ``paddle.float16``), ``torch.bfloat16`` and
    numpy dtypes. Paddle's ``uint16`` alias of bfloat16 never appears as a Paddle dtype string.
    """
    name = str(getattr(t, "dtype", t)).split(".")[-1].strip("'\"<>")
    if name.startswith("dtype("):  # numpy repr: dtype('float32')
        name = name[len("dtype("):].strip("'\")")
    aliases = {"half": "float16", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    return aliases.get(name, name)


_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "int8": 1, "int32": 4, "int64": 8, "float64": 8}


class SliceView:
    """``t`` narrowed to ``[start, stop)`` along one axis, for launchers (no copy, no framework call).

    Compiled launches read ``data_ptr()`` and ``dtype``; launchers read ``shape`` and ``strides``; the Triton
    interpreter stages arguments through ``untyped_storage`` / ``new_empty`` / ``set_`` and reads
    ``storage_offset``, ``size`` and ``stride``, all delegated to the base with the offset added.
    """

    def __init__(self, t, axis: int, start: int, stop: int, *, base_shape=None, base_strides=None, base_dtype=None):
        # base_*: t's metadata when the caller already holds it (kernels/geometry.py), so t is not read again
        base_shape = shape(t) if base_shape is None else tuple(base_shape)
        base_strides = strides(t) if base_strides is None else tuple(base_strides)
        if not 0 <= start <= stop <= base_shape[axis]:
            raise ValueError(f"slice [{start}, {stop}) out of range for axis {axis} of shape {base_shape}")
        self._base = t
        self._offset = start * base_strides[axis]
        self._byte_offset = self._offset * _ITEMSIZE[dtype_name(t) if base_dtype is None else base_dtype]
        self.shape = base_shape[:axis] + (stop - start,) + base_shape[axis + 1:]
        self.strides = base_strides
        self.dtype = t.dtype

    def data_ptr(self) -> int:
        return self._base.data_ptr() + self._byte_offset

    # --- the interpreter's staging protocol
    def untyped_storage(self):
        return self._base.untyped_storage()

    def new_empty(self, *args, **kwargs):
        return self._base.new_empty(*args, **kwargs)

    def storage_offset(self) -> int:
        return self._base.storage_offset() + self._offset

    def size(self):
        return self.shape

    def stride(self):
        return self.strides


def narrow(t, axis: int, start: int, stop: int):
    """``t`` itself when the slice is whole, else a :class:`SliceView`."""
    if start == 0 and stop == shape(t)[axis]:
        return t
    return SliceView(t, axis, start, stop)
