"""psa_pool_kv on GPU (torch tensors) vs torch fp32 valid-token means (docs/ALGORITHM.md §3)."""
import pytest

from torch_oracle import pool_mean, run_pool_kernel, to_layout


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("Lk", [1, 13, 1000, 4097])
@pytest.mark.parametrize("layout", ["BHSD", "BSHD"])
def test_pool_gpu(cuda, dtype_name, Lk, layout):
    import torch

    dt = getattr(torch, dtype_name)
    g = torch.Generator(device=cuda).manual_seed(Lk)
    k = torch.randn((2, 4, Lk, 128), device=cuda, generator=g).to(dt)
    v = torch.randn((2, 4, Lk, 128), device=cuda, generator=g).to(dt)
    kp, vp = run_pool_kernel(to_layout(k, layout), to_layout(v, layout), layout=layout)
    tol = {"bfloat16": 8e-3, "float16": 1e-3, "float32": 1e-6}[dtype_name]
    for p in (2, 4, 8):
        for got, x in ((kp[p], k), (vp[p], v)):
            ref = pool_mean(x, p)
            assert got.shape == ref.shape
            assert not torch.isnan(got).any()
            torch.testing.assert_close(got.float(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("D", [64, 80, 96])
def test_pool_gpu_head_dims(cuda, D):
    import torch

    k = torch.randn((1, 2, 777, D), device=cuda, dtype=torch.float16)
    kp, vp = run_pool_kernel(k, k.clone())
    for p in (2, 4, 8):
        torch.testing.assert_close(kp[p].float(), pool_mean(k, p), atol=1e-3, rtol=1e-3)


def test_pool_gpu_nan_beyond_lk(cuda):
    import torch

    buf = torch.full((1, 2, 300, 128), float("nan"), device=cuda, dtype=torch.bfloat16)
    buf[:, :, :251] = torch.randn((1, 2, 251, 128), device=cuda).to(torch.bfloat16)
    k = buf[:, :, :251]
    kp, vp = run_pool_kernel(k, k)
    for p in (2, 4, 8):
        assert not torch.isnan(kp[p]).any()
        torch.testing.assert_close(kp[p].float(), pool_mean(k.contiguous(), p), atol=8e-3, rtol=8e-3)
