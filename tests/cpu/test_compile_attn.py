"""Compile-only: build the attention and pooling kernels for sm_90 on a CPU machine (docs/LAUNCH.md §6 layer 2).

A stub driver (device 0, stream 0, ``GPUTarget("cuda", 90, 32)``) lets ``kernel.warmup`` run the whole
compiler (TTIR -> TTGIR -> PTX -> cubin with the bundled ptxas) without a GPU. Each variant must fit the
227 KiB of shared memory an sm_90 block can have. ``PSA_COMPILE_ALL=1`` sweeps every head dim x key block x
query block x dtype x causal; the default set covers each axis once.
"""
import os

import pytest

from _sm90 import COMPILE_ONLY, SMEM_LIMIT, FakeTensor, stub_driver

triton = pytest.importorskip("triton")

pytestmark = COMPILE_ONLY


@pytest.fixture
def sm90(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))
    with stub_driver(90):
        yield


def _attn_variant(D, bq, bk, dtype, causal, levels, gqa_mask="per_head", lse=False, tma=True):
    from paddlemix_psa.kernels import attn_fwd

    B, Hq, Hkv, L = 1, 28, 4, 4096
    q = FakeTensor((B, Hq, L, D), dtype)
    k, v = FakeTensor((B, Hkv, L, D), dtype), FakeTensor((B, Hkv, L, D), dtype)
    kp = {p: FakeTensor((B, Hkv, -(-L // p), D), dtype) for p in levels if p > 1}
    vp = {p: FakeTensor((B, Hkv, -(-L // p), D), dtype) for p in levels if p > 1}
    Hm = Hq if gqa_mask == "per_head" else Hkv
    nq, nk = -(-L // bq), -(-L // bk)
    lut, cnt = FakeTensor((B, Hm, nq, nk), "int32"), FakeTensor((B, Hm, nq, 4), "int32")
    runs = FakeTensor((B, Hm, nq), "int32") if tma is not None else None
    grid, args, meta = attn_fwd._attn_launch_args(
        q, k, v, kp, vp, lut, cnt, FakeTensor(q.shape, dtype), query_block=bq, key_block=bk, causal=causal, scale=None,
        layout="BHSD", gqa_mask=gqa_mask, lse=FakeTensor((B, Hq, L), "float32") if lse else None, levels=levels,
        runs=runs, config=None if tma is None else {"use_tma": tma})
    assert meta["USE_TMA"] == bool(tma)
    return attn_fwd._psa_attn_fwd_kernel.warmup(*args, grid=grid, **meta)


DEFAULT_SET = [  # D, bq, bk, dtype, causal, levels
    (128, 128, 32, "bfloat16", True, (1, 2, 4, 8)),
    (128, 128, 32, "bfloat16", True, (1,)),
    (128, 128, 32, "bfloat16", True, (1, 2, 4)),
    (128, 128, 16, "bfloat16", True, (1, 2, 4, 8)),
    (128, 128, 64, "float16", False, (1, 2, 4, 8)),
    (128, 128, 128, "bfloat16", True, (1, 2, 4, 8)),
    (64, 64, 32, "float16", True, (1, 2, 4, 8)),
    (80, 128, 32, "bfloat16", True, (1, 2, 4, 8)),
    (96, 32, 16, "bfloat16", False, (1, 2, 4, 8)),
]


def _all_variants():
    out = []
    for D in (64, 80, 96, 128):
        for bq in (32, 64, 128):
            for bk in (16, 32, 64, 128):
                for dt in ("float16", "bfloat16"):
                    for causal in (True, False):
                        out.append((D, bq, bk, dt, causal, (1, 2, 4, 8)))
    return out


VARIANTS = _all_variants() if os.environ.get("PSA_COMPILE_ALL") == "1" else DEFAULT_SET


@pytest.mark.parametrize("D,bq,bk,dt,causal,levels", VARIANTS)
@pytest.mark.parametrize("tma", [True, False, None], ids=["runs-tma", "runs-gather", "no-runs"])
def test_attn_compiles_for_sm90(sm90, D, bq, bk, dt, causal, levels, tma):
    # TMA slabs are the sm_90 path; runs gathered through pointers are what sm_80/86/89 get
    kern = _attn_variant(D, bq, bk, dt, causal, levels, tma=tma)
    shared = kern.metadata.shared
    assert 0 < shared <= SMEM_LIMIT, f"shared memory {shared} B exceeds {SMEM_LIMIT} B"
    if bq >= 64:  # a 32-row tile is below one warpgroup's wgmma M=64: Triton uses mma.sync there
        assert "wgmma" in kern.asm["ptx"], "expected Hopper wgmma instructions"
    if tma:
        assert "cp.async.bulk.tensor" in kern.asm["ptx"], "expected TMA loads for the level-1 runs"


def test_attn_compiles_with_lse_and_kv_group_mask(sm90):
    kern = _attn_variant(128, 128, 32, "bfloat16", True, (1, 2, 4), gqa_mask="per_kv_group", lse=True)
    assert kern.metadata.shared <= SMEM_LIMIT


@pytest.mark.parametrize("D,dt", [(128, "bfloat16"), (80, "float16"), (64, "float32")])
def test_pool_compiles_for_sm90(sm90, D, dt):
    from paddlemix_psa.kernels import pool

    L = 4097
    k, v = FakeTensor((1, 4, L, D), dt), FakeTensor((1, 4, L, D), dt)
    out = {p: FakeTensor((1, 4, -(-L // p), D), dt) for p in (2, 4, 8)}
    grid, args, meta = pool._pool_launch_args(k, v, out, dict(out), layout="BHSD", block_t=64, num_warps=4)
    kern = pool._psa_pool_kernel.warmup(*args, grid=grid, **meta)
    assert kern.metadata.shared <= SMEM_LIMIT
