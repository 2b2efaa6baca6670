"""paddlemix_psa.synthetic: deterministic structured inputs, and SPARSE_SETTINGS really concentrate attention."""
import numpy as np

from paddlemix_psa.synthetic import SPARSE_SETTINGS, structured_qkv


def _keys_for_mass(q, k, mass):
    """Mean over causal rows of the fraction of visible keys needed to cover ``mass`` of the softmax (float64)."""
    L, D = k.shape
    s = (q.astype(np.float64) @ k.astype(np.float64).T) / np.sqrt(D)
    s = np.where(np.tril(np.ones((L, L), bool)), s, -np.inf)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    cum = np.cumsum(-np.sort(-p, axis=1), axis=1)
    needed = (cum < mass).sum(axis=1) + 1
    return float(np.mean(needed[L // 2:] / (np.arange(L)[L // 2:] + 1)))


def test_same_seed_same_arrays_and_shapes():
    a = structured_qkv(512, q_heads=4, kv_heads=2, head_dim=32, seed=3, **SPARSE_SETTINGS)
    b = structured_qkv(512, q_heads=4, kv_heads=2, head_dim=32, seed=3, **SPARSE_SETTINGS)
    assert [x.shape for x in a] == [(1, 4, 512, 32), (1, 2, 512, 32), (1, 2, 512, 32)]
    for x, y in zip(a, b):
        assert x.dtype == np.float32 and np.array_equal(x, y) and np.isfinite(x).all()


def test_sparse_settings_concentrate_attention():
    kw = dict(q_heads=2, kv_heads=1, head_dim=64, seed=7)
    q0, k0, _ = structured_qkv(1024, **kw)
    q1, k1, _ = structured_qkv(1024, **kw, **SPARSE_SETTINGS)
    for h in range(2):
        base = _keys_for_mass(q0[0, h], k0[0, 0], 0.7)
        sharp = _keys_for_mass(q1[0, h], k1[0, 0], 0.7)
        # 70% of the attention mass (the paper preset's level-1 share) sits on far fewer keys
        assert sharp < 0.5 * base, (h, base, sharp)
