"""Compile-only (docs/LAUNCH.md §6 layer 2): every variant of the estimator, similarity-cap, select and LUT
kernels lowers to sm_90 PTX/cubin on a CPU machine, through a stub driver and fake tensor-likes (no GPU, no
torch). Each launcher runs its real argument checks and grid logic; the kernel call is turned into a warmup.
"""
from __future__ import annotations

import os

import pytest

from _sm90 import COMPILE_ONLY, SMEM_LIMIT, FakeTensor, stub_driver

triton = pytest.importorskip("triton")

pytestmark = COMPILE_ONLY
#: PSA_COMPILE_ALL=1 builds every listed variant; the default set covers each axis once (about a minute)
_ALL = os.environ.get("PSA_COMPILE_ALL") == "1"


def _subset(full, default_idx):
    return full if _ALL else [full[i] for i in default_idx]

ARCH = 90


@pytest.fixture()
def compiled(tmp_path, monkeypatch):
    """Turn every launch of our kernels into a warmup; collect the compiled kernels."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    from triton import knobs

    monkeypatch.setattr(knobs.cache, "dir", str(tmp_path / "cache"), raising=False)
    from paddlemix_psa.kernels import estimate, select, similarity

    kernels = [estimate._xattn_scores_kernel, estimate._xattn_partial_kernel, estimate._xattn_finalize_kernel,
               similarity._similarity_cap_kernel, select._select_levels_kernel, select._build_lut_kernel]
    out = []
    for kern in kernels:
        orig = kern.run

        def run(*args, _orig=orig, **kwargs):
            kwargs["warmup"] = True
            k = _orig(*args, **kwargs)
            out.append(k)
            return k

        monkeypatch.setattr(kern, "run", run)
    with stub_driver(ARCH):
        yield out


def _check(kernels):
    assert kernels, "nothing compiled"
    for k in kernels:
        assert k is not None
        assert k.asm.get("cubin"), "no cubin produced"
        assert k.metadata.shared <= SMEM_LIMIT, f"shared memory {k.metadata.shared} > {SMEM_LIMIT}"


def _fake_alloc(shp, dt):
    return FakeTensor(shp, dt)


@pytest.mark.parametrize("method", ["two_pass", "single_pass"])
@pytest.mark.parametrize("dtype,D,causal", _subset([
    ("bfloat16", 128, True), ("float16", 80, False), ("float32", 64, True), ("bfloat16", 96, False),
    ("float32", 128, True), ("float32", 80, True), ("float16", 96, True), ("float16", 128, False),
], [0, 1, 2, 3]))
def test_compile_estimate(compiled, dtype, D, causal, method):
    from paddlemix_psa.kernels.estimate import psa_estimate_scores

    B, Hq, Hkv, Lq, Lk = 1, 28, 4, 1000, 1000
    for bq, bk, S in ((128, 32, 16), (128, 128, 8), (64, 16, 16), (32, 128, 2), (32, 64, 32)):
        q = FakeTensor((B, Hq, Lq, D), dtype)
        k = FakeTensor((B, Hkv, Lk, D), dtype)
        out = FakeTensor((B, Hq, -(-Lq // bq), -(-Lk // bk)), "float32")
        psa_estimate_scores(q, k, out, query_block=bq, key_block=bk, stride=S, causal=causal, scale=None,
                            layout="BHSD", method=method, scratch=_fake_alloc if method == "single_pass" else None)
    _check(compiled)
    if method == "single_pass":
        names = {k.name for k in compiled}
        assert {"_xattn_partial_kernel", "_xattn_finalize_kernel"} <= names, names


@pytest.mark.parametrize("method", ["two_pass", "single_pass", "single_pass_flat", "single_pass_k64"])
@pytest.mark.parametrize("block_a,block_c,num_warps,num_stages", _subset([
    (128, 64, 8, 2), (128, 128, 8, 2), (64, 64, 4, 3), (16, 64, 4, 2), (128, 64, 8, 3), (64, 128, 4, 2),
    (128, 32, 4, 3), (32, 64, 4, 2), (128, 128, 8, 3), (128, 64, 8, 4),
], [1, 2, 3, 4]))
def test_compile_estimate_tiles(compiled, block_a, block_c, num_warps, num_stages, method):
    from paddlemix_psa.kernels.estimate import psa_estimate_scores

    q = FakeTensor((1, 32768, 28, 128), "bfloat16")  # BSHD
    k = FakeTensor((1, 32768, 4, 128), "bfloat16")
    out = FakeTensor((1, 28, 256, 1024), "float32")
    psa_estimate_scores(q, k, out, query_block=128, key_block=32, stride=16, causal=True, scale=None, layout="BSHD",
                        block_a=block_a, block_c=block_c, num_warps=num_warps, num_stages=num_stages,
                        method=method.split("_flat")[0].split("_k64")[0], flatten=method.endswith("_flat"),
                        block_k=64 if method.endswith("_k64") else None,
                        scratch=_fake_alloc if method != "two_pass" else None)
    _check(compiled)


def test_estimate_single_pass_lengths_do_not_add_variants(compiled):
    """docs/ALGORITHM.md T9 for the single-pass estimator: lengths 1000-1016 compile each of its two kernels once."""
    from paddlemix_psa.kernels.estimate import psa_estimate_scores

    for L in range(1000, 1017):
        q, k = FakeTensor((1, 28, L, 128), "bfloat16"), FakeTensor((1, 4, L, 128), "bfloat16")
        sc = FakeTensor((1, 28, -(-L // 128), -(-L // 32)), "float32")
        psa_estimate_scores(q, k, sc, query_block=128, key_block=32, stride=16, causal=True, scale=None,
                            layout="BHSD", scratch=_fake_alloc)
    assert sorted(k.name for k in {id(k): k for k in compiled}.values()) == ["_xattn_finalize_kernel",
                                                                             "_xattn_partial_kernel"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("key_block", [16, 32, 64, 128])
def test_compile_similarity(compiled, dtype, key_block):
    from paddlemix_psa.kernels.similarity import psa_similarity_cap

    for D in (64, 80, 96, 128):
        k = FakeTensor((1, 4, 1000, D), dtype)
        out = FakeTensor((1, 4, -(-1000 // key_block)), "int8")
        psa_similarity_cap(k, out, key_block=key_block, thresholds=(0.75, 0.7, 0.7), layout="BHSD")
    _check(compiled)


@pytest.mark.parametrize("mode,causal,nk", _subset([  # NK_PAD buckets 16, 512, 4096
    ("energybound", True, 5), ("topk", False, 300), ("energybound", True, 4096), ("topk", True, 5),
    ("energybound", False, 300), ("topk", False, 4096),
], [0, 1, 2]))
def test_compile_select(compiled, mode, causal, nk):
    from paddlemix_psa.kernels.select import psa_build_lut, psa_select_levels

    bq, bk = 128, 32
    Lk = nk * bk - 3
    Lq = Lk
    nq = -(-Lq // bq)
    scores = FakeTensor((1, 28, nq, nk), "float32")
    m = FakeTensor((1, 28, nq, nk), "int8")
    cap = FakeTensor((1, 4, nk), "int8")
    cnt = FakeTensor((8,), "int32")
    ratios = {1: (0, .6), 2: (.6, .8), 4: (.8, .9), 8: (.9, .9), 0: (.9, 1)}
    for kw in (dict(), dict(sim_cap=cap, gqa_group=7, counters=cnt, dense_tail_tokens=512, prompt_end=Lk - 7)):
        psa_select_levels(scores, m, Lq=Lq, Lk=Lk, query_block=bq, key_block=bk, causal=causal, mode=mode,
                          ends=ratios, force_sink=causal, **kw)
    psa_build_lut(m, FakeTensor((1, 28, nq, nk), "int32"), FakeTensor((1, 28, nq, 4), "int32"), Lq=Lq, Lk=Lk,
                  query_block=bq, key_block=bk, causal=causal)
    _check(compiled)


def test_lengths_do_not_add_variants(compiled):
    """docs/ALGORITHM.md T9 for these kernels: lengths 1000-1016 add no variant after the first length."""
    from paddlemix_psa.kernels.estimate import psa_estimate_scores
    from paddlemix_psa.kernels.select import psa_build_lut, psa_select_levels
    from paddlemix_psa.kernels.similarity import psa_similarity_cap

    ratios = {1: (0, .6), 2: (.6, .8), 4: (.8, .9), 8: (.9, .9), 0: (.9, 1)}
    after_first = None
    for L in range(1000, 1017):
        nq, nk = -(-L // 128), -(-L // 32)
        q, k = FakeTensor((1, 28, L, 128), "bfloat16"), FakeTensor((1, 4, L, 128), "bfloat16")
        sc = FakeTensor((1, 28, nq, nk), "float32")
        psa_estimate_scores(q, k, sc, query_block=128, key_block=32, stride=16, causal=True, scale=None,
                            layout="BHSD")
        psa_similarity_cap(k, FakeTensor((1, 4, nk), "int8"), key_block=32, thresholds=(0.75, 0.7, 0.7),
                           layout="BHSD")
        m = FakeTensor((1, 28, nq, nk), "int8")
        psa_select_levels(sc, m, Lq=L, Lk=L, query_block=128, key_block=32, causal=True, mode="energybound",
                          ends=ratios, dense_tail_tokens=512)
        psa_build_lut(m, FakeTensor((1, 28, nq, nk), "int32"), FakeTensor((1, 28, nq, 4), "int32"), Lq=L, Lk=L,
                      query_block=128, key_block=32, causal=True)
        if after_first is None:
            after_first = len({id(k) for k in compiled})
    distinct = {id(k) for k in compiled}
    # estimate + similarity once each; select and LUT once per power-of-two row-width bucket (16, 32 here)
    assert len(distinct) == after_first == 6, f"{len(distinct)} compiled variants over 17 lengths"
