import json

import pytest

from paddlemix_psa import AttentionConfig
from paddlemix_psa.config import DEFAULT_MASK_RATIOS


def test_defaults_are_the_seed_readme():
    cfg = AttentionConfig()
    assert (cfg.query_block, cfg.key_block, cfg.mask_mode, cfg.xattn_stride) == (128, 32, "energybound", 16)
    assert dict(cfg.mask_ratios) == DEFAULT_MASK_RATIOS
    assert (cfg.dense_tail_tokens, cfg.force_sink, cfg.sim_cap, cfg.gqa_mask) == (512, True, True, "per_head")
    assert cfg.sim_thresholds == (0.75, 0.70, 0.70)
    assert cfg.levels_kept == (1, 2, 4)          # level 8 has the empty interval (0.9, 0.9)


def test_paper_preset():
    cfg = AttentionConfig.preset("paper")
    assert (cfg.query_block, cfg.key_block, cfg.xattn_stride) == (128, 128, 8)
    assert cfg.mask_ratios[1] == (0.0, 0.7) and cfg.mask_ratios[2] == (0.7, 0.8)
    with pytest.raises(ValueError, match="valid presets are"):
        AttentionConfig.preset("fast")


def test_frozen_and_hashable():
    cfg = AttentionConfig()
    with pytest.raises(Exception):
        cfg.query_block = 64
    assert hash(cfg) == hash(AttentionConfig()) and cfg == AttentionConfig()


def test_dict_and_json_round_trip():
    cfg = AttentionConfig(key_block=64, mask_mode="topk", sim_cap=False, scale=0.1,
                          mask_ratios={1: (0, .5), 2: (.5, .7), 0: (.7, 1)})
    assert AttentionConfig.from_dict(cfg.to_dict()) == cfg
    assert AttentionConfig.from_json(cfg.to_json()) == cfg
    # JSON keys are strings: a config.json entry must load
    assert AttentionConfig.from_dict(json.loads(cfg.to_json())).mask_ratios[2] == (0.5, 0.7)
    assert AttentionConfig.coerce(None) == AttentionConfig()
    assert AttentionConfig.coerce("paper") == AttentionConfig.preset("paper")
    assert AttentionConfig.coerce(cfg.to_json()) == cfg
    with pytest.raises(TypeError, match="psa_config"):
        AttentionConfig.coerce(3)
    with pytest.raises(ValueError, match="unknown field"):
        AttentionConfig.from_dict({"query_blok": 64})


@pytest.mark.parametrize("field,value,match", [
    ("query_block", 96, r"query_block=96 .*\[32, 64, 128\]"),
    ("query_block", True, "query_block"),
    ("key_block", 8, r"key_block=8 .*\[16, 32, 64, 128\]"),
    ("mask_mode", "thresholdbound", "thresholdbound.*not implemented"),
    ("mask_mode", "random", r"\['energybound', 'topk'\]"),
    ("gqa_mask", "shared", "per_head"),
    ("estimator", "sampled_max", "xattn"),
    ("xattn_stride", 12, "power of two"),
    ("xattn_stride", 64, "min\\(query_block, key_block\\)=32"),
    ("dense_tail_tokens", -1, r"int in \[0, 2147483647\]"),
    ("min_seq_len", 1.5, r"int in \[0, 2147483647\]"),
    ("force_sink", 1, "True or False"),
    ("sim_thresholds", (0.7, 0.7), "three cosines"),
    ("scale", 0.0, "finite real > 0"),
])
def test_field_errors_name_field_and_allowed_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        AttentionConfig(**{field: value})


@pytest.mark.parametrize("ratios,exc,match", [
    ([(0, 1)], TypeError, "mapping"),
    ({True: (0, 1)}, TypeError, "levels are ints"),
    ({3: (0, 1)}, TypeError, "levels are ints"),
    ({1: (0, "x")}, TypeError, r"mask_ratios\[1\]"),
    ({1: (0, float("nan")), 0: (0.5, 1)}, TypeError, "finite"),
    ({2: (0, 0.5), 0: (0.5, 1)}, ValueError, "level 1 is required"),
    ({1: (0, 0.6), 2: (0.7, 0.5), 0: (0.5, 1)}, ValueError, r"mask_ratios\[2\].*0 <= start <= end <= 1"),
    ({1: (0, 0.6), 2: (0.6, 0.8), 4: (0.85, 0.9), 0: (0.9, 1)}, ValueError,
     r"mask_ratios\[4\]=\(0.85, 0.9\): start must equal the end of level 2 \(0.8\)"),
    ({1: (0.1, 0.6), 0: (0.6, 1)}, ValueError, "must start at 0"),
    ({1: (0, 0.6), 2: (0.6, 0.9)}, ValueError, "must end at 1"),
])
def test_mask_ratio_rules(ratios, exc, match):
    with pytest.raises(exc, match=match):
        AttentionConfig(mask_ratios=ratios)


def test_mask_ratios_canonical_order_and_snapping():
    # insertion order is ignored; 0.1 + 0.2 snaps to 0.3
    cfg = AttentionConfig(mask_ratios={0: (0.3, 1.0), 2: (0.1, 0.1 + 0.2), 1: (0.0, 0.1)})
    assert list(cfg.mask_ratios) == [1, 2, 0]
    assert cfg.mask_ratios[0] == (cfg.mask_ratios[2][1], 1.0)
