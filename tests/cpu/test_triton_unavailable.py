"""When Triton cannot launch on a Paddle GPU (issue 8, item 3), simulated on CPU.

Each cause is produced the way it shows on a real machine (a failing `libcuda` load, a pre-Ampere capability,
an out-of-range Triton or Paddle version, an error raised by the first launch); the tensor is declared to be
on gpu:0 through `dispatch.gpu_device`, the one place that reads a tensor's GPU index.
"""
import ctypes
import json
import logging
import os
import sys

import numpy as np
import paddle
import pytest

from paddlemix_psa import psa_attention
from paddlemix_psa.config import AttentionConfig
from paddlemix_psa.integrations import qwen2_5_vl as policy
from paddlemix_psa.ops import _launch, dispatch
from paddlemix_psa.ops._launch import TritonCannotLaunch
from paddlemix_psa.statistics import REGISTRY

triton = pytest.importorskip("triton")
_real_cdll = ctypes.CDLL


def _cdll_without_libcuda(name, *args, **kwargs):
    if name is not None and "libcuda" in str(name):
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")
    return _real_cdll(name, *args, **kwargs)


@pytest.fixture
def on_gpu0(monkeypatch):
    """A healthy gpu:0 (libcuda loads, capability 9.0, the first launch writes 1) that each test then breaks."""
    monkeypatch.delenv("PADDLEMIX_PSA_BACKEND", raising=False)
    monkeypatch.delenv("PADDLEMIX_PSA_STRICT", raising=False)
    monkeypatch.setattr(dispatch, "gpu_device", lambda q: 0)
    monkeypatch.setattr(_launch.ctypes, "CDLL", lambda name, *a, **k: object())
    monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda dev=0: (9, 0))
    monkeypatch.setattr(_launch, "_first_launch", lambda t: 1)
    _launch.forget_diagnoses()
    REGISTRY.reset()
    yield monkeypatch
    _launch.forget_diagnoses()


REAL_FIRST_LAUNCH = _launch._first_launch


def _raising_scope(t):
    raise RuntimeError("Triton Error [CUDA]: device kernel image is invalid\n(more driver detail)")


CAUSES = {
    "no_libcuda": (lambda mp: mp.setattr(_launch.ctypes, "CDLL", _cdll_without_libcuda), "no libcuda"),
    "capability": (lambda mp: mp.setattr(paddle.device.cuda, "get_device_capability", lambda dev=0: (7, 5)),
                   "compute capability 7.5; the kernels need 8.0"),
    "triton_version": (lambda mp: mp.setattr(triton, "__version__", "3.4.0"),
                       "version mismatch: Triton 3.4.0 is outside the supported range"),
    "triton_missing": (lambda mp: mp.setitem(sys.modules, "triton", None), "Triton cannot be imported"),
    "paddle_version": (lambda mp: mp.setattr(paddle, "__version__", "3.1.1"),
                       "version mismatch: Paddle 3.1.1 is older than 3.2"),
    "first_launch": (lambda mp: (mp.setattr(_launch, "_first_launch", REAL_FIRST_LAUNCH),   # the real probe
                                 mp.setattr(_launch, "launch_scope", _raising_scope)),       # a failing driver
                     "driver error at first launch (RuntimeError: Triton Error [CUDA]: device kernel image"),
}


def _qkv(L=64, dtype="float16"):
    rng = np.random.default_rng(0)
    return [paddle.to_tensor(rng.standard_normal((1, 2, L, 64)).astype("float32")).astype(dtype) for _ in range(3)]


def _break(on_gpu0, cause):
    CAUSES[cause][0](on_gpu0)


@pytest.mark.parametrize("cause", sorted(CAUSES))
def test_direct_call_raises_one_line_naming_cause_and_way_out(on_gpu0, cause):
    _break(on_gpu0, cause)
    q, k, v = _qkv()
    with pytest.raises(TritonCannotLaunch) as info:
        psa_attention(q, k, v)
    msg = str(info.value)
    assert "\n" not in msg
    assert CAUSES[cause][1] in msg
    assert msg.startswith("paddlemix_psa: the Triton kernels cannot launch on gpu:0: ")
    assert "PADDLEMIX_PSA_BACKEND=reference" in msg and "dense attn_implementation" in msg
    assert not REGISTRY.backends and not REGISTRY.fallbacks          # nothing ran, least of all the reference


def test_healthy_gpu_picks_triton(on_gpu0):
    assert dispatch.select_backend(_qkv()[0]) == "triton"


def test_diagnosis_runs_once_per_device(on_gpu0):
    calls = []
    on_gpu0.setattr(paddle.device.cuda, "get_device_capability", lambda dev=0: calls.append(dev) or (7, 0))
    q = _qkv()[0]
    for _ in range(3):
        with pytest.raises(TritonCannotLaunch):
            dispatch.select_backend(q)
    assert calls == [0]


def test_first_launch_that_writes_nothing_is_a_driver_error(on_gpu0):
    on_gpu0.setattr(_launch, "_first_launch", lambda t: 0)
    with pytest.raises(TritonCannotLaunch, match=r"driver error at first launch \(a one-element test kernel "
                                                 r"wrote 0, expected 1\)"):
        dispatch.select_backend(_qkv()[0])


def test_reference_backend_is_the_explicit_way_out(on_gpu0):
    _break(on_gpu0, "capability")
    on_gpu0.setenv("PADDLEMIX_PSA_BACKEND", "reference")
    q, k, v = _qkv(dtype="float32")
    out, stats = psa_attention(q, k, v, config=AttentionConfig(query_block=32, key_block=32), return_stats=True)
    assert stats.backend == "reference" and list(out.shape) == [1, 2, 64, 64]
    assert dispatch.triton_cannot_launch(q) is None                 # the reference was asked for: no probe


# ------------------------------------------------------------------------------ inside a host model
@pytest.fixture(scope="module")
def text_attention():
    pytest.importorskip("paddleformers")
    modeling = pytest.importorskip("paddleformers.transformers.qwen2_5_vl.modeling")
    from paddleformers.transformers.qwen2_5_vl.configuration import Qwen2_5_VLConfig

    import paddlemix_psa.integrations as integ

    integ.register("paddleformers")
    with open(os.path.join(os.path.dirname(integ.__file__), "..", "data", "tiny_qwen2_5_vl.json")) as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    paddle.seed(0)
    model = modeling.Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**cfg), attn_implementation="psa",
                                                        psa_config={"min_seq_len": 0})
    model.eval()
    return model.model.language_model.layers[0].self_attn


def _host_call(module, L=80):
    from paddlemix_psa.integrations import paddleformers as pfm

    rng = np.random.default_rng(1)
    q, k, v = (paddle.to_tensor(rng.standard_normal(s).astype("float32"))
               for s in ((1, 4, L, 64), (1, 2, L, 64), (1, 2, L, 64)))
    return pfm.psa_attention_forward(module, q, k, v, scaling=0.125)[0], (q, k, v)


@pytest.mark.parametrize("cause", ["no_libcuda", "first_launch"])
def test_host_model_counts_unsupported_triton_and_runs_host_dense(on_gpu0, text_attention, caplog, cause):
    from paddleformers.nn.attention.interface import AttentionInterface

    _break(on_gpu0, cause)
    text_attention.__dict__.pop(policy.STATS_ATTR, None)
    with caplog.at_level(logging.WARNING, logger="paddlemix_psa"):
        out, (q, k, v) = _host_call(text_attention)
        _host_call(text_attention)
    dense, _ = AttentionInterface._global_mapping["sdpa"](text_attention, q, k, v, scaling=0.125)
    assert float((out - dense).abs().max()) == 0.0                  # the host's dense attention, unchanged
    assert REGISTRY.fallbacks == {"unsupported:triton": 2}
    assert policy.layer_stats(text_attention).fallbacks == {"unsupported:triton": 2}
    assert not REGISTRY.backends                                    # PSA (and so the reference) never ran
    logged = [r.getMessage() for r in caplog.records if "unsupported:triton" in r.getMessage()]
    assert len(logged) == 1 and CAUSES[cause][1] in logged[0]


def test_host_model_strict_mode_raises(on_gpu0, text_attention):
    _break(on_gpu0, "capability")
    on_gpu0.setenv("PADDLEMIX_PSA_STRICT", "1")
    with pytest.raises(RuntimeError, match=r"unexpected dense fallback 'unsupported:triton'.*capability 7\.5"):
        _host_call(text_attention)
