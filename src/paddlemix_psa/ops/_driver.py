"""A Paddle-aware Triton driver, installed only around the plugin's own launches (docs/LAUNCH.md §3).

Triton's stock CUDA driver takes the device and stream from torch (or stream 0 without torch); Paddle
computes on its own current stream. `paddle_launch_scope(device)` swaps the process-global active driver
for one that answers with Paddle's device and stream, and restores the previous driver afterwards, so a
user's own torch + Triton kernels keep torch's driver. Not thread-safe against concurrent torch + Triton
launches from other threads (the active-driver slot is process-global).

The Paddle API surface the Triton path calls (Paddle 3.2 / 3.3), in `ops/` (this file, `_launch.py`,
`dispatch.py`, `attention.py`, `_checks.py`). `tests/gpu/paddle_standin.py` implements exactly this list, so a
real Paddle GPU run exercises the same calls as the stand-in run:

- tensors: `isinstance(t, paddle.Tensor)`; `t.place.is_gpu_place()`, `.is_cpu_place()`, `.gpu_device_id()`;
  `str(t.dtype)` ends in the dtype name; `t.shape`, `t.ndim`, `t.strides` (elements); `t.data_ptr()`.
- tensor methods: `t.astype(name)`, `t.to(place)`, `t.zero_()` and `t.numpy()` (the one-element counters
  and the first-launch probe). On the int8 level map: `==`, `|`, `.any()`, `.all()`, `bool(...)`.
- creation: `paddle.empty(shape, dtype=name)` and `paddle.zeros(shape, dtype=name)`, on the current device.
- process state: `paddle.in_dynamic_mode()`, `paddle.is_compiled_with_cuda()`, `paddle.__version__`,
  `paddle.device.get_device()`, `paddle.device.set_device("gpu:N")`, `paddle.device.synchronize()` (stage
  timing only).
- device queries: `paddle.device.cuda.get_device_capability(dev)`, and `paddle.CUDAPlace(dev)`.
- the current stream: `paddle.base.libpaddle._get_current_raw_stream(dev)` on 3.3+; on 3.2,
  `paddle.device.cuda.current_stream(dev).cuda_stream`.
- `triton.testing.do_bench` only: `paddle.device.cuda` as the device interface.
"""
from __future__ import annotations

import contextlib
import functools

import paddle


def _paddle_stream_getter():
    """Paddle 3.3+ exposes the raw current stream cheaply; 3.2 goes through the Stream object."""
    if not paddle.is_compiled_with_cuda():       # the raw getter segfaults on CPU builds
        raise RuntimeError("paddle is not compiled with CUDA: the Triton kernels need paddlepaddle-gpu >= 3.2")
    raw = getattr(getattr(paddle, "base", None), "libpaddle", None)
    raw = getattr(raw, "_get_current_raw_stream", None)
    if raw is not None:
        return raw
    return lambda dev: paddle.device.cuda.current_stream(dev).cuda_stream


@functools.lru_cache(maxsize=1)
def _driver_singleton():
    from triton.backends.nvidia.driver import CudaDriver, CudaLauncher, CudaUtils

    class PaddleCudaDriver(CudaDriver):
        def __init__(self) -> None:            # no super().__init__(): on Triton 3.5-3.7 it imports torch
            self.utils = CudaUtils()
            self.launcher_cls = CudaLauncher
            self.device = 0
            stream = _paddle_stream_getter()
            self.get_current_stream = lambda dev=None: stream(self.device if dev is None else dev)

        def get_current_device(self) -> int:
            return self.device

        def set_current_device(self, device: int) -> None:
            paddle.device.set_device(f"gpu:{device}")

        def get_device_capability(self, device: int = 0):
            return paddle.device.cuda.get_device_capability(device)

        def get_active_torch_device(self):
            return paddle.CUDAPlace(self.device)

        def get_device_interface(self):
            return paddle.device.cuda

        def get_empty_cache_for_benchmark(self):
            return paddle.empty([64 << 20], dtype="int32")

        def clear_cache(self, cache) -> None:
            cache.zero_()

    return PaddleCudaDriver()


@contextlib.contextmanager
def paddle_launch_scope(device: int):
    """Make Paddle's device `device` and its current stream Triton's for the enclosed launches."""
    import triton

    current = paddle.device.get_device()
    if current != f"gpu:{device}":
        raise RuntimeError(f"paddlemix_psa: tensors are on gpu:{device} but Paddle's current device is {current}; "
                           f"call paddle.device.set_device('gpu:{device}') first")
    cfg = triton.runtime.driver
    prev = cfg._active                 # private on purpose: reading `.active` would build the stock driver
    drv = _driver_singleton()
    drv.device = device
    cfg.set_active(drv)
    try:
        yield drv
    finally:
        if prev is None:
            cfg._active = None
        else:
            cfg.set_active(prev)
