"""psa_select_levels / psa_build_lut on GPU at realistic shapes vs the numpy fp64 oracle (docs/ALGORITHM.md §7, §8; T6),
plus a timing print of the whole mask pipeline (estimator + cap + select + LUT) at 32k."""
import math

import numpy as np
import pytest

import oracle

README = {1: (0, .6), 2: (.6, .8), 4: (.8, .9), 8: (.9, .9), 0: (.9, 1)}
PAPER = {1: (0, .7), 2: (.7, .8), 4: (.8, .9), 8: (.9, .9), 0: (.9, 1)}
COUNTER_KEYS = ("tail", "diagonal", "sink", "cap", "degenerate", "guard")


def _near_boundary(scores, *, Lq, Lk, query_block, key_block, causal, ratios, tol=1e-5):
    ends = sorted({float(e) for _, e in ratios.values()})
    near = np.zeros(scores.shape, bool)
    B, H, nq, _ = scores.shape
    for b in range(B):
        for h in range(H):
            for i in range(nq):
                J = oracle.last_valid_block(i, Lq, Lk, query_block, key_block, causal)
                A = scores[b, h, i, :J + 1].astype(np.float64)
                order = np.lexsort((np.arange(J + 1), -A))
                T = A.sum()
                if not (T > 0 and math.isfinite(T)):
                    continue
                E = np.minimum(np.cumsum(A[order]) / T, 1.0)
                hit = np.zeros(J + 1, bool)
                for e in ends:
                    hit |= np.abs(E - e) < tol
                near[b, h, i, order] = hit
    return near


def _level_shares(M, *, Lq, Lk, query_block, key_block, causal):
    """Share of the valid pairs at each level 1, 2, 4, 8, 0."""
    valid = np.zeros(M.shape[2:], bool)
    for i in range(M.shape[2]):
        valid[i, :oracle.last_valid_block(i, Lq, Lk, query_block, key_block, causal) + 1] = True
    vals = M[:, :, valid]
    return np.array([(vals == p).mean() for p in (1, 2, 4, 8, 0)])


def _pipeline(q, k, *, Lq, Lk, query_block, key_block, stride, mode, ratios, T=512, prompt_end=None, layout="BHSD"):
    import torch

    from paddlemix_psa.kernels.estimate import psa_estimate_scores
    from paddlemix_psa.kernels.select import psa_build_lut, psa_select_levels
    from paddlemix_psa.kernels.similarity import psa_similarity_cap

    B = q.shape[0]
    Hq, Hkv = (q.shape[1], k.shape[1]) if layout == "BHSD" else (q.shape[2], k.shape[2])
    nq, nk = -(-Lq // query_block), -(-Lk // key_block)
    dev = q.device
    scores = torch.empty((B, Hq, nq, nk), device=dev, dtype=torch.float32)
    cap = torch.empty((B, Hkv, nk), device=dev, dtype=torch.int8)
    M = torch.empty((B, Hq, nq, nk), device=dev, dtype=torch.int8)
    lut = torch.empty((B, Hq, nq, nk), device=dev, dtype=torch.int32)
    counts = torch.empty((B, Hq, nq, 4), device=dev, dtype=torch.int32)
    counters = torch.zeros(6, device=dev, dtype=torch.int32)
    geom = dict(Lq=Lq, Lk=Lk, query_block=query_block, key_block=key_block, causal=True)

    def run():
        psa_estimate_scores(q, k, scores, query_block=query_block, key_block=key_block, stride=stride, causal=True,
                            scale=None, layout=layout)
        psa_similarity_cap(k, cap, key_block=key_block, thresholds=(0.75, 0.7, 0.7), layout=layout)
        psa_select_levels(scores, M, **geom, mode=mode, ends=ratios, dense_tail_tokens=T, prompt_end=prompt_end,
                          force_sink=True, sim_cap=cap, gqa_group=Hq // Hkv, counters=counters)
        psa_build_lut(M, lut, counts, **geom)

    run()
    torch.cuda.synchronize()
    return dict(scores=scores, cap=cap, M=M, lut=lut, counts=counts, counters=counters, run=run)


@pytest.mark.parametrize("mode,ratios", [("energybound", README), ("energybound", PAPER), ("topk", README)],
                         ids=["energy-readme", "energy-paper", "topk"])
@pytest.mark.parametrize("Lq,Lk,bq,bk,S,heads", [
    (8192, 8192, 128, 32, 16, 4),          # defaults, 4 of the 28 heads checked against the oracle
    (2000, 9000, 128, 32, 16, 4),          # chunked prefill, ragged
    (8192, 8192, 128, 128, 8, 4),          # paper geometry
    (1024, 131072, 128, 32, 16, 1),        # 128k keys: nk = 4096 (NK_PAD 4096)
], ids=lambda v: str(v))
def test_select_gpu_vs_oracle(cuda, Lq, Lk, bq, bk, S, heads, mode, ratios):
    import torch

    g = torch.Generator(device=cuda).manual_seed(Lq + Lk)
    Hq, Hkv, D = 28, 4, 128
    q = torch.randn((1, Hq, Lq, D), device=cuda, generator=g).to(torch.bfloat16)
    steps = torch.randn((1, Hkv, Lk, D), device=cuda, generator=g) * 0.2
    k = (torch.cumsum(steps, dim=2) * 0.2 + torch.randn((1, Hkv, Lk, D), device=cuda, generator=g)).to(torch.bfloat16)
    T = 512 if Lq == Lk else 0  # a chunk at the end of the prompt would be all tail rows (dense) with T > 0
    r = _pipeline(q, k, Lq=Lq, Lk=Lk, query_block=bq, key_block=bk, stride=S, mode=mode, ratios=ratios, T=T)
    geom = dict(Lq=Lq, Lk=Lk, query_block=bq, key_block=bk, causal=True)
    s = r["scores"][:, :heads].cpu().numpy()
    cap = r["cap"].cpu().numpy()
    ref, rc = oracle.level_map(s, **geom, mode=mode, mask_ratios=ratios, dense_tail_tokens=T, force_sink=True,
                               sim_cap_levels=cap, gqa_group=Hq // Hkv)
    M = r["M"][:, :heads].cpu().numpy()
    ok = M == ref
    if mode == "energybound":
        ok |= _near_boundary(s, **geom, ratios=ratios)
    assert ok.all(), f"{(~ok).sum()} of {ok.size} blocks differ"
    # the threshold search adds the energy prefix in another order than a sorted cumsum: near an end a block may
    # move one level; density and the level shares must stay within the stated tolerance
    assert abs(oracle.density(M, **geom).mean() - oracle.density(ref, **geom).mean()) <= 1e-3
    assert np.abs(_level_shares(M, **geom) - _level_shares(ref, **geom)).max() <= 2e-3
    rl, rcnt = oracle.build_lut(r["M"].cpu().numpy(), **geom)
    np.testing.assert_array_equal(r["counts"].cpu().numpy(), rcnt)
    np.testing.assert_array_equal(r["lut"].cpu().numpy(), rl)
    c = r["counters"].cpu().numpy()
    assert c[4] == 0 and c[5] == 0  # no degenerate rows, no guard in causal mode
    dens = oracle.density(r["M"][:, :heads].cpu().numpy(), **geom).mean()
    print(f"\n[select {mode} L={Lq}/{Lk} b={bq}/{bk}] density {dens:.3f}, counters "
          f"{dict(zip(COUNTER_KEYS, c.tolist()))}")


def _time(fn, n=10):
    import torch

    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return float(np.median(ts))


def test_mask_pipeline_timing_32k(cuda):
    """Timing print (not a pass/fail threshold): estimator + cap + select + LUT vs dense SDPA at 32k."""
    import torch
    import torch.nn.functional as F

    from paddlemix_psa.kernels.estimate import psa_estimate_scores

    L, Hq, Hkv, D = 32768, 28, 4, 128
    g = torch.Generator(device=cuda).manual_seed(0)
    q = torch.randn((1, Hq, L, D), device=cuda, generator=g).to(torch.bfloat16)
    k = torch.randn((1, Hkv, L, D), device=cuda, generator=g).to(torch.bfloat16)
    v = torch.randn((1, Hkv, L, D), device=cuda, generator=g).to(torch.bfloat16)
    r = _pipeline(q, k, Lq=L, Lk=L, query_block=128, key_block=32, stride=16, mode="energybound", ratios=README)
    scores = r["scores"]
    t_est = _time(lambda: psa_estimate_scores(q, k, scores, query_block=128, key_block=32, stride=16, causal=True,
                                              scale=None, layout="BHSD"))
    t_all = _time(r["run"])
    kr, vr = k.repeat_interleave(Hq // Hkv, dim=1), v.repeat_interleave(Hq // Hkv, dim=1)
    t_dense = _time(lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=True), n=5)
    print(f"\n[32k Hq=28 Hkv=4 D=128 bf16, b=128/32 S=16] estimator {t_est:.3f} ms, estimator+cap+select+lut "
          f"{t_all:.3f} ms, dense SDPA {t_dense:.3f} ms, share {t_all / t_dense:.1%} (target <= 10%)")
