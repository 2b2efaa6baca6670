"""One pipeline call reads q, k, v's metadata once (kernels/geometry.py), chunked plan included."""
import collections
import sys

import numpy as np
import pytest

import oracle
from hostview import hv

_HELPERS = ("shape", "strides", "dtype_name")


@pytest.fixture
def inspections(monkeypatch):
    """Counts ``_tensorlike.shape / strides / dtype_name`` calls per (tensor, helper) on the tensors registered in
    the returned ``watch`` dict ({id: name}), in every kernels module that imported the helpers."""
    from paddlemix_psa.kernels import _tensorlike, pipeline  # noqa: F401  (imports every launcher module)

    watch, counts = {}, collections.Counter()
    for fn in _HELPERS:
        orig = getattr(_tensorlike, fn)

        def counted(t, _orig=orig, _fn=fn):
            if id(t) in watch:
                counts[(watch[id(t)], _fn)] += 1
            return _orig(t)

        for name, mod in list(sys.modules.items()):
            if name.startswith("paddlemix_psa.kernels") and getattr(mod, fn, None) is orig:
                monkeypatch.setattr(mod, fn, counted)
    return watch, counts


def _alloc(keep):
    def alloc(shape, dt):
        a = np.zeros(shape, dtype=np.dtype(dt))
        keep.append(a)
        return hv(a)
    return alloc


@pytest.mark.parametrize("layout,gqa_mask", [("BHSD", "per_head"), ("BSHD", "per_kv_group")])
def test_forward_reads_each_input_once(inspections, monkeypatch, layout, gqa_mask):
    from paddlemix_psa.kernels import pipeline

    watch, counts = inspections
    rng = np.random.default_rng(7)
    B, Hq, Hkv, L, D, bq, bk = 1, 2, 1, 128, 64, 32, 16
    q = rng.standard_normal((B, Hq, L, D)).astype(np.float32)
    k, v = (rng.standard_normal((B, Hkv, L, D)).astype(np.float32) for _ in range(2))
    # two chunks of two query blocks: the estimator gets narrowed views and narrowed records
    budget = 4 * B * Hq * (L // bk) * (bq // 8 + 2) * 2
    monkeypatch.setattr(pipeline, "PLAN_SCRATCH_BYTES", budget)
    assert len(pipeline.plan_chunks(B, Hq, L, L, query_block=bq, key_block=bk, stride=8, causal=True)) == 2
    tq, tk, tv = (hv(x if layout == "BHSD" else np.ascontiguousarray(x.transpose(0, 2, 1, 3))) for x in (q, k, v))
    watch.update({id(tq): "q", id(tk): "k", id(tv): "v"})
    out, M, _, _ = pipeline.psa_forward_kernels(tq, tk, tv, alloc=_alloc([]), query_block=bq, key_block=bk,
                                                layout=layout, xattn_stride=8, dense_tail_tokens=32,
                                                gqa_mask=gqa_mask)
    assert counts == {(t, fn): 1 for t in "qkv" for fn in _HELPERS}  # was 52 reads before the record
    res = out.arr if layout == "BHSD" else out.arr.transpose(0, 2, 1, 3)
    ref = oracle.psa_attention(q, k, v, M.arr, query_block=bq, key_block=bk, causal=True, gqa_mask=gqa_mask)
    np.testing.assert_allclose(res.astype(np.float64), ref, atol=2e-5, rtol=2e-5)


def test_plan_and_run_alone_read_their_inputs_once(inspections):
    from paddlemix_psa.kernels.pipeline import psa_attention_from_map, psa_level_map_kernels

    watch, counts = inspections
    rng = np.random.default_rng(8)
    q, k, v = (hv(rng.standard_normal((1, 2, 96, 64)).astype(np.float32)) for _ in range(3))
    watch.update({id(q): "q", id(k): "k", id(v): "v"})
    kw = dict(query_block=32, key_block=16)
    M = psa_level_map_kernels(q, k, alloc=_alloc([]), xattn_stride=8, dense_tail_tokens=32, **kw)
    assert counts == {(t, fn): 1 for t in "qk" for fn in _HELPERS}
    counts.clear()
    psa_attention_from_map(q, k, v, M, alloc=_alloc([]), **kw)
    assert counts == {(t, fn): 1 for t in "qkv" for fn in _HELPERS}
