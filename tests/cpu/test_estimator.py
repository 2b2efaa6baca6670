"""XAttention block scores and the similarity cap against the fp64 oracle (T5, T7 on CPU)."""
import numpy as np
import paddle
import pytest

import oracle
from paddlemix_psa.reference import similarity_cap, xattn_block_scores

from _util import pt, qkv


@pytest.mark.parametrize("causal,Lq,Lk,qb,kb,S,G", [
    (True, 256, 256, 64, 32, 16, 1),
    (True, 100, 333, 128, 32, 16, 7),     # chunk with off > 0, ragged both ends
    (True, 77, 77, 32, 64, 8, 2),         # query_block < key_block
    (False, 150, 90, 64, 64, 4, 2),
    (False, 31, 200, 32, 16, 2, 1),
])
def test_scores_match_oracle(rng, causal, Lq, Lk, qb, kb, S, G):
    q, k, _ = qkv(rng, 2, 2 * G, 2, Lq, Lk, 64)
    want = oracle.xattn_scores(q, k, query_block=qb, key_block=kb, stride=S, causal=causal)
    got = xattn_block_scores(*pt(q, k), query_block=qb, key_block=kb, stride=S, causal=causal).numpy()
    assert got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()
    # each row sums to its number of valid reshaped queries
    nq = -(-Lq // qb)
    valid_a = [sum(1 for a in range(i * qb // S, (i + 1) * qb // S) if a * S < Lq) for i in range(nq)]
    np.testing.assert_allclose(got.sum(-1), np.broadcast_to(valid_a, got.shape[:-1]), rtol=1e-4)
    if causal:   # upper blocks are exactly zero
        for i in range(nq):
            J = oracle.last_valid_block(i, Lq, Lk, qb, kb, True)
            assert (got[:, :, i, J + 1:] == 0).all()


def test_per_kv_group_is_mean_of_head_scores(rng):
    from paddlemix_psa.ops.attention import _level_map_ref, _Timer
    from paddlemix_psa import AttentionConfig
    q, k, _ = qkv(rng, 1, 4, 2, 128, 128, 64)
    tq, tk = pt(q, k)
    per_head = xattn_block_scores(tq, tk, query_block=32, key_block=32, stride=16).numpy()
    cfg = AttentionConfig(query_block=32, key_block=32, gqa_mask="per_kv_group", sim_cap=False,
                          dense_tail_tokens=0, force_sink=False)
    M = _level_map_ref(tq, tk, cfg, True, None, _Timer(False, False)).level_map.numpy()
    want, _ = oracle.level_map(per_head.reshape(1, 2, 2, 4, 4).mean(2), Lq=128, Lk=128, query_block=32,
                               key_block=32, dense_tail_tokens=0, force_sink=False)
    assert M.shape == (1, 2, 4, 4) and (M == want).all()


@pytest.mark.parametrize("Lk,kb", [(256, 32), (200, 64), (20, 32), (133, 16), (7, 16)])
def test_similarity_cap_matches_oracle(rng, Lk, kb):
    # smooth keys so every cap level occurs; the tail block and Lk < key_block are included
    base = rng.standard_normal((2, 2, 1, 64))
    k = base + np.cumsum(rng.standard_normal((2, 2, Lk, 64)), axis=2) * rng.uniform(0.02, 0.4)
    want = oracle.similarity_cap(k, key_block=kb)
    got = similarity_cap(pt(k), kb).numpy()
    assert (got == want).all()
