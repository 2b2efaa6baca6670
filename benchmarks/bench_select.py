#!/usr/bin/env python3
"""Level selection on one GPU (torch tensors): the sorting kernel (baseline) against the threshold search.

    PYTHONPATH=src python3 benchmarks/bench_select.py [--lengths 32768 131072] [--baseline-rev 0c27551]

The baseline is the sorting ``psa_select_levels`` as committed at ``--baseline-rev`` (``git show`` at run time,
loaded from a temporary file; nothing of it is kept in this repo). Hq=28, Hkv=4, query_block=128, key_block=32,
causal, default energybound ratios (and topk), dense tail 512, similarity cap on random caps. Scores: ``uniform``
(rand) and ``power`` (rand**8, a few heavy blocks per row). Median ms of triton.testing.do_bench (cold L2 per
rep), the speed-up, and how far the two maps differ (blocks whose level differs; |density difference|).
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "src"))

import torch  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from paddlemix_psa.kernels import select as current  # noqa: E402

README = {1: (0.0, 0.6), 2: (0.6, 0.8), 4: (0.8, 0.9), 8: (0.9, 0.9), 0: (0.9, 1.0)}
SELECT_PATH = "src/paddlemix_psa/kernels/select.py"


def load_baseline(rev: str, tmp: str, source_file: str | None = None):
    """The select module at git revision ``rev`` (or read from ``source_file``, for a machine whose copy of the
    tree has no .git), imported from a temporary file (Triton reads its source)."""
    if source_file:
        with open(source_file) as f:
            src = f.read()
    else:
        src = subprocess.run(["git", "-C", _ROOT, "show", f"{rev}:{SELECT_PATH}"], check=True,
                             capture_output=True, text=True).stdout
    if "tl.sort" not in src:
        raise SystemExit(f"--baseline-rev {rev}: {SELECT_PATH} there has no tl.sort; pass the sorting revision")
    path = os.path.join(tmp, "_select_sorted_baseline.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("paddlemix_psa.kernels._select_sorted_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def density(M, valid, Hq):
    w = torch.zeros_like(M, dtype=torch.float32)
    for p in (1, 2, 4, 8):
        w += (M == p).float() / p
    return float((w * valid).sum() / (valid.sum() * Hq))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    ap.add_argument("--baseline-rev", default="0c27551", help="a commit whose select.py still sorts")
    ap.add_argument("--baseline-file", default=None,
                    help="that select.py as a file (e.g. `git show REV:src/paddlemix_psa/kernels/select.py`)")
    ap.add_argument("--modes", default="energybound,topk")
    args = ap.parse_args()
    Hq, Hkv, bq, bk = 28, 4, 128, 32
    with tempfile.TemporaryDirectory() as tmp:
        baseline = load_baseline(args.baseline_rev, tmp, args.baseline_file)
        print(f"# {torch.cuda.get_device_name()}; psa_select_levels ms (median); baseline = sort at "
              f"{args.baseline_rev}, new = threshold search (working tree)")
        print(f"{'L':>7} {'mode':>12} {'scores':>8} {'sort ms':>9} {'search ms':>10} {'speed-up':>9} "
              f"{'blocks differ':>14} {'|d density|':>12}")
        for L in args.lengths:
            nq, nk = -(-L // bq), -(-L // bk)
            g = torch.Generator(device="cuda").manual_seed(L)
            cap = torch.randint(1, 9, (1, Hkv, nk), device="cuda", generator=g).to(torch.int8)
            M_old = torch.empty((1, Hq, nq, nk), device="cuda", dtype=torch.int8)
            M_new = torch.empty_like(M_old)
            geom = dict(Lq=L, Lk=L, query_block=bq, key_block=bk, causal=True)
            rows = torch.arange(nq, device="cuda")[:, None]
            cols = torch.arange(nk, device="cuda")[None, :]
            valid = (cols <= ((rows + 1) * bq - 1) // bk).float()[None, None]
            for kind in ("uniform", "power"):
                scores = torch.rand((1, Hq, nq, nk), device="cuda", generator=g)
                if kind == "power":
                    scores = scores ** 8
                for mode in args.modes.split(","):
                    def run(mod, M):
                        mod.psa_select_levels(scores, M, **geom, mode=mode, ends=README, dense_tail_tokens=512,
                                              sim_cap=cap, gqa_group=Hq // Hkv)
                    run(baseline, M_old)
                    run(current, M_new)
                    torch.cuda.synchronize()
                    differ = int((M_old != M_new).sum())
                    dd = abs(density(M_old, valid, Hq) - density(M_new, valid, Hq))
                    t_old = do_bench(lambda: run(baseline, M_old), warmup=25, rep=200, return_mode="median")
                    t_new = do_bench(lambda: run(current, M_new), warmup=25, rep=200, return_mode="median")
                    print(f"{L:>7} {mode:>12} {kind:>8} {t_old:>9.3f} {t_new:>10.3f} {t_old / t_new:>8.2f}x "
                          f"{differ:>14} {dd:>12.2e}", flush=True)


if __name__ == "__main__":
    main()
