"""kernels/geometry.py: the call's geometry record (validated once, same messages as the attention launcher had)."""
import pytest

from _sm90 import FakeTensor

from paddlemix_psa.kernels._tensorlike import narrow, shape, strides
from paddlemix_psa.kernels.geometry import CallGeometry, call_geometry

KW = dict(layout="BHSD", query_block=32, key_block=16, causal=True, gqa_mask="per_head")


def _qkv(Hq=2, Hkv=1, Lq=64, Lk=64, D=64, dt="float32", layout="BHSD"):
    def t(H, L):
        return FakeTensor((1, H, L, D) if layout == "BHSD" else (1, L, H, D), dt)
    return t(Hq, Lq), t(Hkv, Lk), t(Hkv, Lk)


def test_record_fields_bshd_gqa():
    q, k, v = _qkv(Hq=4, Hkv=2, Lq=50, Lk=100, D=80, layout="BSHD")
    g = call_geometry(q, k, v, **dict(KW, layout="BSHD", gqa_mask="per_kv_group"))
    assert (g.B, g.Hq, g.Hkv, g.Lq, g.Lk, g.D, g.dtype) == (1, 4, 2, 50, 100, 80, "float32")
    assert (g.nq, g.nk, g.G, g.Hm, g.off, g.d_pad, g.seq_axis) == (2, 7, 2, 2, 50, 128, 1)
    st = strides(q)
    assert g.q_strides == (st[0], st[2], st[1], st[3]) and g.q_shape == shape(q)
    with pytest.raises(Exception):
        g.Lq = 3  # frozen


# Messages the attention launcher raised before the record existed (tests and users match on them).
@pytest.mark.parametrize("case,msg", [
    (dict(k=FakeTensor((1, 1, 64, 80), "float32")),
     "inconsistent q/k/v shapes: (1, 2, 64, 64), (1, 1, 64, 80), (1, 1, 64, 64) (BHSD)"),
    (dict(q=FakeTensor((1, 3, 64, 64), "float32"), k=FakeTensor((1, 2, 64, 64), "float32"),
          v=FakeTensor((1, 2, 64, 64), "float32")), "H_q=3 must be a multiple of H_kv=2"),
    (dict(v=FakeTensor((1, 1, 64, 64), "float16")), "v has dtype float16, expected float32 (q's dtype)"),
    (dict(q=FakeTensor((1, 2, 64, 64), "float32", stride=(16384, 8192, 128, 2))),
     "q needs unit stride along D, got strides (16384, 8192, 128, 2)"),
    (dict(k=FakeTensor((1, 1, 32, 64), "float32"), v=FakeTensor((1, 1, 32, 64), "float32")),
     "causal attention needs Lq <= Lk, got Lq=64, Lk=32"),
    (dict(q=FakeTensor((2, 64, 64), "float32")), "expected a 4-D tensor, got shape (2, 64, 64)"),
    (dict(layout="SBHD"), "layout must be 'BHSD' or 'BSHD', got 'SBHD'"),
    (dict(key_block=8), "key_block must be one of (16, 32, 64, 128), got 8"),
])
def test_errors_are_the_launcher_messages(case, msg):
    pytest.importorskip("triton")
    from paddlemix_psa.kernels.attn_fwd import _attn_launch_args

    q, k, v = _qkv()
    q, k, v = case.pop("q", q), case.pop("k", k), case.pop("v", v)
    kw = dict(KW, **case)
    with pytest.raises(ValueError) as rec:
        call_geometry(q, k, v, **kw)
    assert str(rec.value) == msg
    with pytest.raises(ValueError) as direct:  # the launcher without a record: the same message
        _attn_launch_args(q, k, v, {}, {}, q, q, q, scale=None, lse=None, levels=None, runs=None, config=None, **kw)
    assert str(direct.value) == msg


@pytest.mark.parametrize("layout", ["BHSD", "BSHD"])
@pytest.mark.parametrize("q0,q1,Lk_c", [(0, 32, 62), (32, 64, 94), (0, 64, 94), (20, 50, 80)])
def test_narrowed_equals_record_of_narrowed_views(layout, q0, q1, Lk_c):
    q, k, v = _qkv(Hq=4, Hkv=2, Lq=64, Lk=94, layout=layout)
    g = call_geometry(q, k, v, **dict(KW, layout=layout))
    ax = g.seq_axis
    views = narrow(q, ax, q0, q1), narrow(k, ax, 0, Lk_c), narrow(v, ax, 0, Lk_c)
    assert g.narrowed(q0, q1, Lk_c) == call_geometry(*views, **dict(KW, layout=layout))
    # the record's views are the views narrow() builds from the tensors' own metadata
    for which, t, view, (a, b) in (("q", q, views[0], (q0, q1)), ("k", k, views[1], (0, Lk_c))):
        mine = g.seq_view(t, which, a, b)
        assert (shape(mine), strides(mine), mine.data_ptr()) == (shape(view), strides(view), view.data_ptr())


def test_narrowed_and_check_reject_mismatches():
    q, k, v = _qkv()
    g = call_geometry(q, k, None, **KW)
    assert isinstance(g, CallGeometry) and g.v_strides is None
    with pytest.raises(ValueError, match="causal attention needs Lq <= Lk"):
        g.narrowed(0, 64, 32)
    with pytest.raises(ValueError, match="out of range"):
        g.narrowed(0, 65, 64)
    with pytest.raises(ValueError, match="geometry has key_block=16 but the launcher got key_block=32"):
        g.check(key_block=32)
    with pytest.raises(ValueError, match="built without v"):
        g.check(needs_v=True, layout="BHSD")
