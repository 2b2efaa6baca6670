"""The pure-Paddle reference against the float64 brute-force oracle (tests/oracle.py)."""
import math

import numpy as np
import paddle
import pytest

import oracle
from paddlemix_psa import AttentionConfig, psa_attention, psa_attention_with_map
from paddlemix_psa.reference import dense_attention_ref, psa_attention_ref

from _util import n_blocks, pt, qkv, random_level_map, rel_l2

CASES = [  # (causal, Hq, Hkv, Lq, Lk, key_block, query_block, D)
    (True, 7, 1, 150, 150, 32, 64, 64),
    (True, 2, 2, 77, 300, 64, 32, 80),
    (True, 4, 2, 129, 200, 128, 128, 96),
    (True, 2, 1, 45, 333, 16, 32, 128),
    (False, 7, 1, 100, 173, 32, 64, 64),
    (False, 2, 2, 140, 60, 64, 128, 64),
    (False, 2, 1, 33, 257, 128, 32, 80),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "causal{}-G{}-Lq{}-Lk{}-kb{}-qb{}-D{}".format(
    c[0], c[1] // c[2], c[3], c[4], c[5], c[6], c[7]))
@pytest.mark.parametrize("layout", ["BHSD", "BSHD"])
def test_reference_matches_oracle_on_random_level_maps(rng, case, layout):
    causal, Hq, Hkv, Lq, Lk, kb, qb, D = case
    q, k, v = qkv(rng, 2, Hq, Hkv, Lq, Lk, D)
    M = random_level_map(rng, (2, Hq, n_blocks(Lq, qb), n_blocks(Lk, kb)))
    want = oracle.psa_attention(q, k, v, M, query_block=qb, key_block=kb, causal=causal)
    cfg = AttentionConfig(query_block=qb, key_block=kb, xattn_stride=16)
    tq, tk, tv = pt(q, k, v)
    if layout == "BSHD":
        tq, tk, tv = (t.transpose([0, 2, 1, 3]) for t in (tq, tk, tv))
    got = psa_attention_with_map(tq, tk, tv, paddle.to_tensor(M), config=cfg, causal=causal, layout=layout)
    if layout == "BSHD":
        got = got.transpose([0, 2, 1, 3])
    assert rel_l2(got.numpy(), want) <= 1e-5
    assert set(np.unique(M)) == {0, 1, 2, 4, 8}


@pytest.mark.parametrize("gqa_mask", ["per_head", "per_kv_group"])
def test_per_kv_group_maps_are_shared_by_the_group(rng, gqa_mask):
    q, k, v = qkv(rng, 1, 6, 2, 90, 90, 64)
    H_m = 6 if gqa_mask == "per_head" else 2
    M = random_level_map(rng, (1, H_m, 3, 3))
    want = oracle.psa_attention(q, k, v, M, query_block=32, key_block=32, gqa_mask=gqa_mask)
    got = psa_attention_ref(*pt(q, k, v), paddle.to_tensor(M), query_block=32, key_block=32, gqa_mask=gqa_mask)
    assert rel_l2(got.numpy(), want) <= 1e-5


def _copy_reference(q, k, v, M, qb, kb, causal):
    """docs/ALGORITHM.md §4.3(b): dense attention where each kept pooled group is replaced by c copies of its mean."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G, off, out = Hq // Hkv, Lk - Lq, np.zeros_like(q)
    for b in range(B):
        for h in range(Hq):
            for r in range(Lq):
                i, t = r // qb, r + off
                keys, vals = [], []
                for j in range(n_blocks(Lk, kb)):
                    p = int(M[b, h, i, j])
                    J = oracle.last_valid_block(i, Lq, Lk, qb, kb, causal)
                    if p == 0 or j > J:
                        continue
                    for lo in range(j * kb, min((j + 1) * kb, Lk), p):
                        hi = min(lo + p, Lk)
                        if causal and hi - 1 > t:
                            continue
                        kbar, vbar = k[b, h // G, lo:hi].mean(0), v[b, h // G, lo:hi].mean(0)
                        keys += [kbar] * (hi - lo)
                        vals += [vbar] * (hi - lo)
                if keys:
                    s = np.stack(keys) @ q[b, h, r] / math.sqrt(D)
                    w = np.exp(s - s.max())
                    out[b, h, r] = (w / w.sum()) @ np.stack(vals)
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_two_independent_oracles_agree(rng, causal):
    """The brute-force oracle (bias ln c) and the copy oracle (no bias) agree to 1e-10 (T2)."""
    q, k, v = qkv(rng, 1, 2, 1, 40, 75, 64)
    M = random_level_map(rng, (1, 2, 3, 5))
    M[0, 0, 2, 4] = 8        # a pooled diagonal block: exercises the conservative causal rule
    a = oracle.psa_attention(q, k, v, M, query_block=16, key_block=16, causal=causal)
    b = _copy_reference(q, k, v, M, 16, 16, causal)
    assert np.abs(a - b).max() <= 1e-10


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Lq,Lk", [(1, 1), (17, 17), (127, 127), (129, 129), (60, 300)])
def test_all_level_one_equals_dense(rng, causal, Lq, Lk):
    q, k, v = qkv(rng, 1, 7, 1, Lq, Lk, 64)
    M = np.ones((1, 7, n_blocks(Lq, 32), n_blocks(Lk, 32)), np.int8)
    tq, tk, tv = pt(q, k, v)
    got = psa_attention_ref(tq, tk, tv, paddle.to_tensor(M), query_block=32, key_block=32, causal=causal)
    dense = dense_attention_ref(tq, tk, tv, causal=causal)
    assert float((got - dense).abs().max()) <= 2e-6
    assert rel_l2(dense.numpy(), oracle.dense_attention(q, k, v, causal=causal)) <= 1e-6


def test_end_to_end_all_level_one_config_equals_dense(rng):
    q, k, v = pt(*qkv(rng, 1, 4, 2, 300, 300, 64))
    cfg = AttentionConfig(query_block=64, key_block=32, mask_ratios={1: (0.0, 1.0)})
    out, stats = psa_attention(q, k, v, config=cfg, return_stats=True)
    assert float((out - dense_attention_ref(q, k, v)).abs().max()) <= 2e-6
    assert stats.density == 1.0 and stats.histogram["0"] == 0


def test_constant_groups_give_dense_result(rng):
    """docs/ALGORITHM.md §4.3(c): K, V constant on aligned groups of 8 -> any non-skipping map equals dense."""
    q = rng.standard_normal((1, 2, 64, 64))
    k = np.repeat(rng.standard_normal((1, 1, 256 // 8, 64)), 8, axis=2)
    v = np.repeat(rng.standard_normal((1, 1, 256 // 8, 64)), 8, axis=2)
    M = random_level_map(rng, (1, 2, 2, 8), levels=(1, 2, 4, 8))
    tq, tk, tv = pt(q, k, v, dtype="float64")
    got = psa_attention_ref(tq, tk, tv, paddle.to_tensor(M), query_block=32, key_block=32, causal=False)
    assert np.abs(got.numpy() - oracle.dense_attention(q, k, v, causal=False)).max() <= 1e-12


def test_missing_bias_would_be_caught(rng):
    """Pitfall 1: the ln(count) bias matters; a tail group of c < p keys gets ln c, not ln p."""
    q, k, v = qkv(rng, 1, 1, 1, 20, 100, 64)        # Lk = 100: the last 8-group holds 4 keys
    M = np.full((1, 1, 1, 1), 8, np.int8)
    got = psa_attention_ref(*pt(q, k, v, dtype="float64"), paddle.to_tensor(M), query_block=32,
                            key_block=128, causal=False).numpy()
    assert np.abs(got - oracle.psa_attention(q, k, v, M, query_block=32, key_block=128, causal=False)).max() < 1e-12
    kbar, vbar = oracle.pool_mean(k[0, 0], 8)[0], oracle.pool_mean(v[0, 0], 8)[0]
    for bias in (np.zeros(13), np.full(13, math.log(8))):          # no bias / ln p everywhere
        s = q[0, 0] @ kbar.T / 8 + bias
        w = np.exp(s - s.max(1, keepdims=True))
        wrong = (w / w.sum(1, keepdims=True)) @ vbar
        if not np.allclose(bias, math.log(8)):                    # uniform bias cancels in softmax
            assert np.abs(got[0, 0] - wrong).max() > 1e-3
    s = q[0, 0] @ kbar.T / 8 + np.log(np.r_[np.full(12, 8.0), 4.0])
    w = np.exp(s - s.max(1, keepdims=True))
    assert np.abs(got[0, 0] - (w / w.sum(1, keepdims=True)) @ vbar).max() < 1e-12


def test_no_nan_for_empty_rows_and_poisoned_memory(rng):
    """T4: all-zero map gives 0; NaN beyond Lk (a view into a larger buffer) never leaks."""
    q, k, v = qkv(rng, 1, 2, 1, 64, 96, 64)
    tq, tk, tv = pt(q, k, v)
    zero = paddle.zeros([1, 2, 2, 3], "int8")
    out = psa_attention_ref(tq, tk, tv, zero, query_block=32, key_block=32)
    assert float(out.abs().max()) == 0.0
    big_k = paddle.concat([tk, paddle.full([1, 1, 40, 64], float("nan"))], axis=2)
    big_v = paddle.concat([tv, paddle.full([1, 1, 40, 64], float("nan"))], axis=2)
    M = paddle.to_tensor(random_level_map(rng, (1, 2, 2, 3)))
    out = psa_attention_ref(tq, big_k[:, :, :96], big_v[:, :, :96], M, query_block=32, key_block=32)
    assert bool(paddle.isfinite(out).all())
    cfg = AttentionConfig(query_block=32, key_block=32, xattn_stride=16)
    out = psa_attention(tq, big_k[:, :, :96], big_v[:, :, :96], config=cfg)
    assert bool(paddle.isfinite(out).all())


def test_small_pooled_blocks_with_loud_early_keys(rng):
    """T3: key_block 16/32/64 with only levels 4 and 8; early keys are huge so a stray lane shows."""
    for kb in (16, 32, 64):
        q, k, v = qkv(rng, 1, 2, 1, 64, 256, 64)
        k[:, :, :8] *= 50.0
        v[:, :, :8] *= 50.0
        M = random_level_map(rng, (1, 2, 2, 256 // kb), levels=(4, 8))
        want = oracle.psa_attention(q, k, v, M, query_block=32, key_block=kb, causal=True)
        got = psa_attention_ref(*pt(q, k, v), paddle.to_tensor(M), query_block=32, key_block=kb)
        assert rel_l2(got.numpy(), want) <= 1e-5
