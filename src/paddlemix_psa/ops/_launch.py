"""Launch helpers: the right driver scope and argument form for where the tensors live, and the diagnosis of
why the Triton kernels cannot launch on a Paddle GPU (checked once per device, cached for the process)."""
from __future__ import annotations

import contextlib
import ctypes

import paddle

from ._hostview import PaddleHostView

TRITON_RANGE = ((3, 5), (3, 10))        # pyproject: triton>=3.5,<3.10 (the driver internals we rely on)
MIN_PADDLE = (3, 2)                     # first Paddle with the current-stream API the driver reads
MIN_CAPABILITY = (8, 0)                 # the kernels use bf16 and Ampere-era tensor-core tiles
LIBCUDA_NAMES = ("libcuda.so.1", "libcuda.so")
WAY_OUT = ("set PADDLEMIX_PSA_BACKEND=reference to run the slow pure-Paddle reference, or use a dense "
           "attn_implementation (e.g. 'sdpa') for the model")


class TritonCannotLaunch(RuntimeError):
    """The Triton kernels cannot run on this Paddle GPU; `cause` says why, the message says what to do."""

    def __init__(self, cause: str, device: int) -> None:
        self.cause, self.device = cause, device
        super().__init__(f"paddlemix_psa: the Triton kernels cannot launch on gpu:{device}: {cause}; {WAY_OUT}")


def launch_scope(t: paddle.Tensor):
    """Paddle's device and stream for GPU tensors; nothing to set up for the CPU interpreter."""
    if t.place.is_gpu_place():
        from ._driver import paddle_launch_scope
        return paddle_launch_scope(t.place.gpu_device_id())
    return contextlib.nullcontext()


def kernel_args(*tensors):
    """Tensors as launchers take them: GPU tensors as they are, CPU tensors as interpreter host views."""
    out = []
    for t in tensors:
        if t is None or not isinstance(t, paddle.Tensor) or not t.place.is_cpu_place():
            out.append(t)
        else:
            out.append(PaddleHostView(t))
    return out


# ------------------------------------------------------------------------------ why Triton cannot launch
_DIAGNOSED: dict[int, str | None] = {}


def launch_blocker(t: paddle.Tensor, device: int) -> str | None:
    """Why the kernels cannot launch on `device` (t lives there), or None; probed once per device."""
    if device not in _DIAGNOSED:
        _DIAGNOSED[device] = _diagnose(t, device)
    return _DIAGNOSED[device]


def forget_diagnoses() -> None:
    """Probe again on the next call (after the environment changed, and in tests)."""
    _DIAGNOSED.clear()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in str(text).split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _diagnose(t: paddle.Tensor, device: int) -> str | None:
    try:
        import triton
    except Exception as exc:
        return f"Triton cannot be imported ({_first_line(exc)}); install triton>=3.5,<3.10"
    lo, hi = TRITON_RANGE
    if not lo <= _version(triton.__version__) < hi:
        return (f"Triton/Paddle version mismatch: Triton {triton.__version__} is outside the supported range "
                f">=3.5,<3.10")
    pv = paddle.__version__
    if pv != "0.0.0" and _version(pv) < MIN_PADDLE:       # 0.0.0 = a develop build
        return f"Triton/Paddle version mismatch: Paddle {pv} is older than 3.2 (install paddlepaddle-gpu>=3.2)"
    if not _libcuda_loads():
        return (f"no libcuda: {' / '.join(LIBCUDA_NAMES)} cannot be loaded (install the NVIDIA driver or put "
                f"it on the loader path)")
    cap = tuple(int(x) for x in paddle.device.cuda.get_device_capability(device))
    if cap < MIN_CAPABILITY:
        return f"gpu:{device} has compute capability {cap[0]}.{cap[1]}; the kernels need 8.0 (Ampere) or newer"
    try:
        wrote = _first_launch(t)
    except Exception as exc:
        return f"driver error at first launch ({_first_line(exc)})"
    if wrote != 1:
        return f"driver error at first launch (a one-element test kernel wrote {wrote}, expected 1)"
    return None


def _libcuda_loads() -> bool:
    for name in LIBCUDA_NAMES:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


_PROBE = []


def _probe_kernel():
    # a launch-path probe, not a PSA kernel: compiled once, writes 1 into a one-element buffer
    if not _PROBE:
        import triton
        import triton.language as tl

        @triton.jit
        def _psa_launch_probe_kernel(Out):
            tl.store(Out, 1)

        _PROBE.append(_psa_launch_probe_kernel)
    return _PROBE[0]


def _first_launch(t: paddle.Tensor) -> int:
    """Compile and launch the probe on t's device and stream through the Paddle driver; the value it wrote."""
    buf = paddle.zeros([1], dtype="int32")
    if not t.place.is_cpu_place():
        buf = buf.to(t.place)
    with launch_scope(t):
        _probe_kernel()[(1,)](buf)
    return int(buf.numpy().reshape(-1)[0])
