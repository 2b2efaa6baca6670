"""Launch helpers: the right driver scope and argument form for where the tensors live."""
from __future__ import annotations

import contextlib

import paddle

from ._hostview import PaddleHostView


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
