"""Layer-3 glue tests for the Paddle-aware Triton driver and host views (docs/LAUNCH.md §3, §6), no GPU."""
import numpy as np
import paddle
import pytest

triton = pytest.importorskip("triton")

from paddlemix_psa.ops import _driver  # noqa: E402
from paddlemix_psa.ops._hostview import PaddleHostView  # noqa: E402
from paddlemix_psa.ops._launch import kernel_args, launch_scope  # noqa: E402


def test_triton_internals_we_rely_on_still_exist():
    """Version guard: the names the driver swap uses (Triton 3.5-3.9)."""
    from triton.backends.driver import DriverBase
    from triton.backends.nvidia.driver import CudaDriver, CudaLauncher, CudaUtils  # noqa: F401
    assert DriverBase.__abstractmethods__ == {"is_active", "map_python_to_cpp_type", "get_current_target",
                                              "get_active_torch_device", "get_benchmarker"}
    cfg = triton.runtime.driver
    assert hasattr(cfg, "_active") and hasattr(cfg, "set_active")


@pytest.fixture
def fake_gpu(monkeypatch):
    """A Paddle that claims CUDA, with a recorded raw-stream getter and CudaUtils stubbed out."""
    import triton.backends.nvidia.driver as nv
    monkeypatch.setattr(nv, "CudaUtils", lambda: "utils-stub")
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    streams = []
    monkeypatch.setattr(paddle.base.libpaddle, "_get_current_raw_stream",
                        lambda dev: streams.append(dev) or 1000 + dev, raising=False)
    monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda dev=0: (9, 0))
    monkeypatch.setattr(paddle.device, "get_device", lambda: "gpu:1")
    _driver._driver_singleton.cache_clear()
    yield streams
    _driver._driver_singleton.cache_clear()


def test_scope_installs_paddle_driver_and_restores_none(fake_gpu):
    cfg = triton.runtime.driver
    saved = cfg._active
    cfg._active = None
    try:
        with _driver.paddle_launch_scope(1) as drv:
            assert cfg._active is drv
            assert drv.get_current_device() == 1
            assert drv.get_current_stream(1) == 1001 and drv.get_current_stream() == 1001
            target = drv.get_current_target()
            assert (target.backend, target.arch, target.warp_size) == ("cuda", 90, 32)
            assert drv.get_device_interface() is paddle.device.cuda
        assert cfg._active is None
    finally:
        cfg._active = saved


def test_scope_restores_a_previous_driver_even_on_error(fake_gpu):
    cfg = triton.runtime.driver
    saved = cfg._active
    sentinel = object()
    cfg._active = sentinel
    try:
        with pytest.raises(KeyError):
            with _driver.paddle_launch_scope(1):
                raise KeyError("boom")
        assert cfg._active is sentinel
    finally:
        cfg._active = saved


def test_scope_refuses_a_device_other_than_paddles_current(fake_gpu):
    with pytest.raises(RuntimeError, match=r"gpu:0 .*current device is gpu:1"):
        with _driver.paddle_launch_scope(0):
            pass


def test_stream_getter_falls_back_to_the_stream_object(monkeypatch):
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    monkeypatch.delattr(paddle.base.libpaddle, "_get_current_raw_stream", raising=False)

    class _S:
        cuda_stream = 77
    monkeypatch.setattr(paddle.device.cuda, "current_stream", lambda dev: _S(), raising=False)
    assert _driver._paddle_stream_getter()(0) == 77


def test_cpu_build_never_touches_the_raw_stream(monkeypatch):
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: False)
    with pytest.raises(RuntimeError, match="paddlepaddle-gpu"):
        _driver._paddle_stream_getter()


def test_host_view_answers_the_interpreter_protocol():
    x = paddle.arange(24, dtype="float32").reshape([2, 3, 4])
    view = kernel_args(x)[0]
    assert isinstance(view, PaddleHostView)
    assert view.data_ptr() == x.data_ptr() and view.untyped_storage().data_ptr() == x.data_ptr()
    assert view.stride() == (12, 4, 1) and view.size() == (2, 3, 4) and view.storage_offset() == 0
    assert str(view.dtype).endswith("float32")
    col = x[:, :, 1:3]                                  # a strided view keeps its offset inside data_ptr
    v2 = kernel_args(col)[0]
    assert v2.data_ptr() in (col.data_ptr(),) and v2.shape == (2, 3, 2)
    other = v2.new_empty(1).set_(v2.untyped_storage(), 0, (2, 3, 2), v2.stride())
    assert other.data_ptr() == v2.data_ptr() and other.stride() == v2.stride()
    assert kernel_args(None) == [None]


def test_launch_scope_is_a_no_op_for_cpu_tensors():
    with launch_scope(paddle.zeros([1])):
        pass
    np.testing.assert_equal(paddle.zeros([2]).numpy(), [0, 0])
