"""psa_attn_fwd on GPU with torch tensors vs an fp32/fp64 torch oracle (docs/ALGORITHM.md §4, §5, §11: T1-T4, T9, T10).

Tolerances (rel-L2 against the fp32 oracle): bf16 <= 1e-2, fp16 <= 5e-3. Every output is poisoned with NaN
before the call, so an unwritten row fails.
"""

import numpy as np
import pytest
import torch

import oracle
import torch_oracle as T

RTOL = {"bfloat16": 1e-2, "float16": 5e-3, "float32": 1e-5}


def _qkv(cuda, B, Hq, Hkv, Lq, Lk, D, dtype_name, seed=0):
    import torch

    g = torch.Generator(device=cuda).manual_seed(seed)
    dt = getattr(torch, dtype_name)
    q = torch.randn((B, Hq, Lq, D), device=cuda, generator=g).to(dt)
    k = torch.randn((B, Hkv, Lk, D), device=cuda, generator=g).to(dt)
    v = torch.randn((B, Hkv, Lk, D), device=cuda, generator=g).to(dt)
    return q, k, v


def _rand_map(cuda, B, H, Lq, Lk, bq, bk, levels=(0, 1, 2, 4, 8), seed=0):
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    lv = torch.tensor(levels, dtype=torch.int8)
    idx = torch.randint(0, len(levels), (B, H, -(-Lq // bq), -(-Lk // bk)), generator=g)
    return lv[idx].to(cuda)


def _check(out, ref, dtype_name, what=""):
    import torch

    assert not torch.isnan(out).any(), f"NaN in output {what}"
    err = T.rel_l2(out.float(), ref.float())
    assert err <= RTOL[dtype_name], f"rel-L2 {err:.3e} > {RTOL[dtype_name]} {what}"


# ------------------------------------------------------------------------------ the oracles agree
@pytest.mark.parametrize("causal", [True, False])
def test_torch_oracle_matches_numpy_oracle(cuda, causal):
    import torch

    rng = np.random.default_rng(0)
    B, Hq, Hkv, Lq, Lk, D, bq, bk = 1, 4, 2, 45, 77, 64, 32, 16
    qn = rng.standard_normal((B, Hq, Lq, D))
    kn = rng.standard_normal((B, Hkv, Lk, D))
    vn = rng.standard_normal((B, Hkv, Lk, D))
    for gqa_mask, Hm in (("per_head", Hq), ("per_kv_group", Hkv)):
        M = rng.choice([0, 1, 2, 4, 8], size=(B, Hm, -(-Lq // bq), -(-Lk // bk))).astype(np.int8)
        ref = oracle.psa_attention(qn, kn, vn, M, query_block=bq, key_block=bk, causal=causal, gqa_mask=gqa_mask)
        q, k, v = (torch.tensor(x, device=cuda) for x in (qn, kn, vn))
        got = T.psa_attention(q, k, v, torch.tensor(M, device=cuda), query_block=bq, key_block=bk, causal=causal,
                              gqa_mask=gqa_mask, dtype=torch.float64)
        np.testing.assert_allclose(got.cpu().numpy(), ref, atol=1e-10, rtol=1e-10)
        lut, cnt = T.build_lut(torch.tensor(M, device=cuda), Lq=Lq, Lk=Lk, query_block=bq, key_block=bk,
                               causal=causal)
        lut_r, cnt_r = oracle.build_lut(M, Lq=Lq, Lk=Lk, query_block=bq, key_block=bk, causal=causal)
        assert np.array_equal(cnt.cpu().numpy(), cnt_r) and np.array_equal(lut.cpu().numpy(), lut_r)
    dref = oracle.dense_attention(qn, kn, vn, causal=causal)
    dgot = T.dense_attention(q, k, v, causal=causal, dtype=torch.float64)
    np.testing.assert_allclose(dgot.cpu().numpy(), dref, atol=1e-10, rtol=1e-10)
    Mt = torch.tensor(M, device=cuda)
    assert abs(T.density(Mt, Lq=Lq, Lk=Lk, query_block=bq, key_block=bk, causal=causal)
               - float(oracle.density(M, Lq=Lq, Lk=Lk, query_block=bq, key_block=bk, causal=causal).mean())) < 1e-9


# ------------------------------------------------------------------------------ T1 dense equivalence
T1_CASES = [  # D, G, Lq, Lk, causal, dtype
    (128, 7, 1, 1, True, "bfloat16"),
    (128, 7, 17, 17, True, "bfloat16"),
    (64, 1, 127, 127, True, "float16"),
    (80, 1, 129, 129, False, "bfloat16"),
    (96, 7, 1000, 1000, True, "bfloat16"),
    (128, 7, 4097, 4097, True, "bfloat16"),
    (128, 7, 1000, 4097, True, "bfloat16"),
    (64, 7, 1, 1000, True, "float16"),
    (128, 1, 4097, 4097, False, "float16"),
    (80, 7, 17, 1000, False, "bfloat16"),
]


@pytest.mark.parametrize("D,G,Lq,Lk,causal,dt", T1_CASES)
def test_all_level1_equals_dense(cuda, D, G, Lq, Lk, causal, dt):
    import torch

    Hkv = 2
    q, k, v = _qkv(cuda, 1, Hkv * G, Hkv, Lq, Lk, D, dt, seed=Lq + Lk)
    bq, bk = 128, 32
    M = torch.ones((1, Hkv * G, -(-Lq // bq), -(-Lk // bk)), dtype=torch.int8, device=cuda)
    out, _, _ = T.run_psa_kernel(q, k, v, M, query_block=bq, key_block=bk, causal=causal)
    ref = T.dense_attention(q, k, v, causal=causal)
    _check(out, ref, dt, "vs fp32 dense")
    if Lq == Lk:  # torch SDPA's is_causal is top-left aligned: only comparable when Lq == Lk
        sdpa = torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), is_causal=causal)
        assert T.rel_l2(out.float(), sdpa.float()) <= 2 * RTOL[dt]


def test_all_level1_without_pooled_levels(cuda):
    # the benchmark's variant: no pooled level compiled in
    import torch

    q, k, v = _qkv(cuda, 1, 28, 4, 2048, 2048, 128, "bfloat16", seed=3)
    M = torch.ones((1, 28, 16, 64), dtype=torch.int8, device=cuda)
    out, _, _ = T.run_psa_kernel(q, k, v, M, query_block=128, key_block=32, levels=())
    _check(out, T.dense_attention(q, k, v), "bfloat16")


# ------------------------------------------------------------------------------ T2 random maps, every level
@pytest.mark.parametrize("bk", [16, 32, 64, 128])
@pytest.mark.parametrize("layout", ["BHSD", "BSHD"])
def test_random_maps_every_key_block(cuda, bk, layout):
    q, k, v = _qkv(cuda, 1, 14, 2, 2048, 2048, 128, "bfloat16", seed=bk)
    M = _rand_map(cuda, 1, 14, 2048, 2048, 128, bk, seed=bk)
    out, _, _ = T.run_psa_kernel(T.to_layout(q, layout), T.to_layout(k, layout), T.to_layout(v, layout), M,
                                 query_block=128, key_block=bk, layout=layout)
    ref = T.psa_attention(q, k, v, M, query_block=128, key_block=bk)
    _check(T.from_layout(out, layout), ref, "bfloat16", f"bk={bk} {layout}")


@pytest.mark.parametrize("gqa_mask", ["per_head", "per_kv_group"])
@pytest.mark.parametrize("dt", ["float16", "bfloat16"])
def test_causal_offset_gqa_ragged(cuda, gqa_mask, dt):
    Lq, Lk = 333, 1777  # chunked prefill: off = 1444, ragged on every axis
    q, k, v = _qkv(cuda, 2, 28, 4, Lq, Lk, 128, dt, seed=5)
    M = _rand_map(cuda, 2, 28 if gqa_mask == "per_head" else 4, Lq, Lk, 128, 32, seed=5)
    out, lse, _ = T.run_psa_kernel(q, k, v, M, query_block=128, key_block=32, gqa_mask=gqa_mask, lse=True)
    ref = T.psa_attention(q, k, v, M, query_block=128, key_block=32, gqa_mask=gqa_mask)
    _check(out, ref, dt)
    assert not __import__("torch").isnan(lse).any()


@pytest.mark.parametrize("bq,bk,D", [(32, 16, 96), (64, 16, 64), (64, 128, 96), (32, 64, 64), (128, 16, 80)])
def test_block_geometries_head_dims(cuda, bq, bk, D):
    Lq = Lk = 1111
    q, k, v = _qkv(cuda, 1, 4, 2, Lq, Lk, D, "float16", seed=bq + bk + D)
    M = _rand_map(cuda, 1, 4, Lq, Lk, bq, bk, seed=bq * bk)
    for causal in (True, False):
        out, _, _ = T.run_psa_kernel(q, k, v, M, query_block=bq, key_block=bk, causal=causal)
        _check(out, T.psa_attention(q, k, v, M, query_block=bq, key_block=bk, causal=causal), "float16",
               f"causal={causal}")


def test_strided_inputs(cuda):
    # q/k/v as slices of a packed qkv projection (non-contiguous heads), BSHD
    import torch

    B, L, Hq, Hkv, D = 1, 700, 14, 2, 128
    qkv = torch.randn((B, L, Hq + 2 * Hkv, D), device=cuda, dtype=torch.bfloat16)
    q, k, v = qkv[:, :, :Hq], qkv[:, :, Hq:Hq + Hkv], qkv[:, :, Hq + Hkv:]
    M = _rand_map(cuda, B, Hq, L, L, 128, 32, seed=9)
    out, _, _ = T.run_psa_kernel(q, k, v, M, query_block=128, key_block=32, layout="BSHD")
    ref = T.psa_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), M, query_block=128,
                          key_block=32)
    _check(out.transpose(1, 2), ref, "bfloat16")


# ------------------------------------------------------------------------------ T3 small pooled blocks
@pytest.mark.parametrize("bk", [16, 32, 64])
@pytest.mark.parametrize("causal", [True, False])
def test_small_pooled_blocks_large_early_keys(cuda, bk, causal):
    import torch

    q, k, v = _qkv(cuda, 1, 7, 1, 1024, 1024, 128, "float16", seed=bk)
    k[:, :, :bk] *= 20
    v[:, :, :bk] += 30
    M = _rand_map(cuda, 1, 7, 1024, 1024, 128, bk, levels=(4, 8), seed=bk)
    M[..., 0] = 0  # the large early keys are never legitimately attended
    out, _, _ = T.run_psa_kernel(q, k, v, M, query_block=128, key_block=bk, causal=causal)
    ref = T.psa_attention(q, k, v, M, query_block=128, key_block=bk, causal=causal)
    _check(out, ref, "float16")
    assert float(out.float().abs().max()) < 10.0


# ------------------------------------------------------------------------------ T4 no NaN
def test_all_zero_mask_gives_zero(cuda):
    import torch

    q, k, v = _qkv(cuda, 1, 4, 2, 300, 300, 128, "bfloat16")
    M = torch.zeros((1, 4, 3, 10), dtype=torch.int8, device=cuda)
    out, lse, _ = T.run_psa_kernel(q, k, v, M, query_block=128, key_block=32, lse=True)
    assert torch.all(out == 0) and torch.all(torch.isneginf(lse))


@pytest.mark.parametrize("layout", ["BHSD", "BSHD"])
@pytest.mark.parametrize("causal", [True, False])
def test_nan_memory_beyond_lk(cuda, layout, causal):
    import torch

    Lq, Lk, extra = 500, 1001, 300
    q, k, v = _qkv(cuda, 1, 7, 1, Lq, Lk, 128, "bfloat16", seed=4)
    views = []
    for x in (k, v):
        xl = T.to_layout(x, layout)
        if layout == "BHSD":
            big = torch.full((1, 1, Lk + extra, 128), float("nan"), device=cuda, dtype=x.dtype)
            big[:, :, :Lk] = xl
            views.append(big[:, :, :Lk])
        else:
            big = torch.full((1, Lk + extra, 1, 128), float("nan"), device=cuda, dtype=x.dtype)
            big[:, :Lk] = xl
            views.append(big[:, :Lk])
    M = _rand_map(cuda, 1, 7, Lq, Lk, 128, 32, seed=4)
    out, _, _ = T.run_psa_kernel(T.to_layout(q, layout), views[0], views[1], M, query_block=128, key_block=32,
                                 causal=causal, layout=layout)
    _check(T.from_layout(out, layout), T.psa_attention(q, k, v, M, query_block=128, key_block=32, causal=causal),
           "bfloat16")


def test_fully_masked_first_tiles(cuda):
    import torch

    q, k, v = _qkv(cuda, 1, 2, 1, 512, 512, 128, "float16", seed=8)
    M = torch.zeros((1, 2, 4, 16), dtype=torch.int8, device=cuda)
    for i in range(4):
        M[:, :, i, 4 * i:4 * i + 4] = 8  # only pooled diagonal blocks: conservative rule, empty first rows
    out, lse, _ = T.run_psa_kernel(q, k, v, M, query_block=128, key_block=32, lse=True)
    _check(out, T.psa_attention(q, k, v, M, query_block=128, key_block=32), "float16")
    assert torch.all(out[:, :, :7] == 0) and torch.all(torch.isneginf(lse[:, :, :7]))


# ------------------------------------------------------------------------------ T10 tolerance rule
@pytest.mark.parametrize("dt,atol", [("bfloat16", 4e-3), ("float16", 1e-3)])
def test_tolerance_rule(cuda, dt, atol):
    import torch

    q, k, v = _qkv(cuda, 1, 7, 1, 1024, 1024, 128, dt, seed=10)
    M = _rand_map(cuda, 1, 7, 1024, 1024, 128, 32, seed=10)
    M[..., 0] = 1
    out, _, _ = T.run_psa_kernel(q, k, v, M, query_block=128, key_block=32)
    ref64 = T.psa_attention(q, k, v, M, query_block=128, key_block=32, dtype=torch.float64)
    err = float((out.double() - ref64).abs().max())
    dense_lp = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(7, 1),
                                                                v.repeat_interleave(7, 1), is_causal=True)
    dense64 = T.dense_attention(q, k, v, dtype=torch.float64)
    err_ref = float((dense_lp.double() - dense64).abs().max())
    assert err <= 2 * err_ref + atol, (err, err_ref)


# ------------------------------------------------------------------------------ T9 compile count
def _n_variants(fn):
    dc = getattr(fn, "device_caches", None)
    if dc is not None:
        return sum(len(c[0]) for c in dc.values())
    return sum(len(c) for c in fn.cache.values())


def test_lengths_do_not_recompile(cuda):
    import torch

    from paddlemix_psa.kernels import attn_fwd, pool

    def once(L):
        q, k, v = _qkv(cuda, 1, 7, 1, L, L, 128, "bfloat16", seed=L)
        M = _rand_map(cuda, 1, 7, L, L, 128, 32, seed=L)
        T.run_psa_kernel(q, k, v, M, query_block=128, key_block=32)

    once(1000)
    torch.cuda.synchronize()
    n_attn, n_pool = _n_variants(attn_fwd._psa_attn_fwd_kernel), _n_variants(pool._psa_pool_kernel)
    for L in range(1001, 1017):
        once(L)
    torch.cuda.synchronize()
    assert _n_variants(attn_fwd._psa_attn_fwd_kernel) == n_attn
    assert _n_variants(pool._psa_pool_kernel) == n_pool


# ------------------------------------------------------------------------------ the kernel pipeline
@pytest.mark.parametrize("gqa_mask", ["per_head", "per_kv_group"])
def test_pipeline_end_to_end(cuda, gqa_mask):
    import torch

    from paddlemix_psa.kernels.pipeline import psa_forward_kernels

    Lq = Lk = 4097
    q, k, v = _qkv(cuda, 1, 28, 4, Lq, Lk, 128, "bfloat16", seed=12)

    def alloc(shape, dt):
        return torch.empty(tuple(shape), device=cuda, dtype=getattr(torch, dt))

    out, M, lut, cnt = psa_forward_kernels(q, k, v, alloc=alloc, gqa_mask=gqa_mask)
    assert M.shape == (1, 28 if gqa_mask == "per_head" else 4, 33, 129)
    assert set(torch.unique(M).tolist()) <= {0, 1, 2, 4, 8}
    ref = T.psa_attention(q, k, v, M, query_block=128, key_block=32, gqa_mask=gqa_mask)
    _check(out, ref, "bfloat16", gqa_mask)


@pytest.mark.parametrize("bk", [16, 32, 128])
@pytest.mark.parametrize("runs", ["tma", "gather"])
@pytest.mark.parametrize("D", [128, 80])
def test_level1_runs(cuda, bk, runs, D):
    # level-1 runs (dense bands + random maps) loaded as TMA slabs or gathered, ragged lengths, vs the oracle
    Lq, Lk = 1500, 2222
    q, k, v = _qkv(cuda, 1, 14, 2, Lq, Lk, D, "bfloat16", seed=bk)
    M = _rand_map(cuda, 1, 14, Lq, Lk, 128, bk, seed=bk + 1)
    M[..., : M.shape[-1] // 3] = 1
    out, _, _ = T.run_psa_kernel(q, k, v, M, query_block=128, key_block=bk, runs=True, use_tma=runs == "tma")
    _check(out, T.psa_attention(q, k, v, M, query_block=128, key_block=bk), "bfloat16", runs)


def test_runs_agree_with_plain_index_list(cuda):
    # all level 1: the runs path and the plain gathered path compute the same attention (fp32 accumulation,
    # different tile order: within bf16 rounding of each other), and neither writes NaN
    L = 4096
    q, k, v = _qkv(cuda, 1, 28, 4, L, L, 128, "bfloat16", seed=5)
    M = torch.ones((1, 28, L // 128, L // 32), device=cuda, dtype=torch.int8)
    a, _, _ = T.run_psa_kernel(q, k, v, M, query_block=128, key_block=32, runs=True)
    b, _, _ = T.run_psa_kernel(q, k, v, M, query_block=128, key_block=32)
    assert not torch.isnan(a).any() and not torch.isnan(b).any()
    assert float((a.float() - b.float()).abs().max()) < 2e-2
    _check(a, T.dense_attention(q, k, v), "bfloat16", "runs-dense")
