"""One call's geometry, read from q, k, v once and handed to every launcher (the plan/run split).

:func:`call_geometry` reads the shapes, element strides and dtype of q, k (and v) through ``_tensorlike`` once,
validates them, and returns a frozen :class:`CallGeometry`. The pipeline builds one per call; each launcher
takes it as ``geometry=`` instead of re-reading the tensors, and still checks the buffers the record does not
describe (outputs, index lists, scratch). A chunk of the plan derives its record arithmetically
(:meth:`CallGeometry.narrowed`), and :meth:`CallGeometry.seq_view` narrows q or k without reading their metadata
again. Stdlib only.
"""

from __future__ import annotations

import dataclasses

from ._tensorlike import SliceView, dtype_name, shape, strides

__all__ = ["CallGeometry", "call_geometry", "HEAD_DIMS", "QUERY_BLOCKS", "KEY_BLOCKS"]

HEAD_DIMS = (64, 80, 96, 128)
QUERY_BLOCKS = (32, 64, 128)
KEY_BLOCKS = (16, 32, 64, 128)
_DTYPES = ("float16", "bfloat16", "float32")


def _swap_hl(t4: tuple, layout: str) -> tuple:
    # BHSD <-> the tensor's own axis order: the BSHD swap of axes 1 and 2 is its own inverse
    return tuple(t4) if layout == "BHSD" else (t4[0], t4[2], t4[1], t4[3])


@dataclasses.dataclass(frozen=True)
class CallGeometry:
    """What every launcher of one PSA call needs to know about q, k, v; lengths may be those of a chunk.

    Shapes are ``B, Hq, Hkv, Lq, Lk, D``; ``q_strides`` / ``k_strides`` / ``v_strides`` are element strides in
    BHSD order (``v_strides`` is None for a plan built without v), whatever the tensors' ``layout``.
    """

    layout: str
    B: int
    Hq: int
    Hkv: int
    Lq: int
    Lk: int
    D: int
    dtype: str
    q_strides: tuple
    k_strides: tuple
    v_strides: tuple | None
    query_block: int
    key_block: int
    causal: bool
    gqa_mask: str

    @property
    def nq(self) -> int:
        return -(-self.Lq // self.query_block)

    @property
    def nk(self) -> int:
        return -(-self.Lk // self.key_block)

    @property
    def G(self) -> int:
        """Query heads per KV head."""
        return self.Hq // self.Hkv

    @property
    def Hm(self) -> int:
        """Heads of the level map / index list."""
        return self.Hq if self.gqa_mask == "per_head" else self.Hkv

    @property
    def off(self) -> int:
        """Bottom-right causal offset: query row r sits at key position r + off."""
        return self.Lk - self.Lq

    @property
    def d_pad(self) -> int:
        return 1 << (self.D - 1).bit_length()

    @property
    def seq_axis(self) -> int:
        return 2 if self.layout == "BHSD" else 1

    @property
    def q_shape(self) -> tuple:
        """q's shape in its own layout (what an output like q is allocated with)."""
        return _swap_hl((self.B, self.Hq, self.Lq, self.D), self.layout)

    def narrowed(self, q0: int, q1: int, Lk: int) -> "CallGeometry":
        """The record of queries ``[q0, q1)`` against keys ``[0, Lk)`` (a plan chunk); strides are unchanged."""
        if not 0 <= q0 <= q1 <= self.Lq or not 0 <= Lk <= self.Lk:
            raise ValueError(f"chunk q[{q0}, {q1}), k[0, {Lk}) out of range for Lq={self.Lq}, Lk={self.Lk}")
        if self.causal and q1 - q0 > Lk:
            raise ValueError(f"causal attention needs Lq <= Lk, got Lq={q1 - q0}, Lk={Lk}")
        return dataclasses.replace(self, Lq=q1 - q0, Lk=Lk)

    def seq_view(self, t, which: str, start: int, stop: int):
        """Rows ``[start, stop)`` of ``t`` (the call's q or k, ``which`` = "q" / "k") along the sequence axis: ``t``
        itself when whole, else a SliceView built from this record (no metadata read of ``t``)."""
        H, L, st = (self.Hq, self.Lq, self.q_strides) if which == "q" else (self.Hkv, self.Lk, self.k_strides)
        if start == 0 and stop == L:
            return t
        return SliceView(t, self.seq_axis, start, stop, base_shape=_swap_hl((self.B, H, L, self.D), self.layout),
                         base_strides=_swap_hl(st, self.layout), base_dtype=self.dtype)

    def check(self, *, needs_v: bool = False, **expect) -> None:
        """Raise unless the record agrees with a launcher's own arguments (``layout=``, ``key_block=``, ...)."""
        for name, want in expect.items():
            got = getattr(self, name)
            if got != want:
                raise ValueError(f"geometry has {name}={got!r} but the launcher got {name}={want!r}")
        if needs_v and self.v_strides is None:
            raise ValueError("geometry was built without v; pass v to call_geometry")


def _bhsd(t, layout: str) -> tuple:
    s, st = shape(t), strides(t)
    if len(s) != 4:
        raise ValueError(f"expected a 4-D tensor, got shape {s}")
    return s, _swap_hl(s, layout), _swap_hl(st, layout)


def call_geometry(q, k, v=None, *, layout: str, query_block: int, key_block: int, causal: bool,
                  gqa_mask: str = "per_head") -> CallGeometry:
    """Read and validate q, k (and v) once: q ``[B, H_q, Lq, D]``, k/v ``[B, H_kv, Lk, D]`` in ``layout``, one
    dtype in (float16, bfloat16, float32), unit stride along D, ``H_q % H_kv == 0``, causal ``Lq <= Lk``."""
    if layout not in ("BHSD", "BSHD"):
        raise ValueError(f"layout must be 'BHSD' or 'BSHD', got {layout!r}")
    if gqa_mask not in ("per_head", "per_kv_group"):
        raise ValueError(f"gqa_mask must be 'per_head' or 'per_kv_group', got {gqa_mask!r}")
    if query_block not in QUERY_BLOCKS:
        raise ValueError(f"query_block must be one of {QUERY_BLOCKS}, got {query_block}")
    if key_block not in KEY_BLOCKS:
        raise ValueError(f"key_block must be one of {KEY_BLOCKS}, got {key_block}")
    qn, (B, Hq, Lq, D), qst = _bhsd(q, layout)
    kn, (Bk, Hkv, Lk, Dk), kst = _bhsd(k, layout)
    vn, vs, vst = _bhsd(v, layout) if v is not None else (None, None, None)
    if (Bk, Dk) != (B, D) or (v is not None and vs != (Bk, Hkv, Lk, Dk)):
        names = "q/k/v" if v is not None else "q/k"
        given = ", ".join(str(s) for s in (qn, kn, vn) if s is not None)
        raise ValueError(f"inconsistent {names} shapes: {given} ({layout})")
    if D not in HEAD_DIMS:
        raise ValueError(f"head dim must be one of {HEAD_DIMS}, got {D}")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"H_q={Hq} must be a multiple of H_kv={Hkv}")
    dt = dtype_name(q)
    if dt not in _DTYPES:
        raise ValueError(f"dtype must be float16, bfloat16 or float32, got {dt}")
    for name, t in (("k", k), ("v", v)):
        if t is not None and dtype_name(t) != dt:
            raise ValueError(f"{name} has dtype {dtype_name(t)}, expected {dt} (q's dtype)")
    for name, st in (("q", qst), ("k", kst), ("v", vst)):
        if st is not None and st[3] != 1:
            raise ValueError(f"{name} needs unit stride along D, got strides {st}")
    if causal and Lq > Lk:
        raise ValueError(f"causal attention needs Lq <= Lk, got Lq={Lq}, Lk={Lk}")
    return CallGeometry(layout=layout, B=B, Hq=Hq, Hkv=Hkv, Lq=Lq, Lk=Lk, D=D, dtype=dt, q_strides=qst,
                        k_strides=kst, v_strides=vst, query_block=query_block, key_block=key_block,
                        causal=bool(causal), gqa_mask=gqa_mask)
