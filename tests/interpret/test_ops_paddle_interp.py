"""The Paddle ops layer driving the Triton kernels on Paddle CPU tensors (interpreter + host views).

This is the path `psa_attention` takes on a Paddle GPU tensor, minus the device: dispatch, allocation through
Paddle, host-view wrapping, the plan/run split and the counters. Compared with the pure-Paddle reference.
"""
import numpy as np
import paddle
import pytest

from paddlemix_psa import AttentionConfig, build_level_map, psa_attention, psa_attention_with_map
from paddlemix_psa.synthetic import structured_qkv


@pytest.fixture
def triton_backend(monkeypatch):
    monkeypatch.setenv("PADDLEMIX_PSA_BACKEND", "triton")


def _inputs(L, Hq, Hkv, D, dtype, seed, layout):
    q, k, v = (paddle.to_tensor(x).astype(dtype) for x in structured_qkv(L, q_heads=Hq, kv_heads=Hkv,
                                                                         head_dim=D, seed=seed))
    if layout == "BSHD":
        q, k, v = (t.transpose([0, 2, 1, 3]) for t in (q, k, v))
    return q, k, v


def _reference(monkeypatch, fn):
    monkeypatch.setenv("PADDLEMIX_PSA_BACKEND", "reference")
    try:
        return fn()
    finally:
        monkeypatch.setenv("PADDLEMIX_PSA_BACKEND", "triton")


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float16", 5e-3)])
@pytest.mark.parametrize("layout", ["BHSD", "BSHD"])
def test_psa_attention_kernels_match_reference(monkeypatch, triton_backend, dtype, tol, layout):
    cfg = AttentionConfig(query_block=64, key_block=32, dense_tail_tokens=64)
    q, k, v = _inputs(260, 4, 2, 64, dtype, seed=len(layout) + len(dtype), layout=layout)
    out, stats = psa_attention(q, k, v, config=cfg, layout=layout, return_stats=True)
    ref, ref_stats = _reference(monkeypatch, lambda: psa_attention(q, k, v, config=cfg, layout=layout,
                                                                   return_stats=True))
    assert stats.backend == "triton" and ref_stats.backend == "reference"
    assert out.dtype == q.dtype and list(out.shape) == list(q.shape)
    assert stats.histogram == ref_stats.histogram            # same level map (fp32 scores both ways)
    assert stats.forced == ref_stats.forced
    a, b = out.astype("float64").numpy(), ref.astype("float64").numpy()
    assert np.linalg.norm(a - b) / np.linalg.norm(b) <= tol
    assert {"estimate_ms", "mask_ms", "pool_ms", "attention_ms"} <= set(stats.times)


def test_plan_run_split_and_gqa_group_masks(monkeypatch, triton_backend):
    cfg = AttentionConfig(query_block=32, key_block=16, dense_tail_tokens=0, gqa_mask="per_kv_group")
    q, k, v = _inputs(150, 6, 2, 80, "float32", seed=3, layout="BHSD")
    M = build_level_map(q, k, cfg)
    assert M.dtype == paddle.int8 and list(M.shape) == [1, 2, 5, 10]
    M_ref = _reference(monkeypatch, lambda: build_level_map(q, k, cfg))
    assert (M.numpy() == M_ref.numpy()).all()
    # a caller-edited map with every level, including pooled diagonal blocks
    edited = M.numpy()
    edited[0, 0, 4, :] = np.array([8, 4, 2, 1, 0, 8, 4, 2, 8, 4], np.int8)
    edited = paddle.to_tensor(edited)
    out = psa_attention_with_map(q, k, v, edited, config=cfg)
    ref = _reference(monkeypatch, lambda: psa_attention_with_map(q, k, v, edited, config=cfg))
    assert float((out - ref).abs().max()) <= 1e-4


def test_chunked_prefill_offset(monkeypatch, triton_backend):
    """Lq < Lk: bottom-right alignment through the whole kernel path."""
    cfg = AttentionConfig(query_block=32, key_block=32, dense_tail_tokens=32)
    q, k, v = _inputs(200, 2, 1, 64, "float32", seed=5, layout="BHSD")
    q = q[:, :, -70:]
    out = psa_attention(q, k, v, config=cfg)
    ref = _reference(monkeypatch, lambda: psa_attention(q, k, v, config=cfg))
    assert float((out - ref).abs().max()) <= 1e-4
