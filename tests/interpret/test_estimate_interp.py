"""psa_estimate_scores under the Triton interpreter vs the fp64 oracle (PSA-SPEC §6.1, §6.2, §6.4; T5)."""
import numpy as np
import pytest

import oracle
from _psa_helpers import to_layout
from hostview import hv


def _run(q, k, *, query_block, key_block, stride, causal, scale=None, layout="BHSD", views=None, **tiles):
    from paddlemix_psa.kernels.estimate import psa_estimate_scores

    B, Hq, Lq, _ = q.shape
    Lk = k.shape[2]
    out = np.full((B, Hq, -(-Lq // query_block), -(-Lk // key_block)), np.nan, np.float32)
    ql, kl = views if views is not None else (to_layout(q, layout), to_layout(k, layout))
    psa_estimate_scores(hv(ql), hv(kl), hv(out), query_block=query_block, key_block=key_block, stride=stride,
                        causal=causal, scale=scale, layout=layout, **tiles)
    return out


def _valid_reshaped_per_block(Lq, query_block, stride):
    nq = -(-Lq // query_block)
    a = np.arange(nq * query_block // stride)
    return (a * stride < Lq).reshape(nq, query_block // stride).sum(axis=1)


def _upper(Lq, Lk, query_block, key_block):
    nq, nk = -(-Lq // query_block), -(-Lk // key_block)
    up = np.zeros((nq, nk), bool)
    for i in range(nq):
        up[i, oracle.last_valid_block(i, Lq, Lk, query_block, key_block, True) + 1:] = True
    return up


CASES = [
    # B, Hq, Hkv, Lq, Lk, D, query_block, key_block, stride, causal, layout
    (1, 2, 1, 300, 300, 64, 128, 32, 16, True, "BHSD"),     # spec §1 example geometry
    (1, 2, 1, 200, 1000, 80, 128, 32, 16, True, "BHSD"),    # chunk, off = 800, D padded
    (1, 2, 2, 100, 77, 64, 32, 16, 16, False, "BHSD"),      # non-causal, Lq > Lk
    (2, 4, 2, 129, 257, 96, 64, 64, 8, True, "BSHD"),       # ragged, not multiples of S, BSHD, G = 2
    (1, 3, 1, 37, 50, 64, 32, 128, 4, True, "BHSD"),        # query_block < key_block, Lk < key_block
    (1, 2, 1, 256, 256, 128, 128, 128, 2, True, "BHSD"),    # S = 2, paper-like square blocks
    (1, 1, 1, 1, 100, 64, 32, 32, 8, True, "BHSD"),         # Lq = 1
    (1, 7, 1, 150, 150, 64, 64, 32, 32, True, "BSHD"),      # S = key_block (one reshaped key per block), G = 7
    (1, 2, 1, 100, 130, 64, 32, 64, 32, True, "BHSD"),      # S = query_block (one reshaped query per block)
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_scores_match_oracle(case, dtype):
    B, Hq, Hkv, Lq, Lk, D, bq, bk, S, causal, layout = case
    rng = np.random.default_rng(Lq * 31 + Lk + D)
    q = rng.standard_normal((B, Hq, Lq, D)).astype(dtype)
    k = rng.standard_normal((B, Hkv, Lk, D)).astype(dtype)
    got = _run(q, k, query_block=bq, key_block=bk, stride=S, causal=causal, layout=layout)
    ref = oracle.xattn_scores(q, k, query_block=bq, key_block=bk, stride=S, causal=causal)
    assert not np.isnan(got).any(), "unwritten output elements"
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-6)
    # each row sums to the number of valid reshaped queries of its query block
    np.testing.assert_allclose(got.sum(axis=-1), np.broadcast_to(_valid_reshaped_per_block(Lq, bq, S), got.shape[:3]),
                               rtol=1e-5)
    if causal:
        assert (got[..., _upper(Lq, Lk, bq, bk)] == 0).all(), "upper blocks must be exact zeros"


def test_scale_argument():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 2, 96, 64)).astype(np.float32)
    k = rng.standard_normal((1, 1, 160, 64)).astype(np.float32)
    got = _run(q, k, query_block=32, key_block=32, stride=8, causal=True, scale=0.3)
    ref = oracle.xattn_scores(q, k, query_block=32, key_block=32, stride=8, causal=True, scale=0.3)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-6)


def test_tile_size_does_not_change_result():
    """Each row is normalised over all visible keys, so key tiling / query tiling cannot matter (§6.1)."""
    rng = np.random.default_rng(4)
    q = rng.standard_normal((1, 2, 500, 64)).astype(np.float32)
    k = rng.standard_normal((1, 1, 700, 64)).astype(np.float32)
    kw = dict(query_block=64, key_block=32, stride=8, causal=True)
    a = _run(q, k, **kw)
    b = _run(q, k, **kw, block_a=16, block_c=16)
    c = _run(q, k, **kw, block_a=32, block_c=128)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-7)


def test_strided_views_and_nan_beyond_length():
    """Head-strided q view and k read through a view whose memory past Lk is NaN: nothing past Lk is used."""
    rng = np.random.default_rng(5)
    Lq, Lk, D = 90, 130, 64
    qbig = rng.standard_normal((1, 4, Lq, D)).astype(np.float32)
    q = qbig[:, ::2]  # head stride 2 * Lq * D
    kbig = np.full((1, 1, 200, D), np.nan, np.float32)
    kbig[:, :, :Lk] = rng.standard_normal((1, 1, Lk, D))
    k = kbig[:, :, :Lk]
    got = _run(np.ascontiguousarray(q), np.ascontiguousarray(k), query_block=32, key_block=32, stride=16,
               causal=True, views=(q, k))
    ref = oracle.xattn_scores(q, k, query_block=32, key_block=32, stride=16, causal=True)
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-6)


def test_gqa_heads_share_kv_head():
    """Head h reads KV head h // G: query heads that equal each other in different groups differ only via K."""
    rng = np.random.default_rng(6)
    q1 = rng.standard_normal((1, 1, 64, 64)).astype(np.float32)
    q = np.repeat(q1, 4, axis=1)  # 4 identical query heads, G = 2
    k = rng.standard_normal((1, 2, 64, 64)).astype(np.float32)
    got = _run(q, k, query_block=32, key_block=16, stride=8, causal=True)
    np.testing.assert_array_equal(got[:, 0], got[:, 1])
    np.testing.assert_array_equal(got[:, 2], got[:, 3])
    assert not np.allclose(got[:, 0], got[:, 2])


@pytest.mark.parametrize("kw,msg", [
    (dict(stride=3), "stride"),
    (dict(stride=64, key_block=32), "stride"),
    (dict(layout="SBHD"), "layout"),
])
def test_argument_errors(kw, msg):
    from paddlemix_psa.kernels.estimate import psa_estimate_scores

    q = np.zeros((1, 1, 64, 64), np.float32)
    k = np.zeros((1, 1, 64, 64), np.float32)
    args = dict(query_block=64, key_block=32, stride=8, causal=True, scale=None, layout="BHSD")
    args.update(kw)
    out = np.zeros((1, 1, 1, 2), np.float32)
    with pytest.raises(ValueError, match=msg):
        psa_estimate_scores(hv(q), hv(k), hv(out), **args)


def test_head_dim_error():
    from paddlemix_psa.kernels.estimate import psa_estimate_scores

    q = np.zeros((1, 1, 64, 48), np.float32)
    out = np.zeros((1, 1, 1, 2), np.float32)
    with pytest.raises(ValueError, match="head dim"):
        psa_estimate_scores(hv(q), hv(q), hv(out), query_block=64, key_block=32, stride=8, causal=True, scale=None,
                            layout="BHSD")
