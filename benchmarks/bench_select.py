#!/usr/bin/env python3
"""Level selection + index lists on one GPU (torch tensors): row-width bucket counts side by side.

    PYTHONPATH=src python3 benchmarks/bench_select.py [--lengths 32768 65536 131072] [--buckets 1,2,3,4,16]

Hq=28, Hkv=4, query_block=128, key_block=32, causal, default energybound ratios, dense tail 512, similarity
cap on random caps; scores are random (the bitonic sort's cost does not depend on the values). Median of 20
runs with triton.testing.do_bench.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

import torch  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from paddlemix_psa.kernels.select import psa_build_lut, psa_select_levels  # noqa: E402

README = {1: (0.0, 0.6), 2: (0.6, 0.8), 4: (0.8, 0.9), 8: (0.9, 0.9), 0: (0.9, 1.0)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[32768, 65536, 131072])
    ap.add_argument("--buckets", default="1,2,3,4,16")
    args = ap.parse_args()
    Hq, Hkv, bq, bk = 28, 4, 128, 32
    print(f"# {torch.cuda.get_device_name()}; select + index list ms (median), by max_buckets")
    print(f"{'L':>8} " + " ".join(f"{'b=' + b:>10}" for b in args.buckets.split(",")))
    for L in args.lengths:
        nq, nk = -(-L // bq), -(-L // bk)
        g = torch.Generator(device="cuda").manual_seed(L)
        scores = torch.rand((1, Hq, nq, nk), device="cuda", generator=g)
        cap = torch.randint(1, 9, (1, Hkv, nk), device="cuda", generator=g).to(torch.int8)
        M = torch.empty((1, Hq, nq, nk), device="cuda", dtype=torch.int8)
        lut = torch.empty((1, Hq, nq, nk), device="cuda", dtype=torch.int32)
        counts = torch.empty((1, Hq, nq, 4), device="cuda", dtype=torch.int32)
        geom = dict(Lq=L, Lk=L, query_block=bq, key_block=bk, causal=True)
        cells = []
        ref = None
        for b in (int(x) for x in args.buckets.split(",")):
            def run(b=b):
                psa_select_levels(scores, M, **geom, mode="energybound", ends=README, dense_tail_tokens=512,
                                  sim_cap=cap, gqa_group=Hq // Hkv, max_buckets=b)
                psa_build_lut(M, lut, counts, **geom, max_buckets=b)
            run()
            if ref is None:
                ref = (M.clone(), lut.clone(), counts.clone())
            assert torch.equal(M, ref[0]) and torch.equal(lut, ref[1]) and torch.equal(counts, ref[2])
            cells.append(do_bench(run, warmup=25, rep=200, return_mode="median"))
        print(f"{L:>8} " + " ".join(f"{c:>10.3f}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
