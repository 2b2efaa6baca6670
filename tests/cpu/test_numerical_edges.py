"""Finite inputs never give NaN; sizes and positions are validated with errors that name the argument."""
import copy
import pickle
import types

import numpy as np
import paddle
import pytest

from paddlemix_psa import AttentionConfig, build_level_map, psa_attention, psa_attention_with_map
from paddlemix_psa.ops import _checks
from paddlemix_psa.reference import dense_attention_ref

DENSE = dict(query_block=64, key_block=32, mask_ratios={1: (0.0, 1.0)}, dense_tail_tokens=0)


@pytest.fixture
def qkv():
    paddle.seed(0)
    return tuple(paddle.randn([1, 2, 200, 64]) for _ in range(3))


def _fp64_dense(q, k, v, scale=None):
    return dense_attention_ref(*(t.astype("float64") for t in (q, k, v)), scale=scale).numpy()


@pytest.mark.parametrize("case", ["scale", "magnitude"])
def test_logits_beyond_fp32_stay_finite_and_correct(qkv, case):
    q, k, v = qkv
    scale = 1e38 if case == "scale" else None
    if case == "magnitude":
        q, k = q * 1e19, k * 1e19
    out = psa_attention(q, k, v, config=AttentionConfig(**DENSE), scale=scale)
    assert out.dtype == paddle.float32 and bool(paddle.isfinite(out).all())
    np.testing.assert_allclose(out.numpy(), _fp64_dense(q, k, v, scale), atol=1e-5)
    # the default sparse config too (estimator and similarity cap see the same magnitudes)
    sparse = psa_attention(q, k, v, scale=scale)
    assert bool(paddle.isfinite(sparse).all())


def test_with_map_and_level_map_paths_stay_finite(qkv):
    q, k, v = (t * 1e19 for t in qkv)
    cfg = AttentionConfig(query_block=64, key_block=32)
    level_map = build_level_map(q, k, cfg)
    assert set(np.unique(level_map.numpy())) <= {0, 1, 2, 4, 8}
    out = psa_attention_with_map(q, k, v, level_map, config=cfg)
    assert bool(paddle.isfinite(out).all())


def test_ordinary_inputs_stay_on_fp32(qkv):
    q, k, v = qkv
    assert _checks.reference_compute_dtype(q, k, v, 0.125) is None
    assert _checks.reference_compute_dtype(q, k, v, 1e38) == "float64"


def test_logits_beyond_fp64_are_rejected_with_the_limit(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match=r"beyond the float64 limit .*scale \* max\|q\| \* max\|k\|"):
        psa_attention(q, k, v, scale=1e306)


def test_kernel_scale_bound_is_host_side():
    _checks.check_scale_for_kernels(0.125, "float16", 128)
    _checks.check_scale_for_kernels(0.125, "bfloat16", 128)
    with pytest.raises(ValueError, match="scale=1e\\+30 is invalid for float16 inputs on the Triton path"):
        _checks.check_scale_for_kernels(1e30, "float16", 128)
    with pytest.raises(ValueError, match="bfloat16.*limit"):
        _checks.check_scale_for_kernels(1e38, "bfloat16", 128)


@pytest.mark.parametrize("value,exc,match", [
    (0, ValueError, r"prompt_end=0 is invalid: must be None or an int in \[1, 2147483647\]"),
    (-5, ValueError, "prompt_end=-5"),
    (2**100, ValueError, "prompt_end=1267650600228229401496703205376 is invalid"),
    ("12", TypeError, "prompt_end='12' is invalid"),
    (3.0, TypeError, "prompt_end=3.0 is invalid"),
    (True, TypeError, "prompt_end=True is invalid"),
])
def test_prompt_end_is_validated(qkv, value, exc, match):
    q, k, v = qkv
    with pytest.raises(exc, match=match):
        psa_attention(q, k, v, prompt_end=value)
    with pytest.raises(exc, match=match):
        build_level_map(q, k, AttentionConfig(), prompt_end=value)


def test_prompt_end_beyond_the_chunk_is_allowed(qkv):
    q, k, v = qkv
    cfg = AttentionConfig(query_block=64, key_block=32, dense_tail_tokens=64)
    far = build_level_map(q, k, cfg, prompt_end=np.int64(10_000))     # tail lies after this chunk
    near = build_level_map(q, k, cfg)
    assert int((far == 1).astype("int32").sum()) <= int((near == 1).astype("int32").sum())


@pytest.mark.parametrize("field", ["dense_tail_tokens", "min_seq_len"])
def test_token_counts_are_bounded(field):
    AttentionConfig(**{field: 2**31 - 1})
    with pytest.raises(ValueError, match=rf"AttentionConfig.{field}=.* must be an int in \[0, 2147483647\]"):
        AttentionConfig(**{field: 2**100})


def test_mask_ratios_is_read_only_and_round_trips():
    cfg = AttentionConfig()
    assert isinstance(cfg.mask_ratios, types.MappingProxyType)
    with pytest.raises(TypeError):
        cfg.mask_ratios[1] = (0.0, 1.0)
    with pytest.raises(AttributeError):
        cfg.mask_ratios.clear()
    assert AttentionConfig.from_dict(cfg.to_dict()) == cfg
    assert AttentionConfig.from_json(cfg.to_json()) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg and copy.deepcopy(cfg) is cfg
    assert hash(AttentionConfig(mask_ratios=dict(cfg.mask_ratios))) == hash(cfg)
