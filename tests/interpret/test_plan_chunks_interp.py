"""The plan in chunks of query blocks (bounded scratch) gives exactly the level map of the plan in one piece."""
import numpy as np
import pytest

from hostview import hv


def _alloc(keep):
    def alloc(shape, dt):
        a = np.full(shape, -3 if dt.startswith("int") else np.nan, dtype=dt)  # poisoned
        keep.append(a)
        return hv(a)
    return alloc


@pytest.mark.parametrize("Lq,Lk,gqa_mask,layout", [(640, 640, "per_head", "BHSD"),
                                                    (316, 700, "per_kv_group", "BSHD")])
def test_chunked_plan_equals_whole_plan(Lq, Lk, gqa_mask, layout):
    from paddlemix_psa.kernels.pipeline import plan_chunks, psa_level_map_kernels
    from paddlemix_psa.synthetic import structured_qkv

    q, k, _ = structured_qkv(Lk, q_heads=4, kv_heads=2, head_dim=64, seed=Lq)
    q = np.ascontiguousarray(q[:, :, Lk - Lq:]).astype(np.float32)
    k = k.astype(np.float32)
    if layout == "BSHD":
        q, k = (np.ascontiguousarray(x.transpose(0, 2, 1, 3)) for x in (q, k))
    kw = dict(query_block=64, key_block=32, causal=True, layout=layout, gqa_mask=gqa_mask, xattn_stride=16,
              dense_tail_tokens=100)
    budget = 4 * 4 * (-(-Lk // 32)) * 6 * 3  # three query blocks' scratch
    chunks = plan_chunks(1, 4, Lq, Lk, query_block=64, key_block=32, stride=16, causal=True, budget=budget)
    assert len(chunks) >= 2 and chunks[0][0] == 0 and chunks[-1][1] == -(-Lq // 64)
    keep = []
    whole = psa_level_map_kernels(hv(q), hv(k), alloc=_alloc(keep), **kw).arr
    stages = []
    parts = psa_level_map_kernels(hv(q), hv(k), alloc=_alloc(keep), scratch_budget=budget, on_stage=stages.append,
                                  **kw).arr
    assert set(np.unique(whole).tolist()) >= {0, 1, 2}  # several levels, not a trivial map
    np.testing.assert_array_equal(parts, whole)
    assert stages == ["estimate_ms", "mask_ms"] * len(chunks)  # per chunk, so summed laps attribute each stage


def test_no_chunks_when_the_offset_would_cut_a_stride_group():
    from paddlemix_psa.kernels.pipeline import plan_chunks

    kw = dict(query_block=64, key_block=32, stride=16, budget=1)
    assert len(plan_chunks(1, 4, 330, 700, causal=True, **kw)) == 1       # off = 370
    assert len(plan_chunks(1, 4, 500, 500, causal=False, **kw)) == 1
    assert len(plan_chunks(1, 4, 316, 700, causal=True, **kw)) == 5       # off = 384: one block per chunk


def test_scratch_bound_at_128k_qwen_shapes():
    # the bound: plan scratch (estimator + scores of one chunk) <= 512 MiB for Qwen2.5-VL-7B at 128k
    from paddlemix_psa.kernels.estimate import estimate_scratch_shapes
    from paddlemix_psa.kernels.pipeline import PLAN_SCRATCH_BYTES, plan_chunks

    L = 131072
    chunks = plan_chunks(1, 28, L, L, query_block=128, key_block=32, stride=16, causal=True)
    worst = 0
    for i0, i1 in chunks:
        Lk_c = min(L, i1 * 128)
        shapes = estimate_scratch_shapes(1, 28, min(i1 * 128, L) - i0 * 128, Lk_c, query_block=128, key_block=32,
                                         stride=16)
        nbytes = sum(4 * int(np.prod(s)) for s, _ in shapes.values()) + 4 * 28 * (i1 - i0) * (-(-Lk_c // 32))
        worst = max(worst, nbytes)
    assert len(chunks) > 1 and worst <= PLAN_SCRATCH_BYTES


@pytest.mark.parametrize("chunked", [False, True])
def test_fused_index_list_equals_build_lut(chunked):
    # the plan's selection writes the index list itself (psa_forward_kernels); it must be exactly what
    # psa_build_lut builds from the returned map, runs included, in one piece and in chunks
    from paddlemix_psa.kernels.pipeline import psa_level_map_kernels
    from paddlemix_psa.kernels.select import psa_build_lut
    from paddlemix_psa.synthetic import structured_qkv

    Lq = Lk = 640
    q, k, _ = structured_qkv(Lk, q_heads=4, kv_heads=2, head_dim=64, seed=11)
    q, k = q.astype(np.float32), k.astype(np.float32)
    kw = dict(query_block=64, key_block=16, causal=True, layout="BHSD", xattn_stride=16, dense_tail_tokens=64)
    nq, nk = Lq // 64, Lk // 16
    keep = []
    alloc = _alloc(keep)
    lut, counts, runs = (np.full(s, -7, np.int32) for s in ((1, 4, nq, nk), (1, 4, nq, 4), (1, 4, nq)))
    budget = 4 * 4 * nk * 6 * 3 if chunked else None
    M = psa_level_map_kernels(hv(q), hv(k), alloc=alloc, scratch_budget=budget,
                              index_list=(hv(lut), hv(counts), hv(runs), 4), **kw).arr
    ref = [np.full(a.shape, -9, np.int32) for a in (lut, counts, runs)]
    psa_build_lut(hv(M), hv(ref[0]), hv(ref[1]), Lq=Lq, Lk=Lk, query_block=64, key_block=16, causal=True,
                  runs=hv(ref[2]), run_blocks=4)
    assert (M == 1).sum() > 0 and (M == 2).sum() > 0 and runs.sum() > 0  # levels and runs to compare
    for got, want in zip((lut, counts, runs), ref):
        np.testing.assert_array_equal(got, want)
