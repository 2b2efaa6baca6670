"""psa_similarity_cap under the Triton interpreter vs the fp64 oracle (docs/ALGORITHM.md §8 F5; T7)."""
import numpy as np
import pytest

import oracle
from _psa_helpers import to_layout
from hostview import hv

TAU = (0.75, 0.70, 0.70)


def _run(k, *, key_block, thresholds=TAU, layout="BHSD", view=None):
    from paddlemix_psa.kernels.similarity import psa_similarity_cap

    B, H, Lk, _ = k.shape
    out = np.full((B, H, -(-Lk // key_block)), -1, np.int8)
    psa_similarity_cap(hv(view if view is not None else to_layout(k, layout)), hv(out), key_block=key_block,
                       thresholds=thresholds, layout=layout)
    return out


def _keys(rng, B, H, Lk, D, dtype):
    """Keys whose local similarity varies smoothly from block to block, so every cap level occurs."""
    base = rng.standard_normal((B, H, 1, D))
    noise = rng.standard_normal((B, H, Lk, D))
    amp = np.abs(np.sin(np.arange(Lk) / 11.0))[None, None, :, None] * 1.2
    drift = np.cumsum(rng.standard_normal((B, H, Lk, D)) * 0.15, axis=2)
    return (base + drift + amp * noise).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("Lk,key_block,D,layout", [
    (256, 32, 64, "BHSD"),
    (300, 32, 80, "BSHD"),   # tail block of 12 keys
    (13, 16, 64, "BHSD"),    # tail block 13 - 0: p = 8 has one complete group, 5 keys left over
    (7, 32, 96, "BHSD"),     # Lk < key_block, no complete group of 8
    (3, 16, 64, "BHSD"),     # only one complete group of 2
    (1, 64, 128, "BHSD"),    # no complete group at all -> cap 1
    (517, 128, 128, "BSHD"),
    (200, 64, 64, "BHSD"),
])
def test_cap_matches_oracle(Lk, key_block, D, layout, dtype):
    rng = np.random.default_rng(Lk + key_block + D)
    k = _keys(rng, 2, 2, Lk, D, dtype)
    got = _run(k, key_block=key_block, layout=layout)
    ref = oracle.similarity_cap(k, key_block=key_block, thresholds=TAU)
    np.testing.assert_array_equal(got, ref)


def _designed_keys(rng, caps, key_block, D):
    """Keys whose cap is ``caps[j]`` by construction: runs of identical directions of length 8 / 4 / 2 / 1."""
    A, Bv = rng.standard_normal(D), rng.standard_normal(D)
    Bv -= (Bv @ A) / (A @ A) * A  # orthogonal to A
    k = np.empty((len(caps) * key_block, D))
    for j, c in enumerate(caps):
        for t in range(key_block):
            if c == 1:
                k[j * key_block + t] = rng.standard_normal(D)
            else:
                k[j * key_block + t] = A if (t // c) % 2 == 0 else Bv
    k += 0.01 * rng.standard_normal(k.shape)
    return k[None, None].astype(np.float32)


def test_cap_levels_all_occur():
    rng = np.random.default_rng(0)
    caps = [8, 4, 2, 1, 4, 8, 2, 1]
    k = _designed_keys(rng, caps, 32, 64)
    got = _run(k, key_block=32)
    np.testing.assert_array_equal(got[0, 0], caps)
    np.testing.assert_array_equal(got, oracle.similarity_cap(k, key_block=32, thresholds=TAU))


def test_tail_block_uses_complete_groups_only():
    # constant keys: every complete group has cos 1. Lk = 37, key_block = 32: block 1 holds keys 32..36, so
    # p = 2 and p = 4 have complete groups (sim 1 -> pass) and p = 8 none (-inf): cap 4. Block 0: cap 8.
    k = np.ones((1, 1, 37, 64), np.float32)
    got = _run(k, key_block=32)
    np.testing.assert_array_equal(got[0, 0], [8, 4])
    # Lk = 33: block 1 holds one key, no complete group at all: cap 1
    np.testing.assert_array_equal(_run(np.ones((1, 1, 33, 64), np.float32), key_block=32)[0, 0], [8, 1])


def test_non_monotone_cap():
    # sim2 fails, sim4 passes: L = 4 (max, not the first failing level); first/last of groups of 2 are orthogonal
    D = 64
    e = np.eye(D, dtype=np.float32)
    pattern = [0, 1, 1, 0, 2, 1, 1, 2]  # directions of keys 0..7 (repeated)
    k = np.stack([e[pattern[t % 8]] for t in range(16)])[None, None]
    # p = 2: (0,1) (2,3) (4,5) (6,7) all orthogonal -> 0; p = 4: (0,3) and (4,7) identical -> 1; p = 8: (0,7) -> 0
    got = _run(k, key_block=16)
    assert got[0, 0, 0] == 4
    np.testing.assert_array_equal(got, oracle.similarity_cap(k, key_block=16, thresholds=TAU))


def test_zero_keys_and_strict_threshold():
    # zero keys: norms clamp to 1e-8, cos = 0 -> every level fails -> 1; thresholds are strict (sim > tau)
    k = np.zeros((1, 1, 64, 64), np.float32)
    assert (_run(k, key_block=32) == 1).all()
    ones = np.ones((1, 1, 64, 64), np.float32)
    assert (_run(ones, key_block=32, thresholds=(0.5, 0.5, 0.5)) == 8).all()
    assert (_run(ones, key_block=32, thresholds=(2.0, 2.0, 2.0)) == 1).all()


def test_nan_past_length_is_never_read():
    rng = np.random.default_rng(1)
    Lk, D = 45, 64
    big = np.full((1, 2, 64, D), np.nan, np.float32)
    big[:, :, :Lk] = _keys(rng, 1, 2, Lk, D, np.float32)
    view = big[:, :, :Lk]
    got = _run(np.ascontiguousarray(view), key_block=16, view=view)
    np.testing.assert_array_equal(got, oracle.similarity_cap(view, key_block=16, thresholds=TAU))


def test_argument_errors():
    from paddlemix_psa.kernels.similarity import psa_similarity_cap

    k = np.zeros((1, 1, 64, 64), np.float32)
    with pytest.raises(ValueError, match="key_block"):
        psa_similarity_cap(hv(k), hv(np.zeros((1, 1, 3), np.int8)), key_block=24, thresholds=TAU, layout="BHSD")
    with pytest.raises(ValueError, match="out"):
        psa_similarity_cap(hv(k), hv(np.zeros((1, 1, 3), np.int8)), key_block=32, thresholds=TAU, layout="BHSD")
