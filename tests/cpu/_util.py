"""Small helpers shared by the CPU tests."""
import numpy as np
import paddle


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def qkv(rng, B, Hq, Hkv, Lq, Lk, D):
    return (rng.standard_normal((B, Hq, Lq, D)), rng.standard_normal((B, Hkv, Lk, D)),
            rng.standard_normal((B, Hkv, Lk, D)))


def pt(*arrays, dtype="float32"):
    out = tuple(paddle.to_tensor(np.ascontiguousarray(a)).astype(dtype) for a in arrays)
    return out if len(out) > 1 else out[0]


def random_level_map(rng, shape, levels=(0, 1, 2, 4, 8)):
    """Random levels; every level appears at least once when the map has room for all of them."""
    M = rng.choice(np.asarray(levels, np.int8), size=shape).astype(np.int8)
    flat = M.reshape(-1)
    if flat.size >= len(levels):
        where = rng.choice(flat.size, size=len(levels), replace=False)
        flat[where] = levels
    return M


def n_blocks(L, b):
    return -(-L // b)
