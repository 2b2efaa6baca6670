"""psa_attn_fwd under the Triton interpreter vs the fp64 oracle (docs/ALGORITHM.md §4, §5, §11; T1-T4 on CPU)."""
import numpy as np
import pytest

import oracle
from _psa_helpers import oracle_lse, rand_qkv, run_psa, to_layout

TOL = {np.float32: 2e-5, np.float16: 4e-3}


def _map(rng, B, H, Lq, Lk, bq, bk, levels=(0, 1, 2, 4, 8)):
    return rng.choice(levels, size=(B, H, -(-Lq // bq), -(-Lk // bk))).astype(np.int8)


def _check(out, ref, tol):
    assert not np.isnan(out).any(), "NaN in output"
    np.testing.assert_allclose(out.astype(np.float64), ref, atol=tol, rtol=tol)


# ---------------------------------------------------------------- T1 dense equivalence
@pytest.mark.parametrize("D", [64, 80, 96, 128])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Lq,Lk", [(1, 1), (17, 17), (40, 97), (129, 129)])
def test_all_level1_equals_dense(D, causal, Lq, Lk):
    rng = np.random.default_rng(D + Lq + Lk)
    q, k, v = rand_qkv(rng, 1, 2, 1, Lq, Lk, D)
    M = np.ones((1, 2, -(-Lq // 64), -(-Lk // 32)), np.int8)
    out, _ = run_psa(q, k, v, M, query_block=64, key_block=32, causal=causal)
    _check(out, oracle.dense_attention(q, k, v, causal=causal), 2e-5)


# ---------------------------------------------------------------- T2 random level maps, every geometry
@pytest.mark.parametrize("bq", [32, 64, 128])
@pytest.mark.parametrize("bk", [16, 32, 64, 128])
@pytest.mark.parametrize("causal", [True, False])
def test_random_maps_every_block_geometry(bq, bk, causal):
    rng = np.random.default_rng(bq * 1000 + bk + causal)
    Lq, Lk = (150, 203) if causal else (131, 90)
    q, k, v = rand_qkv(rng, 1, 2, 1, Lq, Lk, 64)
    M = _map(rng, 1, 2, Lq, Lk, bq, bk)
    out, _ = run_psa(q, k, v, M, query_block=bq, key_block=bk, causal=causal)
    _check(out, oracle.psa_attention(q, k, v, M, query_block=bq, key_block=bk, causal=causal), 2e-5)


@pytest.mark.parametrize("block_n", [16, 32, 64, 128])
@pytest.mark.parametrize("bk", [16, 64])
@pytest.mark.parametrize("runs", [None, "tma", "gather"])
def test_tile_width_vs_pooled_tokens(block_n, bk, runs):
    # P = bk/p ranges over 2..64 for every tile width: packing (P < BLOCK_N) and splitting (P > BLOCK_N); with
    # runs, a run slab spans several key blocks (bk < block_n) or a block spans several slabs (bk > block_n)
    rng = np.random.default_rng(block_n + bk)
    Lq, Lk = 64, 250
    q, k, v = rand_qkv(rng, 1, 1, 1, Lq, Lk, 64)
    M = _map(rng, 1, 1, Lq, Lk, 32, bk, levels=(0, 1, 1, 1, 2, 4, 8))
    out, _ = run_psa(q, k, v, M, query_block=32, key_block=bk, causal=True, block_n=block_n,
                     block_n_pooled=max(16, block_n // 2), runs=runs)
    _check(out, oracle.psa_attention(q, k, v, M, query_block=32, key_block=bk, causal=True), 2e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("layout", ["BHSD", "BSHD"])
@pytest.mark.parametrize("gqa_mask", ["per_head", "per_kv_group"])
def test_gqa_layouts_dtypes(dtype, layout, gqa_mask):
    rng = np.random.default_rng(7)
    B, Hq, Hkv, Lq, Lk, D = 2, 6, 2, 70, 111, 96
    q, k, v = rand_qkv(rng, B, Hq, Hkv, Lq, Lk, D, dtype)
    M = _map(rng, B, Hq if gqa_mask == "per_head" else Hkv, Lq, Lk, 32, 16)
    out, _ = run_psa(q, k, v, M, query_block=32, key_block=16, causal=True, layout=layout, gqa_mask=gqa_mask)
    ref = oracle.psa_attention(q, k, v, M, query_block=32, key_block=16, causal=True, gqa_mask=gqa_mask)
    _check(out, ref, TOL[dtype])


def test_scale_and_lse():
    rng = np.random.default_rng(11)
    q, k, v = rand_qkv(rng, 1, 2, 1, 45, 77, 64)
    M = _map(rng, 1, 2, 45, 77, 32, 16)
    M[0, 0, 0, :] = 0  # an empty row block -> lse = -inf, out = 0
    out, lse = run_psa(q, k, v, M, query_block=32, key_block=16, scale=0.3, with_lse=True)
    _check(out, oracle.psa_attention(q, k, v, M, query_block=32, key_block=16, scale=0.3), 2e-5)
    ref = oracle_lse(q, k, M, query_block=32, key_block=16, scale=0.3)
    assert np.array_equal(np.isneginf(lse), np.isneginf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(lse[fin], ref[fin], atol=1e-5, rtol=1e-5)
    assert np.all(out[0, 0, :32] == 0)


@pytest.mark.parametrize("bk", [16, 32, 128])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("runs", ["tma", "gather"])
def test_level1_runs_banded_maps(bk, causal, runs):
    # dense bands of level 1 (several runs per row, of every length) among pooled and skipped blocks, D=80
    # (the slab is D_PAD=128 wide: TMA zero-fills the columns past D), ragged Lk
    rng = np.random.default_rng(bk + 3 * causal)
    Lq, Lk = (150, 403) if causal else (131, 290)
    q, k, v = rand_qkv(rng, 1, 2, 1, Lq, Lk, 80)
    M = _map(rng, 1, 2, Lq, Lk, 64, bk)
    nk = M.shape[3]
    for h in range(2):
        for a in rng.integers(0, nk, size=4):
            M[0, h, :, a:a + int(rng.integers(1, 9))] = 1
    out, lse = run_psa(q, k, v, M, query_block=64, key_block=bk, causal=causal, block_n=64, runs=runs,
                       with_lse=True)
    _check(out, oracle.psa_attention(q, k, v, M, query_block=64, key_block=bk, causal=causal), 2e-5)
    ref = oracle_lse(q, k, M, query_block=64, key_block=bk, causal=causal)
    fin = np.isfinite(ref)
    assert np.array_equal(np.isneginf(lse), np.isneginf(ref))
    np.testing.assert_allclose(lse[fin], ref[fin], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bq,bk,block_n", [(64, 16, 64), (128, 32, 128), (32, 64, 32), (128, 128, 64)])
@pytest.mark.parametrize("causal", [True, False])
def test_build_lut_runs_layout(bq, bk, block_n, causal):
    # runs first (each maximal stretch of complete, fully visible level-1 blocks gives its first whole multiple
    # of block_n/bk blocks), then the other level-1 blocks ascending; the same entries per level as the oracle's
    # index list, the other levels unchanged
    from _psa_helpers import build_lut_with_runs

    rng = np.random.default_rng(bq + bk + causal)
    Lq, Lk = (300, 333) if causal else (200, 321)
    M = _map(rng, 2, 3, Lq, Lk, bq, bk, levels=(0, 1, 1, 1, 2, 4))
    M[..., :8] = 1  # a band that holds runs in every row that sees it
    lut, cnt, runs = build_lut_with_runs(M, Lq=Lq, Lk=Lk, query_block=bq, key_block=bk, causal=causal,
                                         block_n=block_n)
    want_lut, want_cnt = oracle.build_lut(M, Lq=Lq, Lk=Lk, query_block=bq, key_block=bk, causal=causal)
    np.testing.assert_array_equal(cnt, want_cnt)
    rb = max(1, block_n // bk)
    assert runs.min() >= 0 and runs.sum() > 0
    for b, h, i in np.ndindex(*runs.shape):
        n1, r = int(cnt[b, h, i, 0]), int(runs[b, h, i]) * rb
        seg = lut[b, h, i, :n1]
        jfull = (i * bq + Lk - Lq + 1) // bk if causal else Lk // bk
        assert np.all(np.diff(seg[:r]) > 0) and np.all(np.diff(seg[r:]) > 0)
        assert sorted(seg.tolist()) == want_lut[b, h, i, :n1].tolist()
        # the runs are, stretch by stretch, the first rb * (length // rb) blocks of each maximal stretch of
        # level-1 blocks below jfull
        kept, want = set(seg.tolist()), []
        j = 0
        while j < jfull:
            if j not in kept:
                j += 1
                continue
            e = j
            while e < jfull and e in kept:
                e += 1
            want += list(range(j, j + (e - j) // rb * rb))
            j = e
        assert seg[:r].tolist() == want
        np.testing.assert_array_equal(lut[b, h, i, n1:], want_lut[b, h, i, n1:])


# ---------------------------------------------------------------- T3 small pooled blocks, large early keys
@pytest.mark.parametrize("bk", [16, 32, 64])
def test_small_pooled_blocks_large_early_keys(bk):
    rng = np.random.default_rng(bk)
    Lq = Lk = 256
    q, k, v = rand_qkv(rng, 1, 1, 1, Lq, Lk, 64)
    k[:, :, :16] *= 30.0  # a stray lane reading these would dominate the softmax
    v[:, :, :16] += 50.0
    M = _map(rng, 1, 1, Lq, Lk, 64, bk, levels=(4, 8))
    M[..., 0] = 0  # the large early keys are never legitimately attended
    out, _ = run_psa(q, k, v, M, query_block=64, key_block=bk, causal=False)
    _check(out, oracle.psa_attention(q, k, v, M, query_block=64, key_block=bk, causal=False), 2e-5)


# ---------------------------------------------------------------- T4 no NaN
def test_all_zero_mask_gives_zero():
    rng = np.random.default_rng(5)
    q, k, v = rand_qkv(rng, 1, 2, 1, 33, 33, 64)
    M = np.zeros((1, 2, 2, 3), np.int8)
    out, lse = run_psa(q, k, v, M, query_block=32, key_block=16, with_lse=True)
    assert np.all(out == 0) and np.all(np.isneginf(lse))


@pytest.mark.parametrize("layout", ["BHSD", "BSHD"])
def test_nan_memory_beyond_lk(layout):
    rng = np.random.default_rng(6)
    Lq, Lk, D = 50, 83, 64
    q, k, v = rand_qkv(rng, 1, 2, 1, Lq, Lk, D)
    views = []
    for x in (k, v):
        xl = to_layout(x, layout)
        if layout == "BHSD":
            big = np.full((1, 1, Lk + 45, D), np.nan, np.float32)
            big[:, :, :Lk] = xl
            views.append(big[:, :, :Lk])
        else:
            big = np.full((1, Lk + 45, 1, D), np.nan, np.float32)
            big[:, :Lk] = xl
            views.append(big[:, :Lk])
    for causal in (True, False):
        M = _map(rng, 1, 2, Lq, Lk, 32, 32)
        out, _ = run_psa(q, k, v, M, query_block=32, key_block=32, causal=causal, layout=layout,
                         kv_views=tuple(views))
        _check(out, oracle.psa_attention(q, k, v, M, query_block=32, key_block=32, causal=causal), 2e-5)


def test_fully_masked_first_tiles():
    # only pooled diagonal blocks: for the first rows of each block every token is causally invisible at first
    rng = np.random.default_rng(8)
    Lq = Lk = 128
    q, k, v = rand_qkv(rng, 1, 1, 1, Lq, Lk, 64)
    M = np.zeros((1, 1, 4, 4), np.int8)
    for i in range(4):
        M[0, 0, i, i] = 8
        if i:
            M[0, 0, i, i - 1] = 0
    out, _ = run_psa(q, k, v, M, query_block=32, key_block=32, causal=True)
    ref = oracle.psa_attention(q, k, v, M, query_block=32, key_block=32, causal=True)
    _check(out, ref, 2e-5)
    assert np.all(out[0, 0, :7] == 0)  # rows before the first complete group of 8 see nothing


@pytest.mark.parametrize("runs", [None, "tma"])
def test_causal_offset_pooled_diagonal_conservative_rule(runs):
    # Lq < Lk (chunked prefill), pooled levels on diagonal blocks: conservative visibility of §5
    rng = np.random.default_rng(9)
    Lq, Lk = 70, 201
    q, k, v = rand_qkv(rng, 1, 2, 2, Lq, Lk, 80)
    M = _map(rng, 1, 2, Lq, Lk, 32, 16, levels=(1, 2, 4, 8))
    out, _ = run_psa(q, k, v, M, query_block=32, key_block=16, causal=True, runs=runs)
    _check(out, oracle.psa_attention(q, k, v, M, query_block=32, key_block=16, causal=True), 2e-5)


def test_bias_is_log_count_not_log_p():
    # T2 / pitfall 1: a partial last group (Lk % 8 != 0) in non-causal mode gets bias ln c
    rng = np.random.default_rng(10)
    q, k, v = rand_qkv(rng, 1, 1, 1, 20, 37, 64)
    M = np.full((1, 1, 1, 3), 8, np.int8)
    out, _ = run_psa(q, k, v, M, query_block=32, key_block=16, causal=False)
    _check(out, oracle.psa_attention(q, k, v, M, query_block=32, key_block=16, causal=False), 2e-5)


def test_rejects_bad_arguments():
    from hostview import hv
    from paddlemix_psa.kernels.attn_fwd import psa_attn_fwd

    q = np.zeros((1, 2, 16, 64), np.float32)
    lut = np.zeros((1, 2, 1, 3), np.int32)  # nk should be 1
    cnt = np.zeros((1, 2, 1, 4), np.int32)
    with pytest.raises(ValueError, match="key_block"):
        psa_attn_fwd(hv(q), hv(q), hv(q), {}, {}, hv(lut), hv(cnt), hv(q), query_block=32, key_block=8)
    with pytest.raises(ValueError, match="lut"):
        psa_attn_fwd(hv(q), hv(q), hv(q), {}, {}, hv(lut), hv(cnt), hv(q), query_block=32, key_block=16)
    with pytest.raises(ValueError, match="layout"):
        psa_attn_fwd(hv(q), hv(q), hv(q), {}, {}, hv(lut), hv(cnt), hv(q), query_block=32, key_block=16,
                     layout="SBHD")


# ---------------------------------------------------------------- pipeline: estimate -> select -> lut -> pool -> attend
@pytest.mark.parametrize("gqa_mask", ["per_head", "per_kv_group"])
def test_pipeline_end_to_end(gqa_mask):
    from hostview import hv
    from paddlemix_psa.kernels.pipeline import psa_forward_kernels

    rng = np.random.default_rng(12)
    B, Hq, Hkv, Lq, Lk, D, bq, bk = 1, 4, 2, 100, 230, 64, 32, 16
    q, k, v = rand_qkv(rng, B, Hq, Hkv, Lq, Lk, D)
    keep = []

    def alloc(shape, dt):
        a = np.zeros(shape, dtype=np.dtype(dt))
        keep.append(a)
        return hv(a)

    out, M, lut, cnt = psa_forward_kernels(hv(q), hv(k), hv(v), alloc=alloc, query_block=bq, key_block=bk,
                                           xattn_stride=8, dense_tail_tokens=32, gqa_mask=gqa_mask)
    Mn = M.arr
    Hm = Hq if gqa_mask == "per_head" else Hkv
    assert Mn.shape == (B, Hm, -(-Lq // bq), -(-Lk // bk))
    assert set(np.unique(Mn)) <= {0, 1, 2, 4, 8}
    # the attention consumed exactly the map it returned
    ref = oracle.psa_attention(q, k, v, Mn, query_block=bq, key_block=bk, causal=True, gqa_mask=gqa_mask)
    _check(out.arr, ref, 2e-5)
    # and the map is the oracle's map from the oracle's scores (up to blocks near an energy boundary)
    A = oracle.xattn_scores(q, k, query_block=bq, key_block=bk, stride=8, causal=True)
    if gqa_mask == "per_kv_group":
        A = A.reshape(B, Hkv, Hq // Hkv, *A.shape[2:]).mean(axis=2)
    caps = oracle.similarity_cap(k, key_block=bk)
    Mref, _ = oracle.level_map(A, Lq=Lq, Lk=Lk, query_block=bq, key_block=bk, dense_tail_tokens=32,
                               sim_cap_levels=caps, gqa_group=Hq // Hkv if gqa_mask == "per_head" else 1)
    assert (Mn != Mref).mean() < 0.02


def test_unaligned_kv_keep_pointer_loads_counted(monkeypatch, caplog):
    # K/V at an address that is not 16-byte aligned cannot back a TMA descriptor: the runs are gathered, the
    # launch is counted and logged once, and the output is the oracle's
    import collections
    import logging

    from paddlemix_psa.kernels import _tma

    monkeypatch.setattr(_tma, "TMA_FALLBACKS", collections.Counter())
    rng = np.random.default_rng(21)
    Lq, Lk = 128, 160
    q, k, v = rand_qkv(rng, 1, 2, 1, Lq, Lk, 64)
    views = []
    for x in (k, v):
        buf = np.full(x.size + 1, np.nan, np.float32)
        view = buf[1:].reshape(x.shape)  # 4 bytes past an aligned address
        view[...] = x
        views.append(view)
    M = np.ones((1, 2, 2, 5), np.int8)
    with caplog.at_level(logging.WARNING, logger=_tma.__name__):
        for _ in range(2):
            out, _ = run_psa(q, k, v, M, query_block=64, key_block=32, causal=True, runs="tma", block_n=64,
                             kv_views=tuple(views))
            _check(out, oracle.psa_attention(q, k, v, M, query_block=64, key_block=32, causal=True), 2e-5)
    assert _tma.TMA_FALLBACKS == {("psa_attn_fwd", "unaligned"): 2}
    assert len([r for r in caplog.records if "16-byte aligned" in r.getMessage()]) == 1
