"""psa_pool_kv under the Triton interpreter vs the fp64 oracle (docs/ALGORITHM.md §3)."""
import numpy as np
import pytest

import oracle
from _psa_helpers import run_pool, to_layout
from hostview import hv


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float16, 2e-3)])
@pytest.mark.parametrize("Lk", [1, 7, 8, 13, 64, 100])
@pytest.mark.parametrize("D", [64, 80])
def test_pool_matches_oracle(dtype, tol, Lk, D):
    rng = np.random.default_rng(Lk * 7 + D)
    k = rng.standard_normal((2, 2, Lk, D)).astype(dtype)
    v = rng.standard_normal((2, 2, Lk, D)).astype(dtype)
    kp, vp = run_pool(k, v)
    for p in (2, 4, 8):
        assert kp[p].shape == (2, 2, -(-Lk // p), D)  # no ghost tokens (rule 2)
        for got, x in ((kp[p], k), (vp[p], v)):
            ref, counts = oracle.pool_mean(x, p)
            assert not np.isnan(got).any()
            np.testing.assert_allclose(got.astype(np.float64), ref, atol=tol, rtol=tol)


def test_pool_tail_is_valid_token_mean():
    # Lk = 13: the last group of level 8 holds 5 tokens; its mean must divide by 5, not 8 (rule 2 deviation)
    k = np.zeros((1, 1, 13, 64), np.float32)
    k[0, 0, 8:] = 1.0
    kp, _ = run_pool(k, k.copy())
    np.testing.assert_allclose(kp[8][0, 0, 1], 1.0)
    np.testing.assert_allclose(kp[4][0, 0, 3], 1.0)  # single-token group
    np.testing.assert_allclose(kp[2][0, 0, 6], 1.0)


@pytest.mark.parametrize("levels", [(2,), (4, 8), (8,)])
def test_pool_subset_of_levels(levels):
    rng = np.random.default_rng(1)
    k = rng.standard_normal((1, 2, 37, 96)).astype(np.float32)
    kp, vp = run_pool(k, k.copy(), levels=levels)
    assert set(kp) == set(levels)
    for p in levels:
        np.testing.assert_allclose(kp[p], oracle.pool_mean(k, p)[0], atol=1e-6)


def test_pool_bshd_layout():
    rng = np.random.default_rng(2)
    k = rng.standard_normal((2, 3, 29, 128)).astype(np.float32)
    v = rng.standard_normal((2, 3, 29, 128)).astype(np.float32)
    kp, vp = run_pool(k, v, layout="BSHD")
    for p in (2, 4, 8):
        np.testing.assert_allclose(kp[p], oracle.pool_mean(k, p)[0], atol=1e-6)
        np.testing.assert_allclose(vp[p], oracle.pool_mean(v, p)[0], atol=1e-6)


def test_pool_ignores_memory_beyond_lk():
    from paddlemix_psa.kernels.pool import psa_pool_kv

    rng = np.random.default_rng(3)
    buf = np.full((1, 1, 40, 64), np.nan, np.float32)
    buf[:, :, :21] = rng.standard_normal((1, 1, 21, 64))
    k = buf[:, :, :21]  # strided view; NaN past Lk
    kp = {p: np.zeros((1, 1, -(-21 // p), 64), np.float32) for p in (2, 4, 8)}
    vp = {p: np.zeros_like(a) for p, a in kp.items()}
    psa_pool_kv(hv(k), hv(k), {p: hv(a) for p, a in kp.items()}, {p: hv(a) for p, a in vp.items()})
    for p in (2, 4, 8):
        assert not np.isnan(kp[p]).any()
        np.testing.assert_allclose(kp[p], oracle.pool_mean(np.ascontiguousarray(k), p)[0], atol=1e-6)


def test_pool_rejects_bad_args():
    from paddlemix_psa.kernels.pool import psa_pool_kv

    k = np.zeros((1, 1, 16, 72), np.float32)
    with pytest.raises(ValueError, match="head dim"):
        psa_pool_kv(hv(k), hv(k), {}, {})
    k = np.zeros((1, 1, 16, 64), np.float32)
    with pytest.raises(ValueError, match="layout"):
        psa_pool_kv(hv(k), hv(k), {}, {}, layout="BSH")
    bad = np.zeros((1, 1, 3, 64), np.float32)
    with pytest.raises(ValueError, match="shape"):
        psa_pool_kv(hv(k), hv(k), {4: hv(bad)}, {4: hv(bad)})


def test_tensorlike_helpers():
    from paddlemix_psa.kernels._tensorlike import dtype_name, shape, strides

    a = np.zeros((2, 3, 4, 8), np.float16)
    v = hv(a.transpose(0, 2, 1, 3))
    assert strides(v) == (96, 8, 32, 1) and shape(v) == (2, 4, 3, 8) and dtype_name(v) == "float16"
    with pytest.raises(TypeError, match="byte strides"):
        strides(a)
    paddle = pytest.importorskip("paddle")
    x = paddle.zeros([2, 3, 4, 8], dtype="bfloat16")
    assert strides(x) == (96, 32, 8, 1) and dtype_name(x) == "bfloat16" and shape(x) == (2, 3, 4, 8)
    assert strides(x.transpose([0, 2, 1, 3])) == (96, 8, 32, 1)
    for d in ("float16", "float32", "int8", "int32"):
        assert dtype_name(paddle.zeros([1], dtype=d)) == d
