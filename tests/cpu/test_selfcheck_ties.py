"""`paddlemix-psa check`'s selection comparison: exact, except at an fp32 tie of an interval end."""
import numpy as np
import paddle

from paddlemix_psa.app.selfcheck import Case, _energy_ties, _equal_but_energy_ties

CASE = Case(1, 1, 1, 128, 64, "float32", 128, 32, 0)


def _near():
    # one row of 4 valid blocks; §7 order 0, 2, 1, 3 with cumulative energy 0.5, 0.8, 0.9, 1.0
    scores = paddle.to_tensor(np.array([0.5, 0.1, 0.3, 0.1], np.float32).reshape(1, 1, 1, 4))
    return _energy_ties(scores, [0.6, 0.8, 0.9], L=128, query_block=128, key_block=32)


def test_ties_are_the_blocks_at_an_interval_end():
    assert _near()[0, 0, 0].tolist() == [False, True, True, False]


def test_a_difference_at_a_tie_passes_and_one_elsewhere_fails():
    near = _near()
    ref = paddle.to_tensor(np.array([1, 4, 2, 0], np.int8).reshape(1, 1, 1, 4))
    at_tie = paddle.to_tensor(np.array([1, 4, 4, 0], np.int8).reshape(1, 1, 1, 4))   # block 2: 2 -> 4 at E = 0.8
    elsewhere = paddle.to_tensor(np.array([2, 4, 2, 0], np.int8).reshape(1, 1, 1, 4))  # block 0: E = 0.5
    ok = _equal_but_energy_ties("selection", CASE, at_tie, ref, near)
    bad = _equal_but_energy_ties("selection", CASE, elsewhere, ref, near)
    assert ok["passed"] and "1 of 4 differ, 0 of them elsewhere" in ok["detail"]
    assert not bad["passed"] and "1 of them elsewhere" in bad["detail"]
    assert _equal_but_energy_ties("selection", CASE, ref, ref, near)["passed"]
