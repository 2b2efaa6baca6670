"""Compile-only (docs/LAUNCH.md §6 layer 2): the single-pass estimator's pass A for sm_90 on a CPU machine, on
its TMA path (descriptor loads: ``cp.async.bulk.tensor``, both wgmma operands in shared memory) and on the
pointer path that sm_80/86/89 run. A stub driver reports ``GPUTarget("cuda", 90, 32)``; nothing is launched.
"""
from __future__ import annotations

import os
import re
import sys

import pytest

from _sm90 import COMPILE_ONLY, ROOT, SMEM_LIMIT, FakeTensor, stub_driver

triton = pytest.importorskip("triton")

pytestmark = COMPILE_ONLY


@pytest.fixture
def pass_a_sm90(tmp_path, monkeypatch):
    """Pass A launches become sm_90 warmups (collected); pass B is skipped."""
    from paddlemix_psa.kernels import estimate

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    compiled = []
    run = estimate._xattn_partial_kernel.run

    def warmup(*args, **kwargs):
        kwargs["warmup"] = True
        compiled.append(run(*args, **kwargs))
        return compiled[-1]

    monkeypatch.setattr(estimate._xattn_partial_kernel, "run", warmup)
    monkeypatch.setattr(estimate._xattn_finalize_kernel, "run", lambda *a, **k: None)
    with stub_driver(90):
        yield compiled


def _compile(compiled, dtype="bfloat16", D=128, layout="BHSD", L=32768, **tiles):
    from paddlemix_psa.kernels.estimate import psa_estimate_scores

    bhsd = lambda h: (1, h, L, D) if layout == "BHSD" else (1, L, h, D)  # noqa: E731
    q, k = FakeTensor(bhsd(28), dtype), FakeTensor(bhsd(4), dtype)
    out = FakeTensor((1, 28, -(-L // 128), -(-L // 32)), "float32")
    psa_estimate_scores(q, k, out, query_block=128, key_block=32, stride=16, causal=True, scale=None, layout=layout,
                        scratch=lambda shp, dt: FakeTensor(shp, dt), **tiles)
    kern = compiled[-1]
    assert 0 < kern.metadata.shared <= SMEM_LIMIT, f"shared memory {kern.metadata.shared} B > {SMEM_LIMIT} B"
    return kern


def _dot_operands_in_smem(ttgir: str) -> bool:
    # "ttng.warp_group_dot %a, %b, %c ... : A-type * B-type -> C-type": both operand types are shared memdescs
    dots = re.findall(r"ttng\.warp_group_dot .*?: (\S+)<.*?> \* (\S+)<", ttgir)
    return bool(dots) and all(a == b == "!ttg.memdesc" for a, b in dots)


@pytest.mark.parametrize("tiles", [dict(), dict(flatten=True), dict(block_a=128, block_c=128, block_k=128,
                                                                     num_stages=2),
                                   dict(block_a=64, block_c=128, num_warps=4, num_stages=4)],
                         ids=lambda t: "-".join(f"{k}{v}" for k, v in t.items()) or "default")
def test_pass_a_tma_variant(pass_a_sm90, tiles):
    kern = _compile(pass_a_sm90, **tiles)
    ptx = kern.asm["ptx"]
    assert "cp.async.bulk.tensor" in ptx, "expected TMA loads in pass A on sm_90"
    assert "wgmma" in ptx
    assert _dot_operands_in_smem(kern.asm["ttgir"]), "a wgmma operand of the TMA path went through registers"


@pytest.mark.parametrize("dtype,D,layout", [("float16", 80, "BSHD"), ("float32", 64, "BHSD")])
def test_pass_a_tma_other_dtypes(pass_a_sm90, dtype, D, layout):
    kern = _compile(pass_a_sm90, dtype=dtype, D=D, layout=layout, L=4096)
    assert "cp.async.bulk.tensor" in kern.asm["ptx"]


def test_pass_a_pointer_variant(pass_a_sm90):
    """What sm_80/86/89 run (and use_tma=False): no TMA instruction."""
    kern = _compile(pass_a_sm90, use_tma=False)
    assert "cp.async.bulk.tensor" not in kern.asm["ptx"]
    assert "wgmma" in kern.asm["ptx"]


def _tma_space():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from bench_estimate import TMA_SPACE

    return TMA_SPACE if os.environ.get("PSA_COMPILE_ALL") == "1" else TMA_SPACE[:1] + TMA_SPACE[-1:]


@pytest.mark.parametrize("block_a,block_c,block_k,num_stages,num_warps,flatten", _tma_space())
def test_bench_tma_space_fits_sm90(pass_a_sm90, block_a, block_c, block_k, num_stages, num_warps, flatten):
    """Every point that bench_estimate.py --compare-tma times builds for sm_90 on the TMA path within 227 KiB."""
    kern = _compile(pass_a_sm90, block_a=block_a, block_c=block_c, block_k=block_k, num_stages=num_stages,
                    num_warps=num_warps, flatten=flatten)
    assert "cp.async.bulk.tensor" in kern.asm["ptx"]
