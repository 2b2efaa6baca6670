"""psa_estimate_scores under the Triton interpreter vs the fp64 oracle (docs/ALGORITHM.md §6.1, §6.2, §6.4; T5)."""
import numpy as np
import pytest

import oracle
from _psa_helpers import to_layout
from hostview import hv


METHODS = ["two_pass", "single_pass"]


class _Scratch:
    """``alloc(shape, dtype_name)`` for the single-pass method: NaN-filled numpy buffers kept alive here, so any
    scratch element that pass B reads without pass A having written it shows up as NaN in the result."""

    def __init__(self):
        self.arrays = []
        self.calls = []

    def __call__(self, shp, dt):
        self.calls.append((tuple(shp), dt))
        a = np.full(shp, np.nan, np.dtype(dt))
        self.arrays.append(a)
        return hv(a)


def _run(q, k, *, query_block, key_block, stride, causal, scale=None, layout="BHSD", views=None,
         method="two_pass", **tiles):
    from paddlemix_psa.kernels.estimate import psa_estimate_scores

    B, Hq, Lq, _ = q.shape
    Lk = k.shape[2]
    out = np.full((B, Hq, -(-Lq // query_block), -(-Lk // key_block)), np.nan, np.float32)
    ql, kl = views if views is not None else (to_layout(q, layout), to_layout(k, layout))
    scratch = _Scratch() if method == "single_pass" else None
    psa_estimate_scores(hv(ql), hv(kl), hv(out), query_block=query_block, key_block=key_block, stride=stride,
                        causal=causal, scale=scale, layout=layout, scratch=scratch, method=method, **tiles)
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
    (1, 4, 2, 70, 600, 64, 16, 32, 4, True, "BSHD"),        # several key tiles, off = 530, G = 2, bq < bk
    (1, 2, 1, 90, 700, 64, 32, 32, 8, False, "BHSD"),       # non-causal over two key tiles, ragged
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_scores_match_oracle(case, dtype, method):
    B, Hq, Hkv, Lq, Lk, D, bq, bk, S, causal, layout = case
    rng = np.random.default_rng(Lq * 31 + Lk + D)
    q = rng.standard_normal((B, Hq, Lq, D)).astype(dtype)
    k = rng.standard_normal((B, Hkv, Lk, D)).astype(dtype)
    got = _run(q, k, query_block=bq, key_block=bk, stride=S, causal=causal, layout=layout, method=method)
    ref = oracle.xattn_scores(q, k, query_block=bq, key_block=bk, stride=S, causal=causal)
    assert not np.isnan(got).any(), "unwritten output elements"
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-6)
    # each row sums to the number of valid reshaped queries of its query block
    np.testing.assert_allclose(got.sum(axis=-1), np.broadcast_to(_valid_reshaped_per_block(Lq, bq, S), got.shape[:3]),
                               rtol=1e-5)
    if causal:
        assert (got[..., _upper(Lq, Lk, bq, bk)] == 0).all(), "upper blocks must be exact zeros"


@pytest.mark.parametrize("method", METHODS)
def test_scale_argument(method):
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 2, 96, 64)).astype(np.float32)
    k = rng.standard_normal((1, 1, 160, 64)).astype(np.float32)
    got = _run(q, k, query_block=32, key_block=32, stride=8, causal=True, scale=0.3, method=method)
    ref = oracle.xattn_scores(q, k, query_block=32, key_block=32, stride=8, causal=True, scale=0.3)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-6)


def test_tile_size_does_not_change_result():
    """Each row is normalised over all visible keys, so key tiling / query tiling / method cannot matter (§6.1)."""
    rng = np.random.default_rng(4)
    q = rng.standard_normal((1, 2, 500, 64)).astype(np.float32)
    k = rng.standard_normal((1, 1, 700, 64)).astype(np.float32)
    kw = dict(query_block=64, key_block=32, stride=8, causal=True)
    a = _run(q, k, **kw)
    b = _run(q, k, **kw, block_a=16, block_c=16)
    c = _run(q, k, **kw, block_a=32, block_c=128)
    # single pass: a query tile need not hold whole query blocks (16 < 64 / 8 is fine, 16 > 8 too)
    d = _run(q, k, **kw, method="single_pass")
    e = _run(q, k, **kw, method="single_pass", block_a=16, block_c=16, num_stages=2)
    f = _run(q, k, **kw, method="single_pass", block_a=64, block_c=128, num_warps=8, num_stages=4)
    g = _run(q, k, **kw, method="single_pass", block_a=32, block_c=16, flatten=True)
    h = _run(q, k, **kw, method="single_pass", block_a=16, block_c=32, block_k=16, flatten=True)
    for x in (b, c, d, e, f, g, h):
        np.testing.assert_allclose(a, x, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_strided_views_and_nan_beyond_length(method):
    """Head-strided q view and k read through a view whose memory past Lk is NaN: nothing past Lk is used."""
    rng = np.random.default_rng(5)
    Lq, Lk, D = 90, 130, 64
    qbig = rng.standard_normal((1, 4, Lq, D)).astype(np.float32)
    q = qbig[:, ::2]  # head stride 2 * Lq * D
    kbig = np.full((1, 1, 200, D), np.nan, np.float32)
    kbig[:, :, :Lk] = rng.standard_normal((1, 1, Lk, D))
    k = kbig[:, :, :Lk]
    got = _run(np.ascontiguousarray(q), np.ascontiguousarray(k), query_block=32, key_block=32, stride=16,
               causal=True, views=(q, k), method=method)
    ref = oracle.xattn_scores(q, k, query_block=32, key_block=32, stride=16, causal=True)
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_gqa_heads_share_kv_head(method):
    """Head h reads KV head h // G: query heads that equal each other in different groups differ only via K."""
    rng = np.random.default_rng(6)
    q1 = rng.standard_normal((1, 1, 64, 64)).astype(np.float32)
    q = np.repeat(q1, 4, axis=1)  # 4 identical query heads, G = 2
    k = rng.standard_normal((1, 2, 64, 64)).astype(np.float32)
    got = _run(q, k, query_block=32, key_block=16, stride=8, causal=True, method=method)
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


def test_method_selection_and_scratch_shapes():
    """method=None picks single-pass exactly when scratch is given; scratch is requested with the advertised shapes;
    single-pass without scratch and unknown methods are errors."""
    from paddlemix_psa.kernels.estimate import estimate_scratch_shapes, psa_estimate_scores

    rng = np.random.default_rng(8)
    q = rng.standard_normal((1, 2, 150, 64)).astype(np.float32)
    k = rng.standard_normal((1, 1, 230, 64)).astype(np.float32)
    args = dict(query_block=64, key_block=32, stride=8, causal=True, scale=None, layout="BHSD")
    out = np.full((1, 2, 3, 8), np.nan, np.float32)
    sc = _Scratch()
    psa_estimate_scores(hv(q), hv(k), hv(out), **args, scratch=sc)
    want = estimate_scratch_shapes(1, 2, 150, 230, query_block=64, key_block=32, stride=8)
    assert sorted(sc.calls) == sorted(want.values())
    assert want["part"][0] == (1, 2, 3 * 8, 8) and want["tmax"][0] == (1, 2, 24, 1)
    assert estimate_scratch_shapes(1, 2, 150, 230, query_block=64, key_block=32, stride=8,
                                   block_c=16)["tmax"][0] == (1, 2, 24, 2)
    ref = oracle.xattn_scores(q, k, query_block=64, key_block=32, stride=8, causal=True)
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-6)
    out2 = np.full_like(out, np.nan)
    psa_estimate_scores(hv(q), hv(k), hv(out2), **args)  # no scratch: two-pass, no allocation
    np.testing.assert_allclose(out2, ref, rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="scratch"):
        psa_estimate_scores(hv(q), hv(k), hv(out), **args, method="single_pass")
    with pytest.raises(ValueError, match="method"):
        psa_estimate_scores(hv(q), hv(k), hv(out), **args, method="three_pass")
    sc2 = _Scratch()
    psa_estimate_scores(hv(q), hv(k), hv(out2), **args, scratch=sc2, method="two_pass")
    assert not sc2.calls, "two-pass must not allocate"


@pytest.mark.parametrize("D,block_k", [(80, 32), (96, 64), (128, 64)])
def test_single_pass_block_k_split(D, block_k):
    """Pass A splitting D into chunks (D padded: 80 -> 128 in chunks of 32, the last one fully masked)."""
    rng = np.random.default_rng(D)
    q = rng.standard_normal((1, 2, 130, D)).astype(np.float16)
    k = rng.standard_normal((1, 1, 200, D)).astype(np.float16)
    kw = dict(query_block=32, key_block=32, stride=8, causal=True)
    got = _run(q, k, **kw, method="single_pass", block_k=block_k)
    ref = oracle.xattn_scores(q, k, **kw)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-6)


class _LaunchSpy:
    """Stands in for ``_xattn_partial_kernel``: records each launch's USE_TMA and runs the real kernel."""

    def __init__(self, kern):
        self.kern = kern
        self.use_tma = []

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.use_tma.append(meta["USE_TMA"])
            return self.kern[grid](*args, **meta)
        return launch


@pytest.fixture
def pass_a_spy(monkeypatch):
    from paddlemix_psa.kernels import estimate

    spy = _LaunchSpy(estimate._xattn_partial_kernel)
    monkeypatch.setattr(estimate, "_xattn_partial_kernel", spy)
    return spy


TMA_CASES = [
    # B, Hq, Hkv, Lq, Lk, D, query_block, key_block, stride, causal, layout
    (1, 4, 2, 1000, 1000, 64, 64, 32, 16, True, "BHSD"),   # Lq, Lk ragged (1000 % 16 = 8): last query / key tile
    (1, 4, 2, 1024, 1024, 64, 64, 32, 16, True, "BSHD"),   # divisible: every tile through TMA
    (1, 2, 1, 200, 1008, 80, 128, 32, 16, True, "BSHD"),   # chunk (off = 808): Lq ragged, Lk divisible, D padded
    (2, 2, 1, 256, 300, 96, 32, 32, 8, False, "BHSD"),     # non-causal, Lk ragged (300 % 8 = 4), G = 2, B = 2
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("case", TMA_CASES, ids=lambda c: "-".join(map(str, c)))
def test_single_pass_tma_equals_pointer_loads(pass_a_spy, case, dtype):
    """Pass A through TMA boxes of the [B, H, S, L // S, D] views (the sm_90 path; the interpreter emulates it)
    gives bit-identical results to its pointer loads, and both match the oracle: tiles that reach a partial last
    stride group fall back to pointer loads inside the same launch (16 x 16 tiles: several of each per head)."""
    B, Hq, Hkv, Lq, Lk, D, bq, bk, S, causal, layout = case
    rng = np.random.default_rng(Lq + Lk + D)
    q = rng.standard_normal((B, Hq, Lq, D)).astype(dtype)
    k = rng.standard_normal((B, Hkv, Lk, D)).astype(dtype)
    kw = dict(query_block=bq, key_block=bk, stride=S, causal=causal, layout=layout, method="single_pass",
              block_a=16, block_c=16)
    tma = _run(q, k, **kw)
    ptr = _run(q, k, **kw, use_tma=False)
    assert pass_a_spy.use_tma == [True, False]
    np.testing.assert_array_equal(tma, ptr)
    ref = oracle.xattn_scores(q, k, query_block=bq, key_block=bk, stride=S, causal=causal)
    np.testing.assert_allclose(tma, ref, rtol=1e-3, atol=1e-6)


def test_single_pass_tma_default_tiles(pass_a_spy):
    """The default tiles (and flatten) on the TMA path, ragged lengths, fp16."""
    rng = np.random.default_rng(12)
    q = rng.standard_normal((1, 2, 700, 64)).astype(np.float16)
    k = rng.standard_normal((1, 1, 900, 64)).astype(np.float16)
    kw = dict(query_block=64, key_block=32, stride=8, causal=True, method="single_pass")
    ref = oracle.xattn_scores(q, k, query_block=64, key_block=32, stride=8, causal=True)
    for tiles in (dict(), dict(flatten=True, block_a=32, block_c=32)):
        np.testing.assert_allclose(_run(q, k, **kw, **tiles), ref, rtol=1e-3, atol=1e-6)
    assert pass_a_spy.use_tma == [True, True]


def test_single_pass_tma_needs_a_whole_stride_group(pass_a_spy):
    """A length below the stride has no whole group to view: pointer loads, still exact."""
    rng = np.random.default_rng(13)
    q = rng.standard_normal((1, 2, 10, 64)).astype(np.float32)
    k = rng.standard_normal((1, 1, 300, 64)).astype(np.float32)
    got = _run(q, k, query_block=32, key_block=32, stride=16, causal=True, method="single_pass")
    assert pass_a_spy.use_tma == [False]
    ref = oracle.xattn_scores(q, k, query_block=32, key_block=32, stride=16, causal=True)
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-6)


def test_single_pass_unaligned_input_falls_back_once_logged(pass_a_spy, monkeypatch, caplog):
    """q at an address that is not 16-byte aligned cannot back a TMA descriptor: pointer loads, counted per call,
    one warning."""
    import collections
    import logging

    from paddlemix_psa.kernels import _tma

    monkeypatch.setattr(_tma, "TMA_FALLBACKS", collections.Counter())
    rng = np.random.default_rng(14)
    Lq, D = 96, 64
    buf = np.zeros(2 * Lq * D + 1, np.float32)
    q = buf[1:].reshape(1, 2, Lq, D)  # 4 bytes past an aligned address
    q[...] = rng.standard_normal(q.shape)
    k = rng.standard_normal((1, 1, 160, D)).astype(np.float32)
    kw = dict(query_block=32, key_block=32, stride=8, causal=True, method="single_pass")
    with caplog.at_level(logging.WARNING, logger=_tma.__name__):
        a = _run(q, k, **kw, views=(q, k))
        b = _run(q, k, **kw, views=(q, k))
    assert pass_a_spy.use_tma == [False, False]
    assert _tma.TMA_FALLBACKS == {("psa_estimate_scores", "unaligned"): 2}
    assert len([r for r in caplog.records if "16-byte aligned" in r.getMessage()]) == 1
    ref = oracle.xattn_scores(q, k, query_block=32, key_block=32, stride=8, causal=True)
    np.testing.assert_allclose(a, ref, rtol=1e-3, atol=1e-6)
    np.testing.assert_array_equal(a, b)


def test_use_tma_argument_error():
    from paddlemix_psa.kernels.estimate import psa_estimate_scores

    q = np.zeros((1, 1, 64, 64), np.float32)
    out = np.zeros((1, 1, 1, 2), np.float32)
    with pytest.raises(ValueError, match="use_tma must be None, True or False"):
        psa_estimate_scores(hv(q), hv(q), hv(out), query_block=64, key_block=32, stride=8, causal=True, scale=None,
                            layout="BHSD", use_tma="yes")
