"""Mask building (docs/ALGORITHM.md §7, §8), the index-list form, and density accounting (§9)."""
import math

import numpy as np
import paddle
import pytest
from hypothesis import given, settings, strategies as st

import oracle
from paddlemix_psa import AttentionConfig
from paddlemix_psa.reference import build_level_map_ref, level_histogram, level_map_to_lut

GOLDEN = [.06, .31, .02, .12, .06, .24, .14, .05]


def _row_map(scores_row, *, causal, **cfg_kw):
    """One query block against 8 key blocks of 32: non-causal (all valid, nothing forced) or causal row 7."""
    cfg = AttentionConfig(query_block=32, key_block=32, dense_tail_tokens=0, **cfg_kw)
    if causal:
        A = np.zeros((1, 1, 8, 8), np.float32)
        A[0, 0, 7] = scores_row
        M = build_level_map_ref(paddle.to_tensor(A), Lq=256, Lk=256, config=cfg, causal=True).level_map
        return M.numpy()[0, 0, 7].tolist()
    A = np.asarray(scores_row, np.float32).reshape(1, 1, 1, 8)
    res = build_level_map_ref(paddle.to_tensor(A), Lq=32, Lk=256, config=cfg, causal=False)
    return res.level_map.numpy()[0, 0, 0].tolist()


def test_golden_energybound_before_and_after_forcing():
    assert _row_map(GOLDEN, causal=False, force_sink=False) == [4, 1, 0, 4, 0, 1, 2, 0]
    # paper thresholds: j6 (E=.69 <= .7) stays at level 1
    assert _row_map(GOLDEN, causal=False, force_sink=False, mask_ratios=AttentionConfig.preset("paper").mask_ratios) \
        == [4, 1, 0, 4, 0, 1, 1, 0]
    assert _row_map(GOLDEN, causal=True) == [1, 1, 0, 4, 0, 1, 2, 1]           # sink j0, diagonal j7


def test_golden_similarity_cap_is_not_monotone():
    cfg = AttentionConfig(query_block=32, key_block=32, dense_tail_tokens=0)
    A = np.zeros((1, 1, 8, 8), np.float32)
    A[0, 0, 7] = GOLDEN
    cap = np.full((1, 1, 8), 8, np.int64)
    cap[0, 0, 3], cap[0, 0, 6] = 2, 4                   # j3: sim2 .80 > .75 only; j6: sim4 .71 > .70
    res = build_level_map_ref(paddle.to_tensor(A), Lq=256, Lk=256, config=cfg, causal=True,
                              sim_cap_levels=paddle.to_tensor(cap))
    row = res.level_map.numpy()[0, 0, 7]
    assert row.tolist() == [1, 1, 0, 2, 0, 1, 2, 1]
    assert oracle.density(res.level_map.numpy()[:, :, 7:, :], Lq=32, Lk=256, query_block=32, key_block=32)[0, 0] \
        == pytest.approx(5 / 8)


def test_golden_topk():
    assert _row_map(GOLDEN, causal=False, force_sink=False, mask_mode="topk") == [1, 1, 0, 1, 2, 1, 1, 4]
    assert _row_map(GOLDEN, causal=True, mask_mode="topk") == [1, 1, 0, 1, 2, 1, 1, 1]


def test_topk_gives_at_least_one_level_one_block():
    row = _row_map([.5, .3, .2, 0, 0, 0, 0, 0][:8], causal=False, force_sink=False, mask_mode="topk",
                   mask_ratios={1: (0, .1), 0: (.1, 1)})
    assert row.count(1) == 1 and row[0] == 1
    # n = 3 valid blocks (causal row 2 of 8x8 with 32-blocks): beta_1 = floor((100000*3+500000)/1e6) = 0 -> 1
    cfg = AttentionConfig(query_block=32, key_block=32, dense_tail_tokens=0, force_sink=False, mask_mode="topk",
                          mask_ratios={1: (0, .1), 0: (.1, 1)})
    A = np.random.default_rng(0).random((1, 1, 8, 8)).astype(np.float32)
    M = build_level_map_ref(paddle.to_tensor(A), Lq=256, Lk=256, config=cfg).level_map.numpy()
    assert all((M[0, 0, i, :i + 1] == 1).sum() >= 1 for i in range(8))


def test_crossing_block_goes_coarser_and_empty_level_stays_empty():
    # E = .5, .95, 1: the block crossing .6 lands in (.9, 1] -> skipped; level 8 (.9, .9) receives nothing
    row = _row_map([.5, .45, .05, 0, 0, 0, 0, 0], causal=False, force_sink=False)
    assert row == [1, 0, 0, 0, 0, 0, 0, 0]
    # the top block alone above e_1 is pooled (no forced rule applies in non-causal mode without a sink)
    row = _row_map([.7, .1, .1, .1, 0, 0, 0, 0], causal=False, force_sink=False)
    assert row[0] == 2


def test_thresholds_compared_in_fp32():
    # the cumulative energy of the first block is exactly 0.6 in fp32: 0.6 <= e_1 -> level 1, never rounded up
    row = _row_map([0.6, 0.4, 0, 0, 0, 0, 0, 0], causal=False, force_sink=False)
    assert row[0] == 1 and row[1] == 0


def test_ties_break_to_the_smaller_block_deterministically():
    rows = {tuple(_row_map([.25, .25, .25, .25, 0, 0, 0, 0], causal=False, force_sink=False)) for _ in range(3)}
    assert rows == {(1, 1, 2, 0, 0, 0, 0, 0)}


def test_degenerate_rows_are_dense_and_counted():
    cfg = AttentionConfig(query_block=32, key_block=32, dense_tail_tokens=0)
    A = np.zeros((1, 1, 1, 8), np.float32)
    res = build_level_map_ref(paddle.to_tensor(A), Lq=32, Lk=256, config=cfg, causal=False)
    assert res.level_map.numpy().tolist() == [[[[1] * 8]]] and res.counters["degenerate"] == 1


def test_forced_rules_dense_tail_and_prompt_end():
    cfg = AttentionConfig(query_block=64, key_block=32, dense_tail_tokens=100, force_sink=False,
                          mask_ratios={1: (0, .01), 0: (.01, 1)})
    A = np.random.default_rng(1).random((1, 1, 8, 16)).astype(np.float32)
    M = build_level_map_ref(paddle.to_tensor(A), Lq=500, Lk=500, config=cfg).level_map.numpy()[0, 0]
    # tail positions [400, 500): rows whose last position >= 400 (i = 6, 7) and key blocks 12..15 are dense
    for i in range(8):
        J = oracle.last_valid_block(i, 500, 500, 64, 32, True)
        if i >= 6:
            assert (M[i, :J + 1] == 1).all()
        assert (M[i, 12:J + 1] == 1).all() and (M[i, J + 1:] == 0).all()
    assert not (M[5, :12] == 1).all()
    # prompt_end = 200 moves the tail to positions >= 100: row 5 (last position 383) becomes a tail row
    M = build_level_map_ref(paddle.to_tensor(A), Lq=500, Lk=500, config=cfg, prompt_end=200).level_map.numpy()[0, 0]
    assert (M[5, :12] == 1).all()


@pytest.mark.parametrize("mode", ["energybound", "topk"])
@pytest.mark.parametrize("causal,Lq,Lk,qb,kb", [(True, 300, 300, 64, 32), (True, 100, 700, 32, 64),
                                                (False, 200, 333, 128, 16)])
def test_level_map_matches_oracle(rng, mode, causal, Lq, Lk, qb, kb):
    """T6 on CPU: reference (fp32) vs oracle (fp64); mismatches only within 1e-5 of a threshold."""
    nq, nk = -(-Lq // qb), -(-Lk // kb)
    A = rng.random((2, 4, nq, nk)) ** 3
    cap = rng.choice([1, 2, 4, 8], size=(2, 2, nk))
    kw = dict(Lq=Lq, Lk=Lk, query_block=qb, key_block=kb, causal=causal, mode=mode, dense_tail_tokens=64)
    want, counters = oracle.level_map(A, sim_cap_levels=cap, gqa_group=2, **kw)
    cfg = AttentionConfig(query_block=qb, key_block=kb, mask_mode=mode, dense_tail_tokens=64, xattn_stride=16)
    res = build_level_map_ref(paddle.to_tensor(A.astype(np.float32)), Lq=Lq, Lk=Lk, config=cfg, causal=causal,
                              sim_cap_levels=paddle.to_tensor(cap), gqa_group=2)
    got = res.level_map.numpy()
    assert got.dtype == np.int8
    assert (got == want).mean() > 0.999
    assert res.counters == counters


def test_index_list_matches_oracle_and_drops_upper_blocks(rng):
    M = rng.choice(np.array([0, 1, 2, 4, 8], np.int8), size=(2, 3, 5, 9))
    for causal in (True, False):
        lut, counts = level_map_to_lut(paddle.to_tensor(M), Lq=150, Lk=280, query_block=32, key_block=32,
                                       causal=causal)
        want_lut, want_counts = oracle.build_lut(M, Lq=150, Lk=280, query_block=32, key_block=32, causal=causal)
        assert (lut.numpy() == want_lut).all() and (counts.numpy() == want_counts).all()
        assert lut.dtype == paddle.int32 and counts.dtype == paddle.int32


def test_density_and_histogram_of_the_spec_example():
    M = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 2, 1, 0], [1, 0, 4, 1]], np.int8)[None, None]
    hist, per_head, n_valid, weighted = level_histogram(paddle.to_tensor(M), Lq=128, Lk=128, query_block=32,
                                                        key_block=32)
    assert hist == {"1": 7, "2": 1, "4": 1, "8": 0, "0": 1}
    assert n_valid == 10 and weighted / n_valid == pytest.approx(0.775) and per_head == [pytest.approx(0.775)]


# ------------------------------------------------------------------ property tests (hypothesis)
ratios_strategy = st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3).map(sorted).map(
    lambda t: {1: (0.0, t[0]), 2: (t[0], t[1]), 4: (t[1], t[2]), 8: (t[2], t[2]), 0: (t[2], 1.0)})


@settings(max_examples=40, deadline=None)
@given(Lq=st.integers(1, 300), extra=st.integers(0, 200), qb=st.sampled_from([32, 64, 128]),
       kb=st.sampled_from([16, 32, 64]), mode=st.sampled_from(["energybound", "topk"]),
       ratios=ratios_strategy, tail=st.sampled_from([0, 64]), seed=st.integers(0, 2**31 - 1),
       special=st.sampled_from(["random", "zeros", "nan", "inf", "ties"]))
def test_mask_builder_properties(Lq, extra, qb, kb, mode, ratios, tail, seed, special):
    Lk = Lq + extra
    nq, nk = -(-Lq // qb), -(-Lk // kb)
    r = np.random.default_rng(seed)
    A = r.random((1, 2, nq, nk)).astype(np.float32)
    if special == "zeros":
        A[:] = 0
    elif special == "nan":
        A[0, 0, 0, 0] = np.nan
    elif special == "inf":
        A[0, 1, -1, 0] = np.inf
    elif special == "ties":
        A[:] = 0.5
    cfg = AttentionConfig(query_block=qb, key_block=kb, mask_mode=mode, mask_ratios=ratios, dense_tail_tokens=tail,
                          xattn_stride=16)
    M = build_level_map_ref(paddle.to_tensor(A), Lq=Lq, Lk=Lk, config=cfg).level_map.numpy()
    assert set(np.unique(M)) <= {0, 1, 2, 4, 8}
    for i in range(nq):
        J = oracle.last_valid_block(i, Lq, Lk, qb, kb, True)
        assert (M[..., i, J + 1:] == 0).all()                         # upper triangle empty
        for j in oracle.diagonal_blocks(i, Lq, Lk, qb, kb):           # own key visible at level 1
            assert (M[..., i, j] == 1).all()
    hist, _, n_valid, weighted = level_histogram(paddle.to_tensor(M), Lq=Lq, Lk=Lk, query_block=qb, key_block=kb)
    want = oracle.density(M, Lq=Lq, Lk=Lk, query_block=qb, key_block=kb).mean()
    assert math.isclose(weighted / n_valid, want, rel_tol=1e-9)
    assert sum(hist.values()) == n_valid


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**31 - 1), mode=st.sampled_from(["energybound", "topk"]))
def test_better_ranked_block_never_gets_a_coarser_level(n, seed, mode):
    """Before forcing (non-causal, no sink, no tail, no cap): order 1 < 2 < 4 < 8 < skip follows the scores."""
    A = np.random.default_rng(seed).random((1, 1, 1, n)).astype(np.float32)
    cfg = AttentionConfig(query_block=32, key_block=16, mask_mode=mode, dense_tail_tokens=0, force_sink=False)
    M = build_level_map_ref(paddle.to_tensor(A), Lq=32, Lk=16 * n, config=cfg, causal=False).level_map.numpy()[0, 0, 0]
    rank = {1: 0, 2: 1, 4: 2, 8: 3, 0: 4}
    order = sorted(range(n), key=lambda j: (-A[0, 0, 0, j], j))
    ranks = [rank[int(M[j])] for j in order]
    assert ranks == sorted(ranks)
