"""Public API: errors that name the argument, layouts, stats objects, the plan/run split."""
import numpy as np
import paddle
import pytest

import paddlemix_psa
from paddlemix_psa import AttentionConfig, PSAStats, build_level_map, psa_attention, psa_attention_with_map
from paddlemix_psa.statistics import REGISTRY

from _util import pt, qkv


@pytest.fixture
def small(rng):
    return pt(*qkv(rng, 1, 4, 2, 96, 96, 64))


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda q, k, v: (q.numpy(), k, v), TypeError, "q must be a paddle.Tensor"),
    (lambda q, k, v: (q[0], k, v), ValueError, r"q must be 4-D \(\[B, H, L, D\]"),
    (lambda q, k, v: (q, k[:, :1].tile([1, 3, 1, 1]), v[:, :1].tile([1, 3, 1, 1])), ValueError,
     "multiple of the key/value head count"),
    (lambda q, k, v: (q[..., :48], k[..., :48], v[..., :48]), ValueError, r"D=48 .*\[64, 80, 96, 128\]"),
    (lambda q, k, v: (q.astype("int32"), k, v), TypeError, "q.dtype=int32"),
    (lambda q, k, v: (q, k.astype("float64"), v), TypeError, "share one dtype"),
    (lambda q, k, v: (q, k, v[:, :, :50]), ValueError, "v shape"),
    (lambda q, k, v: (paddle.concat([q, q], axis=2), k, v), ValueError, "Lq <= Lk"),
])
def test_bad_inputs_name_the_argument(small, mutate, exc, match):
    with pytest.raises(exc, match=match):
        psa_attention(*mutate(*small))


def test_bad_layout_scale_and_config(small):
    with pytest.raises(ValueError, match=r"layout='BLHD' .*\['BHSD', 'BSHD'\]"):
        psa_attention(*small, layout="BLHD")
    with pytest.raises(ValueError, match="scale=-1"):
        psa_attention(*small, scale=-1.0)
    with pytest.raises(ValueError, match="AttentionConfig.key_block=24"):
        psa_attention(*small, config={"key_block": 24})


def test_level_map_granularity_is_checked(small):
    q, k, v = small
    cfg = AttentionConfig(query_block=32, key_block=32)
    with pytest.raises(ValueError, match=r"level_map shape \[1, 4, 1, 3\] .*\[1, 4, 3, 3\]"):
        psa_attention_with_map(q, k, v, paddle.ones([1, 4, 1, 3], "int8"), config=cfg)
    with pytest.raises(TypeError, match="int8"):
        psa_attention_with_map(q, k, v, paddle.ones([1, 4, 3, 3], "int32"), config=cfg)
    with pytest.raises(ValueError, match="values must be in"):
        psa_attention_with_map(q, k, v, paddle.full([1, 4, 3, 3], 3, "int8"), config=cfg)


def test_plan_then_run_equals_one_call(small):
    q, k, v = small
    cfg = AttentionConfig(query_block=32, key_block=16, dense_tail_tokens=16)
    M = build_level_map(q, k, cfg)
    assert M.dtype == paddle.int8 and list(M.shape) == [1, 4, 3, 6]
    a = psa_attention_with_map(q, k, v, M, config=cfg)
    b = psa_attention(q, k, v, config=cfg)
    assert float((a - b).abs().max()) == 0.0
    qs, ks = q.transpose([0, 2, 1, 3]), k.transpose([0, 2, 1, 3])
    assert (build_level_map(qs, ks, cfg, layout="BSHD").numpy() == M.numpy()).all()


def test_bshd_output_layout_and_dtype(small):
    q, k, v = (t.transpose([0, 2, 1, 3]) for t in small)
    out = psa_attention(q, k, v, layout="BSHD", config={"query_block": 32})
    assert list(out.shape) == [1, 96, 4, 64] and out.dtype == q.dtype
    ref = psa_attention(*small, config={"query_block": 32}).transpose([0, 2, 1, 3])
    assert float((out - ref).abs().max()) < 1e-6


def test_fp16_and_bf16_inputs_run_on_the_reference(small):
    for dt in ("float16", "bfloat16"):
        q, k, v = (t.astype(dt) for t in small)
        out = psa_attention(q, k, v, config={"query_block": 32})
        assert out.dtype == q.dtype and bool(paddle.isfinite(out.astype("float32")).all())


def test_stats_fields_and_process_registry(small):
    REGISTRY.reset()
    paddlemix_psa.enable_stats(True)
    try:
        out, s = psa_attention(*small, config={"query_block": 32, "dense_tail_tokens": 0}, return_stats=True)
        psa_attention(*small, config={"query_block": 32})
    finally:
        paddlemix_psa.enable_stats(False)
    assert isinstance(s, PSAStats)
    d = s.to_dict()
    for key in ("Lq", "Lk", "nq", "nk", "density", "sparsity", "histogram", "per_head_density", "forced",
                "times", "estimator_share", "backend", "config_fingerprint", "fallbacks"):
        assert key in d
    assert s.backend == "reference" and len(s.per_head_density) == 4
    assert 0 < s.density <= 1 and s.sparsity == pytest.approx(1 - s.density)
    assert set(s.times) == {"estimate_ms", "mask_ms", "attention_ms"} and 0 < s.estimator_share < 1
    agg = paddlemix_psa.stats()
    assert agg.calls == 2 and agg.backends == {"reference": 2}
    assert "density" in str(agg) and "levels" in str(agg)


def test_merge_is_valid_pair_weighted():
    a = PSAStats(valid_pairs=10, weighted_kept=5.0, call_densities=[0.5])
    b = PSAStats(valid_pairs=30, weighted_kept=3.0, call_densities=[0.1])
    m = PSAStats.merge([a, b])
    assert m.calls == 2 and m.density == pytest.approx(8 / 40) and m.mean_call_density == pytest.approx(0.3)


def test_strict_mode_turns_unexpected_fallbacks_into_errors(monkeypatch):
    monkeypatch.setenv("PADDLEMIX_PSA_STRICT", "1")
    with pytest.raises(RuntimeError, match="PADDLEMIX_PSA_STRICT"):
        REGISTRY.record_fallback("unsupported:test", expected=False)
    REGISTRY.record_fallback("decode", expected=True)          # expected reasons never raise
    assert REGISTRY.fallbacks["decode"] >= 1


def test_backend_variable_is_validated(monkeypatch, small):
    monkeypatch.setenv("PADDLEMIX_PSA_BACKEND", "cuda")
    with pytest.raises(ValueError, match=r"PADDLEMIX_PSA_BACKEND='cuda' .*\['auto', 'triton', 'reference'\]"):
        psa_attention(*small)
    monkeypatch.setenv("PADDLEMIX_PSA_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="cannot run here"):
        psa_attention(*small)


def test_import_is_cheap():
    import subprocess
    import sys
    code = "import sys, paddlemix_psa; print('paddle' in sys.modules, 'triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
