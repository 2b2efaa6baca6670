"""The Triton path's host-side logit bound (docs/ALGORITHM.md §11 pitfall 13): a `scale` whose fp32 logits cannot
be represented is rejected before any launch, with the limit named (no device sync is needed for the check)."""
import re

import paddle
import pytest

from paddlemix_psa import AttentionConfig, build_level_map, psa_attention, psa_attention_with_map


@pytest.mark.parametrize("dtype,scale", [("float16", 1e30), ("float32", 1e38)])
def test_unrepresentable_scale_is_rejected_on_the_triton_path(monkeypatch, dtype, scale):
    monkeypatch.setenv("PADDLEMIX_PSA_BACKEND", "triton")
    q, k, v = (paddle.randn([1, 2, 64, 64]).astype(dtype) for _ in range(3))
    expected = re.escape(f"scale={scale:g} is invalid for {dtype} inputs on the Triton path") + ".*limit"
    with pytest.raises(ValueError, match=expected):
        psa_attention(q, k, v, scale=scale)
    cfg = AttentionConfig(query_block=64, key_block=32, scale=scale)
    with pytest.raises(ValueError, match="on the Triton path"):
        build_level_map(q, k, cfg)
    level_map = paddle.ones([1, 2, 1, 2], dtype="int8")
    with pytest.raises(ValueError, match="on the Triton path"):
        psa_attention_with_map(q, k, v, level_map, config=AttentionConfig(query_block=64, key_block=32),
                               scale=scale)
