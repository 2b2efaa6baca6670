"""psa_select_levels / psa_build_lut under the Triton interpreter vs the fp64 oracle (docs/ALGORITHM.md §7, §8; T6)."""
import math

import numpy as np
import pytest

import oracle
from hostview import hv

README = {1: (0, .6), 2: (.6, .8), 4: (.8, .9), 8: (.9, .9), 0: (.9, 1)}
PAPER = {1: (0, .7), 2: (.7, .8), 4: (.8, .9), 8: (.9, .9), 0: (.9, 1)}
COUNTER_KEYS = ("tail", "diagonal", "sink", "cap", "degenerate", "guard")


def _select(scores, *, Lq, Lk, query_block, key_block, causal=True, mode="energybound", ratios=README,
            dense_tail_tokens=0, prompt_end=None, force_sink=True, sim_cap=None, gqa_group=1):
    from paddlemix_psa.kernels.select import psa_select_levels

    scores = np.ascontiguousarray(scores, np.float32)
    out = np.full(scores.shape, 77, np.int8)
    counters = np.zeros(6, np.int32)
    psa_select_levels(hv(scores), hv(out), Lq=Lq, Lk=Lk, query_block=query_block, key_block=key_block,
                      causal=causal, mode=mode, ends=ratios, dense_tail_tokens=dense_tail_tokens,
                      prompt_end=prompt_end, force_sink=force_sink,
                      sim_cap=hv(sim_cap) if sim_cap is not None else None, gqa_group=gqa_group,
                      counters=hv(counters))
    return out, dict(zip(COUNTER_KEYS, counters.tolist()))


def _lut(M, *, Lq, Lk, query_block, key_block, causal=True):
    from paddlemix_psa.kernels.select import psa_build_lut

    lut = np.full(M.shape, -7, np.int32)
    counts = np.full(M.shape[:3] + (4,), -7, np.int32)
    psa_build_lut(hv(np.ascontiguousarray(M)), hv(lut), hv(counts), Lq=Lq, Lk=Lk, query_block=query_block,
                  key_block=key_block, causal=causal)
    return lut, counts


def _near_boundary(scores, *, Lq, Lk, query_block, key_block, causal, ratios, tol=1e-5):
    """Blocks whose fp64 cumulative energy lies within ``tol`` of a level boundary (T6 exclusion)."""
    ends = sorted({float(e) for _, e in ratios.values()})
    B, H, nq, nk = scores.shape
    near = np.zeros(scores.shape, bool)
    for b in range(B):
        for h in range(H):
            for i in range(nq):
                J = oracle.last_valid_block(i, Lq, Lk, query_block, key_block, causal)
                A = scores[b, h, i].astype(np.float64)
                order = sorted(range(J + 1), key=lambda j: (-A[j], j))
                T = sum(A[j] for j in order)
                if not (T > 0 and math.isfinite(T)):
                    continue
                acc = 0.0
                for j in order:
                    acc += A[j]
                    E = min(1.0, acc / T)
                    near[b, h, i, j] = any(abs(E - e) < tol for e in ends)
    return near


# --------------------------------------------------------------------------- §7.4 golden row
GOLDEN_A = [.06, .31, .02, .12, .06, .24, .14, .05]


def _golden_scores(rng):
    # query_block = key_block = 32, Lq = Lk = 256: row i = 7 has J = 7 and D_7 = {7}
    s = rng.random((1, 1, 8, 8)).astype(np.float32)
    s[0, 0, 7] = GOLDEN_A
    return s


GEOM = dict(Lq=256, Lk=256, query_block=32, key_block=32, causal=True)


def test_golden_energybound_readme():
    s = _golden_scores(np.random.default_rng(0))
    M, _ = _select(s, **GEOM, force_sink=False)
    # before sink forcing, only the diagonal j7 is forced
    np.testing.assert_array_equal(M[0, 0, 7], [4, 1, 0, 4, 0, 1, 2, 1])
    M, _ = _select(s, **GEOM)
    np.testing.assert_array_equal(M[0, 0, 7], [1, 1, 0, 4, 0, 1, 2, 1])


def test_golden_energybound_paper():
    s = _golden_scores(np.random.default_rng(1))
    M, _ = _select(s, **GEOM, ratios=PAPER)
    np.testing.assert_array_equal(M[0, 0, 7], [1, 1, 0, 4, 0, 1, 1, 1])


def test_golden_similarity_cap():
    s = _golden_scores(np.random.default_rng(2))
    cap = np.full((1, 1, 8), 8, np.int8)
    cap[0, 0, 3], cap[0, 0, 6] = 2, 4  # §7.4: j3 -> L = 2, j6 -> L = 4 (non-monotone)
    M, cnt = _select(s, **GEOM, sim_cap=cap)
    np.testing.assert_array_equal(M[0, 0, 7], [1, 1, 0, 2, 0, 1, 2, 1])
    ref, rc = oracle.level_map(s, **GEOM, mode="energybound", mask_ratios=README, dense_tail_tokens=0,
                               sim_cap_levels=cap)
    np.testing.assert_array_equal(M, ref)
    assert cnt == rc


def test_golden_topk():
    s = _golden_scores(np.random.default_rng(3))
    M, _ = _select(s, **GEOM, mode="topk")
    np.testing.assert_array_equal(M[0, 0, 7], [1, 1, 0, 1, 2, 1, 1, 1])


def test_topk_at_least_one_level1_block():
    # non-causal row with n = 3 and level 1 = (0, .1): beta_1 = floor((100000*3 + 500000)/1e6) = 0 -> raised to 1
    s = np.array([[[[.2, .5, .3]]]], np.float32)
    M, _ = _select(s, Lq=32, Lk=96, query_block=32, key_block=32, causal=False, mode="topk",
                   ratios={1: (0, .1), 0: (.1, 1)}, force_sink=False)
    np.testing.assert_array_equal(M[0, 0, 0], [0, 1, 0])


# --------------------------------------------------------------------------- random rows vs the oracle
CASES = [
    # Lq, Lk, query_block, key_block, causal
    (300, 300, 128, 32, True),
    (200, 1000, 128, 32, True),     # off = 800
    (400, 1000, 32, 16, True),       # off = 600, many short blocks
    (129, 257, 64, 64, True),
    (100, 77, 32, 16, False),
    (64, 2000, 64, 16, False),      # nk = 125 -> NK_PAD 128
    (37, 50, 32, 128, True),        # Lk < key_block: nk = 1
]


@pytest.mark.parametrize("mode", ["energybound", "topk"])
@pytest.mark.parametrize("ratios", [README, PAPER, {1: (0, .3), 4: (.3, .95), 0: (.95, 1)}], ids=["readme", "paper",
                                                                                             "sparse-levels"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_random_rows_match_oracle(case, mode, ratios):
    Lq, Lk, bq, bk, causal = case
    rng = np.random.default_rng(Lq + 3 * Lk + bq + bk)
    nq, nk = -(-Lq // bq), -(-Lk // bk)
    B, H = 2, 3
    s = (rng.random((B, H, nq, nk)) ** 4).astype(np.float32)
    geom = dict(Lq=Lq, Lk=Lk, query_block=bq, key_block=bk, causal=causal)
    M, cnt = _select(s, **geom, mode=mode, ratios=ratios)
    ref, rc = oracle.level_map(s, **geom, mode=mode, mask_ratios=ratios, dense_tail_tokens=0)
    ok = M == ref
    if mode == "energybound":
        ok |= _near_boundary(s, **geom, ratios=ratios)
    assert ok.all(), f"{(~ok).sum()} blocks differ, first at {np.argwhere(~ok)[:5].tolist()}"
    if mode == "topk" or (M == ref).all():
        assert cnt == rc


@pytest.mark.parametrize("mode", ["energybound", "topk"])
@pytest.mark.parametrize("Lq,T,prompt_end,force_sink,gqa", [(600, 100, None, True, 1), (1000, 64, 700, False, 3),
                                                            (1000, 2000, None, True, 1), (300, 0, None, True, 3)])
def test_forced_rules_and_cap_match_oracle(mode, Lq, T, prompt_end, force_sink, gqa):
    Lk, bq, bk = 1000, 64, 32
    rng = np.random.default_rng(T + gqa + Lq)
    nq, nk = -(-Lq // bq), -(-Lk // bk)
    B, Hm = 1, 6
    s = (rng.random((B, Hm, nq, nk)) ** 3).astype(np.float32)
    cap = rng.choice(np.array([1, 2, 4, 8], np.int8), size=(B, Hm // gqa, nk))
    geom = dict(Lq=Lq, Lk=Lk, query_block=bq, key_block=bk, causal=True)
    kw = dict(dense_tail_tokens=T, prompt_end=prompt_end, force_sink=force_sink)
    M, cnt = _select(s, **geom, mode=mode, sim_cap=cap, gqa_group=gqa, **kw)
    ref, rc = oracle.level_map(s, **geom, mode=mode, mask_ratios=README, sim_cap_levels=cap, gqa_group=gqa, **kw)
    ok = M == ref
    if mode == "energybound":
        ok |= _near_boundary(s, **geom, ratios=README)
    assert ok.all(), f"{(~ok).sum()} blocks differ"
    if (M == ref).all():
        assert cnt == rc
    if T < 1000:
        assert cnt["cap"] > 0 and cnt["diagonal"] > 0
    if T > 0:
        assert cnt["tail"] > 0


def test_ties_are_deterministic_smaller_j_first():
    # many exact ties; ranks decide the levels (topk) and the cumulative energies (energybound)
    rng = np.random.default_rng(7)
    s = (rng.integers(1, 4, size=(1, 2, 1, 40)) / 7.0).astype(np.float32)
    geom = dict(Lq=16, Lk=40 * 16, query_block=16, key_block=16, causal=False)
    for mode in ("topk", "energybound"):
        M, _ = _select(s, **geom, mode=mode, force_sink=False)
        ref, _ = oracle.level_map(s, **geom, mode=mode, mask_ratios=README, dense_tail_tokens=0, force_sink=False)
        ok = M == ref
        if mode == "energybound":
            ok |= _near_boundary(s, **geom, ratios=README)
        assert ok.all()
        M2, _ = _select(s, **geom, mode=mode, force_sink=False)
        np.testing.assert_array_equal(M, M2)


def _valid_share(M, *, Lq, Lk, query_block, key_block, causal):
    """Share of the valid pairs at each level 1, 2, 4, 8, 0."""
    valid = np.zeros(M.shape[2:], bool)
    for i in range(M.shape[2]):
        valid[i, :oracle.last_valid_block(i, Lq, Lk, query_block, key_block, causal) + 1] = True
    vals = M[:, :, valid]
    return np.array([(vals == p).mean() for p in (1, 2, 4, 8, 0)])


def _structured_scores(kind, rng, shape):
    B, H, nq, nk = shape
    if kind == "power":          # a few heavy blocks, a long light tail
        return rng.random(shape) ** 8
    if kind == "ties":           # few distinct values: the crossings fall inside tie groups
        return rng.integers(1, 5, size=shape) / 7.0
    if kind == "band":           # energy decays away from the diagonal, plus a sink column
        d = np.abs(np.arange(nq)[:, None] * (nk / nq) - np.arange(nk)[None, :])
        s = np.exp(-d / 6.0)[None, None] * (0.5 + rng.random(shape))
        s[..., 0] += 2.0
        return s
    if kind == "zeros":          # most blocks exactly zero (underflowed estimator scores)
        return np.where(rng.random(shape) < 0.7, 0.0, rng.random(shape))
    raise ValueError(kind)


KINDS = ("uniform", "power", "ties", "band", "zeros")


@pytest.mark.parametrize("kind", KINDS)
def test_levels_density_and_histogram_match_oracle(kind):
    """The kernel's fp32 prefix sums add in another order than the fp64 oracle's cumsum, so energybound levels are bit-exact only away from the ends (1e-5, docs/ALGORITHM.md T6);
    near an end a block may move one level (tie-heavy rows have E exactly at an end, decided by rounding).
    Stated tolerance: |density - oracle| <= 1e-3 and each level's share of the valid pairs within 2e-3."""
    rng = np.random.default_rng(KINDS.index(kind))
    geom = dict(Lq=2000, Lk=2400, query_block=64, key_block=16, causal=True)   # rows of 26 to 150 blocks
    shape = (1, 2, 32, 150)
    s = (rng.random(shape) if kind == "uniform" else _structured_scores(kind, rng, shape)).astype(np.float32)
    M, _ = _select(s, **geom, force_sink=False)
    ref, _ = oracle.level_map(s, **geom, mode="energybound", mask_ratios=README, dense_tail_tokens=0,
                              force_sink=False)
    assert ((M == ref) | _near_boundary(s, **geom, ratios=README)).all()
    d, dr = oracle.density(M, **geom).mean(), oracle.density(ref, **geom).mean()
    assert abs(d - dr) <= 1e-3, (d, dr)
    share, share_ref = _valid_share(M, **geom), _valid_share(ref, **geom)
    assert np.abs(share - share_ref).max() <= 2e-3, (share, share_ref)


@pytest.mark.parametrize("kind", ["ties", "band"])
def test_topk_exact_on_structured_rows(kind):
    """topk ranks are integers: the kernel gives the oracle's levels exactly, ties included."""
    rng = np.random.default_rng(KINDS.index(kind))
    geom = dict(Lq=1000, Lk=1200, query_block=64, key_block=16, causal=True)
    s = _structured_scores(kind, rng, (1, 2, 16, 75)).astype(np.float32)
    M, cnt = _select(s, **geom, mode="topk")
    ref, rc = oracle.level_map(s, **geom, mode="topk", mask_ratios=README, dense_tail_tokens=0)
    np.testing.assert_array_equal(M, ref)
    assert cnt == rc


@pytest.mark.parametrize("mode", ["energybound", "topk"])
def test_crossing_inside_a_tie_splits_by_j(mode):
    """Equal dyadic scores (fp32 sums exact, no end within rounding): the crossings fall inside the tie groups,
    the smaller j ranks first, so the levels are bit-exact and step up with j inside each group."""
    row = np.array([.5] * 9 + [.25] * 20 + [.125] * 12, np.float32)      # 41 blocks, crossings inside groups
    perm = np.random.default_rng(4).permutation(41)
    s = row[perm][None, None, None, :]
    geom = dict(Lq=16, Lk=41 * 16, query_block=16, key_block=16, causal=False)
    M, _ = _select(s, **geom, mode=mode, force_sink=False)
    ref, _ = oracle.level_map(s, **geom, mode=mode, mask_ratios=README, dense_tail_tokens=0, force_sink=False)
    inner_ends = {lv: r for lv, r in README.items() if lv != 0}  # E = 1 (last block) is exact by definition
    assert not _near_boundary(s, **geom, ratios=inner_ends).any()
    np.testing.assert_array_equal(M, ref)
    order_of = {1: 0, 2: 1, 4: 2, 8: 3, 0: 4}
    for v in (.5, .25, .125):
        lv = [order_of[int(x)] for x in M[0, 0, 0, s[0, 0, 0] == v]]   # ascending j inside the tie group
        assert lv == sorted(lv)
    assert len({int(x) for x in M[0, 0, 0, s[0, 0, 0] == .25]}) > 1   # some group really is split


def test_zero_score_blocks_have_energy_exactly_one():
    """§7.2: zero-score blocks (and the last-ranked block) have E = 1, so with a last kept end of 1 they are kept
    at the last level, never skipped by rounding (an end exactly at 1 is outside the T6 exclusion's reach)."""
    rng = np.random.default_rng(12)
    s = np.where(rng.random((1, 2, 4, 60)) < 0.5, 0.0, rng.random((1, 2, 4, 60)) ** 3).astype(np.float32)
    ratios = {1: (0, .5), 4: (.5, 1)}
    geom = dict(Lq=64, Lk=960, query_block=16, key_block=16, causal=False)
    M, _ = _select(s, **geom, ratios=ratios, force_sink=False)
    assert (M[s == 0] == 4).all()
    ref, _ = oracle.level_map(s, **geom, mode="energybound", mask_ratios=ratios, dense_tail_tokens=0,
                              force_sink=False)
    np.testing.assert_array_equal(M, ref)


@pytest.mark.parametrize("mode", ["energybound", "topk"])
def test_better_rank_never_coarser(mode):
    """Before forcing (non-causal, no sink/tail/cap), the level order 1 < 2 < 4 < 8 < skip follows the rank."""
    rng = np.random.default_rng(11)
    s = (rng.random((2, 2, 3, 50)) ** 3).astype(np.float32)
    M, _ = _select(s, Lq=96, Lk=800, query_block=32, key_block=16, causal=False, mode=mode, force_sink=False)
    order_of = {1: 0, 2: 1, 4: 2, 8: 3, 0: 4}
    for b in range(2):
        for h in range(2):
            for i in range(3):
                A = s[b, h, i]
                ranks = sorted(range(50), key=lambda j: (-A[j], j))
                lv = [order_of[int(M[b, h, i, j])] for j in ranks]
                assert lv == sorted(lv)


def test_degenerate_rows():
    s = np.zeros((1, 1, 3, 6), np.float32)
    s[0, 0, 1] = np.nan
    s[0, 0, 2] = np.random.default_rng(0).random(6)
    geom = dict(Lq=96, Lk=96, query_block=32, key_block=16, causal=True)
    M, cnt = _select(s, **geom, force_sink=False)
    np.testing.assert_array_equal(M[0, 0, 0], [1, 1, 0, 0, 0, 0])  # all valid blocks -> 1, upper stays 0
    np.testing.assert_array_equal(M[0, 0, 1], [1, 1, 1, 1, 0, 0])
    assert cnt["degenerate"] == 2


def test_guard_fires_in_non_causal_energybound():
    # the top block alone holds more than the last kept end (0.5) -> everything skipped -> F6 keeps the top block
    s = np.array([[[[.05, .9, .05], [.3, .3, .4]]]], np.float32)
    M, cnt = _select(s, Lq=64, Lk=96, query_block=32, key_block=32, causal=False,
                     ratios={1: (0, .5), 0: (.5, 1)}, force_sink=False)
    np.testing.assert_array_equal(M[0, 0, 0], [0, 1, 0])
    assert cnt["guard"] == 1
    ref, rc = oracle.level_map(s, Lq=64, Lk=96, query_block=32, key_block=32, causal=False,
                               mask_ratios={1: (0, .5), 0: (.5, 1)}, dense_tail_tokens=0, force_sink=False)
    np.testing.assert_array_equal(M, ref)
    assert cnt == rc


def test_long_row_padded_to_4096():
    """nk = 3000 (NK_PAD 4096), one query block: selection and stores over a long row."""
    rng = np.random.default_rng(5)
    nk = 3000
    s = (rng.random((1, 1, 1, nk)) ** 6).astype(np.float32)
    geom = dict(Lq=16, Lk=nk * 16, query_block=16, key_block=16, causal=True)
    M, cnt = _select(s, **geom, dense_tail_tokens=256)
    ref, rc = oracle.level_map(s, **geom, mode="energybound", mask_ratios=README, dense_tail_tokens=256)
    ok = (M == ref) | _near_boundary(s, **geom, ratios=README)
    assert ok.all()


def test_ends_sequence_equals_mapping():
    from paddlemix_psa.kernels.select import ends_from_ratios

    assert ends_from_ratios(README) == (.6, .8, .9, .9, 1.0)
    assert ends_from_ratios({1: (0, .3), 4: (.3, .95), 0: (.95, 1)}) == (.3, .3, .95, .95, 1.0)
    rng = np.random.default_rng(9)
    s = rng.random((1, 2, 4, 10)).astype(np.float32)
    geom = dict(Lq=128, Lk=160, query_block=32, key_block=16, causal=True)
    a, _ = _select(s, **geom, ratios=README)
    b, _ = _select(s, **geom, ratios=(.6, .8, .9, .9, 1.0))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kw,msg", [
    (dict(mode="thresholdbound"), "mode"),
    (dict(ratios=(.6, .5, .9, .9, 1.0)), "ends"),
    (dict(ratios=(.6, .8, .9)), "ends"),
    (dict(Lq=300), "match"),
])
def test_select_argument_errors(kw, msg):
    args = dict(Lq=64, Lk=64, query_block=32, key_block=32)
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        _select(np.zeros((1, 1, 2, 2), np.float32), **args)


# --------------------------------------------------------------------------- LUT
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_lut_matches_oracle(case):
    Lq, Lk, bq, bk, causal = case
    rng = np.random.default_rng(Lq * 5 + Lk)
    nq, nk = -(-Lq // bq), -(-Lk // bk)
    # arbitrary user map, including non-zero levels in the upper triangle (must be dropped)
    M = rng.choice(np.array([0, 1, 2, 4, 8], np.int8), size=(2, 3, nq, nk))
    lut, counts = _lut(M, Lq=Lq, Lk=Lk, query_block=bq, key_block=bk, causal=causal)
    rl, rc = oracle.build_lut(M, Lq=Lq, Lk=Lk, query_block=bq, key_block=bk, causal=causal)
    np.testing.assert_array_equal(counts, rc)
    np.testing.assert_array_equal(lut, rl)


def test_lut_of_selected_map_roundtrip():
    rng = np.random.default_rng(8)
    geom = dict(Lq=500, Lk=700, query_block=64, key_block=32, causal=True)
    s = rng.random((1, 2, 8, 22)).astype(np.float32)
    M, _ = _select(s, **geom, dense_tail_tokens=64)
    lut, counts = _lut(M, **geom)
    for h in range(2):
        for i in range(8):
            pos = 0
            for t, p in enumerate((1, 2, 4, 8)):
                js = lut[0, h, i, pos:pos + counts[0, h, i, t]]
                assert (M[0, h, i, js] == p).all() and (np.diff(js) > 0).all()
                pos += counts[0, h, i, t]
            J = oracle.last_valid_block(i, geom["Lq"], geom["Lk"], 64, 32, True)
            assert pos == (M[0, h, i, :J + 1] > 0).sum()


@pytest.mark.parametrize("max_buckets", [1, 2, 16])
def test_row_width_buckets_give_the_same_maps(max_buckets):
    """Rows launched at several padded widths (16, 32, 64 here), merged or not, match the oracle exactly."""
    from paddlemix_psa.kernels.select import _row_buckets, psa_build_lut, psa_select_levels

    Lq = Lk = 1500
    qb = kb = 32
    nq, nk = -(-Lq // qb), -(-Lk // kb)
    assert len(_row_buckets(Lq, Lk, qb, kb, True, nq, nk, 16)) == 3
    rng = np.random.default_rng(max_buckets)
    A = (rng.random((1, 2, nq, nk)) ** 3).astype(np.float32)
    cap = rng.choice([1, 2, 4, 8], size=(1, 1, nk)).astype(np.int8)
    want, want_counters = oracle.level_map(A, Lq=Lq, Lk=Lk, query_block=qb, key_block=kb, dense_tail_tokens=96,
                                           sim_cap_levels=cap, gqa_group=2)
    M = np.full(A.shape, 77, np.int8)
    counters = np.zeros(6, np.int32)
    psa_select_levels(hv(A), hv(M), Lq=Lq, Lk=Lk, query_block=qb, key_block=kb, causal=True, mode="energybound",
                      ends=README, dense_tail_tokens=96, sim_cap=hv(cap), gqa_group=2, counters=hv(counters),
                      max_buckets=max_buckets)
    assert (M == want).all()
    assert dict(zip(COUNTER_KEYS, counters.tolist())) == want_counters
    lut = np.full(M.shape, -7, np.int32)
    counts = np.full(M.shape[:3] + (4,), -7, np.int32)
    psa_build_lut(hv(M), hv(lut), hv(counts), Lq=Lq, Lk=Lk, query_block=qb, key_block=kb, causal=True,
                  max_buckets=max_buckets)
    want_lut, want_counts = oracle.build_lut(want, Lq=Lq, Lk=Lk, query_block=qb, key_block=kb)
    assert (lut == want_lut).all() and (counts == want_counts).all()
