"""psa_estimate_scores / psa_similarity_cap on GPU (torch tensors) at realistic shapes (docs/ALGORITHM.md §6.1, §8 F5; T5, T7).

References: the numpy fp64 oracle (small shapes) and its torch fp64 port ``_xattn_torch`` (large shapes), which is
itself cross-checked against the numpy oracle here.
"""
import numpy as np
import pytest

import oracle


METHODS = ["two_pass", "single_pass"]


def _scratch_alloc(device):
    """``alloc(shape, dtype_name)`` on ``device``; NaN-filled so a scratch read that pass A never wrote shows up."""
    import torch

    def alloc(shp, dt):
        return torch.full(tuple(shp), float("nan"), device=device, dtype=getattr(torch, dt))

    return alloc


def _estimate(q, k, *, layout="BHSD", method="two_pass", **kw):
    """q, k BHSD torch tensors; run the kernel on the ``layout`` view."""
    import torch

    from paddlemix_psa.kernels.estimate import psa_estimate_scores

    B, Hq, Lq, _ = q.shape
    Lk = k.shape[2]
    nq, nk = -(-Lq // kw["query_block"]), -(-Lk // kw["key_block"])
    out = torch.full((B, Hq, nq, nk), float("nan"), device=q.device, dtype=torch.float32)
    if layout == "BSHD":
        q, k = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
    kw.setdefault("scale", None)
    scratch = _scratch_alloc(q.device) if method == "single_pass" else None
    psa_estimate_scores(q, k, out, layout=layout, method=method, scratch=scratch, **kw)
    return out


def _valid_reshaped_per_block(Lq, query_block, stride):
    nq = -(-Lq // query_block)
    a = np.arange(nq * query_block // stride)
    return (a * stride < Lq).reshape(nq, query_block // stride).sum(axis=1)


def test_torch_port_matches_numpy_oracle(cuda):
    import torch

    from _xattn_torch import xattn_scores_torch

    g = torch.Generator(device=cuda).manual_seed(0)
    q = torch.randn((1, 4, 300, 64), device=cuda, generator=g)
    k = torch.randn((1, 2, 450, 64), device=cuda, generator=g)
    for causal in (True, False):
        ref = oracle.xattn_scores(q.cpu().numpy(), k.cpu().numpy(), query_block=64, key_block=32, stride=8,
                                  causal=causal)
        got = xattn_scores_torch(q, k, query_block=64, key_block=32, stride=8, causal=causal).cpu().numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("case", [
    # B, Hq, Hkv, Lq, Lk, D, query_block, key_block, stride, causal, layout
    (1, 2, 1, 300, 300, 64, 128, 32, 16, True, "BHSD"),
    (2, 4, 2, 129, 1000, 80, 64, 64, 8, True, "BSHD"),
    (1, 3, 1, 100, 77, 96, 32, 16, 16, False, "BHSD"),
    (1, 4, 2, 70, 600, 128, 16, 32, 4, True, "BSHD"),
], ids=lambda c: "-".join(map(str, c)))
def test_estimate_small_vs_numpy_oracle(cuda, case, dtype_name, method):
    import torch

    B, Hq, Hkv, Lq, Lk, D, bq, bk, S, causal, layout = case
    g = torch.Generator(device=cuda).manual_seed(Lq + Lk)
    dt = getattr(torch, dtype_name)
    q = torch.randn((B, Hq, Lq, D), device=cuda, generator=g).to(dt)
    k = torch.randn((B, Hkv, Lk, D), device=cuda, generator=g).to(dt)
    got = _estimate(q, k, query_block=bq, key_block=bk, stride=S, causal=causal, layout=layout,
                    method=method).cpu().numpy()
    ref = oracle.xattn_scores(q.float().cpu().numpy(), k.float().cpu().numpy(), query_block=bq, key_block=bk,
                              stride=S, causal=causal)
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("case", [
    # Hq, Hkv, Lq, Lk, D, query_block, key_block, stride, causal, layout, dtype
    (28, 4, 4096, 4096, 128, 128, 32, 16, True, "BHSD", "bfloat16"),     # Qwen2.5-VL-7B defaults
    (28, 4, 4096, 4096, 128, 128, 128, 8, True, "BSHD", "bfloat16"),     # paper preset
    (28, 4, 1000, 5000, 128, 128, 32, 16, True, "BSHD", "bfloat16"),     # chunk, off = 4000, ragged
    (16, 16, 4097, 4097, 80, 64, 64, 16, False, "BHSD", "float16"),      # ViT-like non-causal, ragged
    (8, 2, 3000, 3000, 96, 32, 16, 16, True, "BHSD", "float16"),
], ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("method", METHODS)
def test_estimate_realistic_vs_torch_fp64(cuda, case, method):
    import torch

    from _xattn_torch import xattn_scores_torch

    Hq, Hkv, Lq, Lk, D, bq, bk, S, causal, layout, dtype_name = case
    g = torch.Generator(device=cuda).manual_seed(Lq)
    dt = getattr(torch, dtype_name)
    q = torch.randn((1, Hq, Lq, D), device=cuda, generator=g).to(dt)
    # keys with structure (a slowly drifting component) so the scores are far from uniform
    k = (torch.randn((1, Hkv, Lk, D), device=cuda, generator=g)
         + 2 * torch.randn((1, Hkv, 1, D), device=cuda, generator=g)).to(dt)
    got = _estimate(q, k, query_block=bq, key_block=bk, stride=S, causal=causal, layout=layout, method=method)
    ref = xattn_scores_torch(q, k, query_block=bq, key_block=bk, stride=S, causal=causal)
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got.double(), ref, rtol=1e-3, atol=1e-5)
    rows = torch.as_tensor(_valid_reshaped_per_block(Lq, bq, S), device=cuda, dtype=torch.float64)
    torch.testing.assert_close(got.double().sum(-1), rows.expand(1, Hq, -1), rtol=1e-4, atol=1e-4)
    if causal:
        nq, nk = got.shape[2], got.shape[3]
        for i in range(nq):
            J = oracle.last_valid_block(i, Lq, Lk, bq, bk, True)
            assert (got[:, :, i, J + 1:] == 0).all()


@pytest.mark.parametrize("method", METHODS)
def test_estimate_int64_offsets(cuda, method):
    """Element offsets beyond 2**31: the last batch of a [20, 32768, 28, 128] bf16 BSHD buffer (2.35e9 elements)."""
    import torch

    from _xattn_torch import xattn_scores_torch

    B, Hq, Hkv, L, D = 20, 28, 4, 32768, 128
    try:
        q = torch.zeros((B, L, Hq, D), device=cuda, dtype=torch.bfloat16)
    except torch.cuda.OutOfMemoryError:
        pytest.skip("not enough GPU memory")
    g = torch.Generator(device=cuda).manual_seed(1)
    Lq = 1024  # only the tail queries are non-zero: chunk semantics via a view
    qs = torch.randn((1, Lq, 2, D), device=cuda, generator=g).to(torch.bfloat16)
    q[B - 1, :Lq, Hq - 2:] = qs
    k = torch.randn((B, L, Hkv, D), device=cuda, generator=g).to(torch.bfloat16)
    view_q = q[:, :Lq]  # [B, Lq, Hq, D] BSHD view, strides of the big buffer
    view_k = k[:, :Lq]
    from paddlemix_psa.kernels.estimate import psa_estimate_scores

    out = torch.full((B, Hq, Lq // 128, Lq // 32), float("nan"), device=cuda)
    psa_estimate_scores(view_q, view_k, out, query_block=128, key_block=32, stride=16, causal=True, scale=None,
                        layout="BSHD", method=method,
                        scratch=_scratch_alloc(cuda) if method == "single_pass" else None)
    ref = xattn_scores_torch(qs.transpose(1, 2), view_k[B - 1:, :, Hkv - 1:].transpose(1, 2), query_block=128,
                             key_block=32, stride=16, causal=True)
    torch.testing.assert_close(out[B - 1:, Hq - 2:].double(), ref, rtol=1e-3, atol=1e-5)
    del q, k


@pytest.mark.parametrize("tiles", [dict(), dict(block_a=128, block_c=128, num_warps=8, num_stages=3),
                                   dict(block_a=64, block_c=64, num_warps=4, num_stages=4),
                                   dict(flatten=True), dict(block_a=128, block_c=128, num_warps=8, flatten=True),
                                   dict(block_a=128, block_c=64, block_k=128, num_stages=3),
                                   dict(block_a=256, block_c=64, num_warps=8, num_stages=4, block_k=64)],
                         ids=lambda t: "-".join(f"{k}{v}" for k, v in t.items()) or "default")
def test_estimate_single_pass_tiles_match_two_pass(cuda, tiles):
    """Every single-pass tuning point gives the two-pass result (Qwen2.5-VL geometry, causal, ragged length)."""
    import torch

    g = torch.Generator(device=cuda).manual_seed(11)
    q = torch.randn((1, 28, 5000, 128), device=cuda, generator=g).to(torch.bfloat16)
    k = (torch.randn((1, 4, 5000, 128), device=cuda, generator=g)
         + 2 * torch.randn((1, 4, 1, 128), device=cuda, generator=g)).to(torch.bfloat16)
    kw = dict(query_block=128, key_block=32, stride=16, causal=True)
    ref = _estimate(q, k, **kw)
    got = _estimate(q, k, **kw, method="single_pass", **tiles)
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    upper = ref == 0
    assert (got[upper] == 0).all()


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("Lk,key_block,layout", [(4097, 32, "BHSD"), (1000, 128, "BSHD"), (7, 16, "BHSD"),
                                                 (32768, 32, "BHSD")])
def test_similarity_cap_gpu_vs_oracle(cuda, dtype_name, Lk, key_block, layout):
    import torch

    from paddlemix_psa.kernels.similarity import psa_similarity_cap

    g = torch.Generator(device=cuda).manual_seed(Lk)
    dt = getattr(torch, dtype_name)
    Hkv, D = 4, 128
    # random-walk keys: neighbouring keys are similar, so several cap levels occur
    steps = torch.randn((1, Hkv, Lk, D), device=cuda, generator=g) * 0.3
    k = (torch.cumsum(steps, dim=2) + torch.randn((1, Hkv, 1, D), device=cuda, generator=g)).to(dt)
    nk = -(-Lk // key_block)
    out = torch.zeros((1, Hkv, nk), device=cuda, dtype=torch.int8)
    kin = k if layout == "BHSD" else k.transpose(1, 2).contiguous()
    psa_similarity_cap(kin, out, key_block=key_block, thresholds=(0.75, 0.7, 0.7), layout=layout)
    ref = oracle.similarity_cap(k.float().cpu().numpy(), key_block=key_block, thresholds=(0.75, 0.7, 0.7))
    got = out.cpu().numpy()
    # cosines within fp32 rounding of a threshold may flip; allow a tiny fraction, all elsewhere exact
    mism = (got != ref).mean()
    assert mism <= 2e-3, f"{mism:.4%} of caps differ"


@pytest.mark.parametrize("L", [16384, 32768])
def test_estimate_long_methods_agree_with_fp64(cuda, L):
    """Long prefills (many key tiles): both methods against the fp64 port on random, near-uniform scores."""
    import torch

    from _xattn_torch import xattn_scores_torch

    g = torch.Generator(device=cuda).manual_seed(L)
    q = torch.randn((1, 28, L, 128), device=cuda, generator=g).to(torch.bfloat16)
    k = torch.randn((1, 4, L, 128), device=cuda, generator=g).to(torch.bfloat16)
    kw = dict(query_block=128, key_block=32, stride=16, causal=True)
    two = _estimate(q, k, **kw, method="two_pass")
    one = _estimate(q, k, **kw, method="single_pass")
    ref = xattn_scores_torch(q[:, :2], k[:, :1], **kw)
    print(f"L={L}: |two-ref| {float((two[:, :2].double() - ref).abs().max()):.3e}  "
          f"|one-ref| {float((one[:, :2].double() - ref).abs().max()):.3e}  |one-two| {float((one - two).abs().max()):.3e}")
    torch.testing.assert_close(two[:, :2].double(), ref, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(one[:, :2].double(), ref, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(one, two, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", [
    # Hq, Hkv, Lq, Lk, D, query_block, key_block, stride, causal, layout, dtype
    (28, 4, 5000, 5000, 128, 128, 32, 16, True, "BHSD", "bfloat16"),   # ragged (5000 % 16 = 8)
    (28, 4, 4096, 4096, 128, 128, 32, 16, True, "BSHD", "bfloat16"),   # divisible: every tile through TMA
    (28, 4, 1000, 5008, 128, 128, 128, 8, True, "BSHD", "bfloat16"),   # chunk, off = 4008, paper geometry
    (16, 16, 4097, 4097, 80, 64, 64, 16, False, "BHSD", "float16"),    # non-causal, D padded, ragged
], ids=lambda c: "-".join(map(str, c)))
def test_estimate_tma_path_matches_pointer_path(cuda, case, monkeypatch):
    """sm_90: pass A through TMA boxes gives the pointer path's scores (and the fp64 port's) at realistic shapes."""
    import torch

    from _xattn_torch import xattn_scores_torch
    from paddlemix_psa.kernels import estimate

    if not estimate.tma_available():
        pytest.skip("no TMA on this GPU (sm_90+ only)")
    seen = []
    kern = estimate._xattn_partial_kernel

    class _Spy:
        def __getitem__(self, grid):
            def launch(*args, **meta):
                seen.append(meta["USE_TMA"])
                return kern[grid](*args, **meta)
            return launch

    monkeypatch.setattr(estimate, "_xattn_partial_kernel", _Spy())
    Hq, Hkv, Lq, Lk, D, bq, bk, S, causal, layout, dtype_name = case
    g = torch.Generator(device=cuda).manual_seed(Lq + Lk)
    dt = getattr(torch, dtype_name)
    q = torch.randn((1, Hq, Lq, D), device=cuda, generator=g).to(dt)
    k = (torch.randn((1, Hkv, Lk, D), device=cuda, generator=g)
         + 2 * torch.randn((1, Hkv, 1, D), device=cuda, generator=g)).to(dt)
    kw = dict(query_block=bq, key_block=bk, stride=S, causal=causal, layout=layout, method="single_pass")
    tma = _estimate(q, k, **kw)
    ptr = _estimate(q, k, **kw, use_tma=False)
    assert seen == [True, False]
    assert not torch.isnan(tma).any()
    torch.testing.assert_close(tma, ptr, rtol=1e-5, atol=1e-7)
    ref = xattn_scores_torch(q, k, query_block=bq, key_block=bk, stride=S, causal=causal)
    torch.testing.assert_close(tma.double(), ref, rtol=1e-3, atol=1e-5)
