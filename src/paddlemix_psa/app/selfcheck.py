"""The self-test behind `paddlemix-psa check`: versions, the backend a GPU tensor gets, every kernel against the
pure-Paddle reference, and (on a Paddle GPU) full PSA timed against Paddle's own dense attention.

Without a Paddle GPU the kernel checks run under the Triton interpreter on tiny shapes, in a child process
(`TRITON_INTERPRET=1` must be set before Triton compiles anything), and no timing is attempted.
Tolerances: integer outputs (similarity cap, level map, index list) must be equal; fp32 estimator scores
within rtol 1e-3 / atol 1e-5; pooled K/V within one rounding of the dtype; attention by the project's rule
(PSA-SPEC T10): error vs the fp64 (GPU: fp32) reference <= 2x the error of Paddle's low-precision dense
attention against its own upcast result, plus atol 1e-3 (fp16) / 4e-3 (bf16) / 1e-5 (fp32).
"""
from __future__ import annotations

import ctypes
import dataclasses
import importlib.metadata
import json
import os
import subprocess
import sys
import time

ATOL_T10 = {"float16": 1e-3, "bfloat16": 4e-3, "float32": 1e-5}
POOL_RTOL = {"float16": 1e-3, "bfloat16": 8e-3, "float32": 1e-5}


@dataclasses.dataclass(frozen=True)
class Case:
    B: int
    Hq: int
    Hkv: int
    L: int
    D: int
    dtype: str
    query_block: int = 128
    key_block: int = 32
    dense_tail_tokens: int = 512

    def label(self) -> str:
        return f"B={self.B} Hq={self.Hq} Hkv={self.Hkv} L={self.L} D={self.D} {self.dtype}"


# the interpreter computes bf16 wrongly (fp16/fp32 only) and costs ~ms per program: tiny, ragged shapes
INTERPRETER_CASES = (Case(1, 4, 2, 200, 64, "float16", 64, 32, 0), Case(1, 2, 1, 130, 80, "float32", 32, 16, 32))
GPU_CASES = (Case(1, 4, 2, 1000, 128, "bfloat16"), Case(2, 6, 1, 777, 64, "float16"),
             Case(1, 28, 4, 8192, 128, "bfloat16"))              # the last: Qwen2.5-VL-7B text attention, 8k
TIMING_LENGTHS = (8192, 32768)


# ------------------------------------------------------------------------------------------ environment
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cuda_driver_version() -> str | None:
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        v = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(v)) == 0 and v.value:
            return f"{v.value // 1000}.{v.value % 1000 // 10}"
    return None


def environment() -> dict:
    import paddle

    from .. import __version__

    try:
        import triton
        triton_version = triton.__version__
    except Exception as exc:
        triton_version = f"not importable ({type(exc).__name__}: {exc})"
    cuda = bool(paddle.is_compiled_with_cuda())
    gpus = []
    if cuda:
        for i in range(paddle.device.cuda.device_count()):
            cap = paddle.device.cuda.get_device_capability(i)
            gpus.append({"index": i, "name": paddle.device.cuda.get_device_name(i),
                         "capability": f"{cap[0]}.{cap[1]}"})
    return {"paddlemix_psa": __version__, "python": sys.version.split()[0], "paddle": paddle.__version__,
            "paddle_compiled_with_cuda": cuda, "paddle_cuda": paddle.version.cuda() if cuda else None,
            "triton": triton_version, "cuda_driver": _cuda_driver_version(), "gpus": gpus,
            "paddleformers": _version("paddleformers"), "paddlemix": _version("paddlemix")}


def gpu_backend(env: dict) -> dict:
    """Which backend `psa_attention` uses for a bf16 tensor on gpu:0, and why."""
    import paddle

    from .. import _env
    from ..ops import dispatch
    from ..ops._launch import TritonCannotLaunch

    if _env.backend() == "reference":
        return {"backend": "reference", "why": f"{_env.BACKEND}=reference"}
    if not env["gpus"]:
        why = "no GPU device" if env["paddle_compiled_with_cuda"] else "Paddle is a CPU build (no paddlepaddle-gpu)"
        return {"backend": "none", "why": f"{why}: no GPU tensor can exist here; CPU tensors use the reference"}
    q = paddle.zeros([1, 1, 16, 64], dtype="bfloat16")
    try:
        backend = dispatch.select_backend(q)
    except TritonCannotLaunch as exc:
        return {"backend": "error", "why": str(exc)}
    if backend == "triton":
        gpu = env["gpus"][q.place.gpu_device_id()]
        return {"backend": "triton", "why": f"Triton kernels on gpu:{gpu['index']} ({gpu['name']}, capability "
                                            f"{gpu['capability']}); the first test launch wrote its result"}
    return {"backend": backend, "why": dispatch.backend_reason(backend)}


# ------------------------------------------------------------------------------------------ kernel checks
def _result(kernel: str, case: Case, max_error: float, tolerance: float, passed: bool, detail: str = "") -> dict:
    return {"kernel": kernel, "shape": case.label(), "passed": bool(passed), "max_error": float(max_error),
            "tolerance": float(tolerance), "detail": detail}


def _close(kernel, case, got, ref, rtol, atol) -> dict:
    import numpy as np

    a, b = got.astype("float64").numpy(), ref.astype("float64").numpy()
    err = np.abs(a - b)
    bad = ~(err <= rtol * np.abs(b) + atol)                    # NaN counts as bad
    return _result(kernel, case, float(np.nanmax(err)) if err.size else 0.0, atol + rtol * float(np.abs(b).max()),
                   not bad.any(), f"rtol={rtol:g}, atol={atol:g}; {int(bad.sum())} of {err.size} outside")


def _equal(kernel, case, got, ref) -> dict:
    import numpy as np

    a, b = got.astype("int64").numpy(), ref.astype("int64").numpy()
    diff = int((a != b).sum())
    return _result(kernel, case, float(np.abs(a - b).max()) if a.size else 0.0, 0.0, diff == 0,
                   f"exact; {diff} of {a.size} differ")


def _t10(kernel, case, got, q, k, v, oracle_fn) -> dict:
    """PSA-SPEC T10: kernel error vs the upcast oracle <= 2x Paddle's low-precision dense error + atol."""
    from ..reference import dense_attention_ref

    wide = "float64" if q.place.is_cpu_place() else "float32"
    qw, kw, vw = (t.astype(wide) for t in (q, k, v))
    err = float((got.astype(wide) - oracle_fn(qw, kw, vw)).abs().max())
    dense_err = float((dense_attention_ref(q, k, v).astype(wide) - dense_attention_ref(qw, kw, vw)).abs().max())
    tol = 2 * dense_err + ATOL_T10[case.dtype]
    return _result(kernel, case, err, tol, err <= tol, f"2 x dense {case.dtype} error {dense_err:.3g} + atol "
                                                         f"{ATOL_T10[case.dtype]:g}")


def check_case(case: Case, seed: int = 0) -> list[dict]:
    """Every kernel on one shape against the pure-Paddle reference (inputs on Paddle's current device)."""
    import paddle

    from ..config import AttentionConfig
    from ..kernels.pipeline import psa_attention_from_map
    from ..kernels.pool import psa_pool_kv
    from ..kernels.select import psa_build_lut, psa_select_levels
    from ..kernels.similarity import psa_similarity_cap
    from ..kernels.estimate import psa_estimate_scores
    from ..ops.attention import build_level_map, psa_attention
    from ..ops.dispatch import allocator, unwrap
    from ..ops._launch import kernel_args, launch_scope
    from ..reference import (build_level_map_ref, level_map_to_lut, pool_kv, psa_attention_ref, similarity_cap,
                             xattn_block_scores)
    from ..synthetic import structured_qkv

    cfg = AttentionConfig(query_block=case.query_block, key_block=case.key_block,
                          dense_tail_tokens=case.dense_tail_tokens)
    q, k, v = (paddle.to_tensor(x).astype(case.dtype) for x in structured_qkv(
        case.L, batch=case.B, q_heads=case.Hq, kv_heads=case.Hkv, head_dim=case.D, seed=seed))
    B, Hq, Hkv, L, D, G = case.B, case.Hq, case.Hkv, case.L, case.D, case.Hq // case.Hkv
    nq, nk = -(-L // cfg.query_block), -(-L // cfg.key_block)
    alloc, A = allocator(q), (lambda t: kernel_args(t)[0])
    blocks = dict(query_block=cfg.query_block, key_block=cfg.key_block)
    out = []

    scores = alloc((B, Hq, nq, nk), "float32")
    cap = alloc((B, Hkv, nk), "int8")
    with launch_scope(q):
        psa_estimate_scores(A(q), A(k), scores, stride=cfg.xattn_stride, causal=True, scale=cfg.scale,
                            layout="BHSD", scratch=alloc, **blocks)
        psa_similarity_cap(A(k), cap, key_block=cfg.key_block, thresholds=tuple(cfg.sim_thresholds), layout="BHSD")
    ref_scores = xattn_block_scores(q, k, stride=cfg.xattn_stride, causal=True, scale=cfg.scale, **blocks)
    out.append(_close("estimator", case, unwrap(scores), ref_scores, 1e-3, 1e-5))
    ref_cap = similarity_cap(k, cfg.key_block, cfg.sim_thresholds)
    out.append(_equal("similarity cap", case, unwrap(cap), ref_cap))

    # selection and index list from the reference's own inputs, so integer outputs must match exactly
    ref_map = build_level_map_ref(ref_scores, Lq=L, Lk=L, config=cfg, causal=True, sim_cap_levels=ref_cap,
                                  gqa_group=G).level_map
    level_map = alloc((B, Hq, nq, nk), "int8")
    lut, counts = alloc((B, Hq, nq, nk), "int32"), alloc((B, Hq, nq, 4), "int32")
    kp = {p: alloc((B, Hkv, -(-L // p), D), case.dtype) for p in (2, 4, 8)}
    vp = {p: alloc((B, Hkv, -(-L // p), D), case.dtype) for p in (2, 4, 8)}
    with launch_scope(q):
        psa_select_levels(A(ref_scores.contiguous()), level_map, Lq=L, Lk=L, causal=True, mode=cfg.mask_mode,
                          ends=dict(cfg.mask_ratios), dense_tail_tokens=cfg.dense_tail_tokens, prompt_end=None,
                          force_sink=cfg.force_sink, sim_cap=A(ref_cap.astype("int8")), gqa_group=G, **blocks)
        psa_build_lut(A(ref_map), lut, counts, Lq=L, Lk=L, causal=True, **blocks)
        psa_pool_kv(A(k), A(v), kp, vp, layout="BHSD")
    out.append(_equal("selection", case, unwrap(level_map), ref_map))
    ref_lut, ref_counts = level_map_to_lut(ref_map, Lq=L, Lk=L, causal=True, **blocks)
    out.append(_equal("index list", case, paddle.concat([unwrap(lut), unwrap(counts)], axis=-1),
                      paddle.concat([ref_lut, ref_counts], axis=-1)))
    ref_pool = pool_kv(k, v, (2, 4, 8))
    got_pool = paddle.concat([unwrap(t[p]).astype("float32").flatten() for t in (kp, vp) for p in (2, 4, 8)])
    want_pool = paddle.concat([ref_pool[p][i].astype("float32").flatten() for i in (0, 1) for p in (2, 4, 8)])
    out.append(_close("pooling", case, got_pool, want_pool, POOL_RTOL[case.dtype], 1e-5))

    with launch_scope(q):
        attn, _, _ = psa_attention_from_map(A(q), A(k), A(v), A(ref_map), alloc=alloc, causal=True, scale=cfg.scale,
                                            layout="BHSD", gqa_mask=cfg.gqa_mask, **blocks)
    out.append(_t10("attention", case, unwrap(attn), q, k, v, lambda qw, kw, vw: psa_attention_ref(
        qw, kw, vw, ref_map, causal=True, scale=cfg.scale, gqa_mask=cfg.gqa_mask, **blocks)))

    # the public op end to end (plan + run in one pipeline), against the reference over its own plan
    full, stats = psa_attention(q, k, v, config=cfg, return_stats=True)
    plan = build_level_map(q, k, cfg)
    res = _t10("psa_attention", case, full, q, k, v, lambda qw, kw, vw: psa_attention_ref(
        qw, kw, vw, plan, causal=True, scale=cfg.scale, gqa_mask=cfg.gqa_mask, **blocks))
    if stats.backend != "triton":
        res.update(passed=False, detail=f"ran on the {stats.backend} backend, not the Triton kernels")
    else:
        res["detail"] += f"; density {stats.density:.3f}"
    out.append(res)
    return out


def run_cases(cases) -> list[dict]:
    results = []
    for case in cases:
        try:
            results.extend(check_case(case))
        except Exception as exc:                  # a crashing kernel is a failed check, named with its shape
            results.append(_result("pipeline", case, float("nan"), 0.0, False,
                                   f"raised {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"))
    return results


def interpreted_checks(timeout: float = 600) -> list[dict]:
    """INTERPRETER_CASES in a child process with TRITON_INTERPRET=1 (CPU tensors through host views)."""
    env = dict(os.environ, TRITON_INTERPRET="1", PADDLEMIX_PSA_BACKEND="auto")
    proc = subprocess.run([sys.executable, "-m", "paddlemix_psa.app.selfcheck"], capture_output=True, text=True,
                          env=env, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return [_result("interpreter", case, float("nan"), 0.0, False, f"child process failed: {tail}")
                for case in INTERPRETER_CASES]
    return json.loads(lines[-1])["checks"]


# ------------------------------------------------------------------------------------------ GPU timing
def _median_ms(fn, reps: int = 10, warmup: int = 3) -> float:
    import paddle

    for _ in range(warmup):
        fn()
    paddle.device.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        paddle.device.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def _dense_baselines(qs, ks, vs) -> dict:
    """Paddle's own dense attention on [B, L, H, D]: flash-attention (FA2, and FA3 where the flag works), SDPA."""
    import paddle
    import paddle.nn.functional as F
    from paddle.nn.functional.flash_attention import flash_attention

    out = {}
    for name, fn in (("flash_attention", lambda: flash_attention(qs, ks, vs, causal=True)),
                     ("scaled_dot_product_attention",
                      lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, training=False))):
        try:
            out[name] = _median_ms(fn)
        except Exception as exc:
            out[name] = f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
    try:
        paddle.set_flags({"FLAGS_flash_attn_version": 3})
        out["flash_attention_fa3"] = _median_ms(lambda: flash_attention(qs, ks, vs, causal=True))
    except Exception as exc:
        out["flash_attention_fa3"] = f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
    finally:
        try:
            paddle.set_flags({"FLAGS_flash_attn_version": 2})
        except Exception:
            pass
    return out


def gpu_timing(lengths=TIMING_LENGTHS) -> list[dict]:
    """Full PSA (default config) vs Paddle's dense attention on Qwen2.5-VL-7B shapes, median of 10 runs."""
    import paddle

    from ..ops.attention import psa_attention
    from ..synthetic import structured_qkv

    rows = []
    for L in lengths:
        q, k, v = (paddle.to_tensor(x).astype("bfloat16")
                   for x in structured_qkv(L, q_heads=28, kv_heads=4, head_dim=128, seed=0))
        _, stats = psa_attention(q, k, v, return_stats=True)
        row = {"L": L, "shape": "B=1 Hq=28 Hkv=4 D=128 bfloat16", "density": stats.density,
               "psa_ms": _median_ms(lambda: psa_attention(q, k, v))}
        qs, ks, vs = (t.transpose([0, 2, 1, 3]).contiguous() for t in (q, k, v))
        row.update(_dense_baselines(qs, ks, vs))
        if isinstance(row.get("flash_attention"), float):
            row["speedup_vs_flash_attention"] = row["flash_attention"] / row["psa_ms"]
        rows.append(row)
        del q, k, v, qs, ks, vs
    return rows


# ------------------------------------------------------------------------------------------ the report
def build_report(*, timing: bool = True) -> dict:
    env = environment()
    backend = gpu_backend(env)
    report = {"environment": env, "gpu_backend": backend}
    if backend["backend"] == "triton":
        report["mode"] = "gpu"
        report["checks"] = run_cases(GPU_CASES)
        report["timing"] = ({"possible": True, "rows": gpu_timing()} if timing else
                            {"possible": False, "why": "skipped (--no-timing)"})
    else:
        report["mode"] = "interpreter"
        report["checks"] = interpreted_checks()
        report["timing"] = {"possible": False,
                            "why": f"no GPU timing was possible: the Triton kernels cannot run on a Paddle GPU "
                                   f"here ({backend['why']})"}
    report["passed"] = bool(report["checks"]) and all(c["passed"] for c in report["checks"])
    return report


def format_report(report: dict) -> list[str]:
    env = report["environment"]
    lines = ["paddlemix-psa check", "versions:",
             f"  paddlemix_psa {env['paddlemix_psa']}  python {env['python']}",
             f"  paddle {env['paddle']} (compiled with CUDA: {'yes' if env['paddle_compiled_with_cuda'] else 'no'}"
             + (f", CUDA {env['paddle_cuda']}" if env["paddle_cuda"] else "") + ")",
             f"  triton {env['triton']}",
             f"  CUDA driver {env['cuda_driver'] or 'not found (libcuda cannot be loaded)'}"]
    lines += [f"  gpu:{g['index']} {g['name']} (capability {g['capability']})" for g in env["gpus"]] or ["  GPU: none"]
    lines.append(f"  paddleformers {env['paddleformers'] or 'not installed'}  "
                 f"paddlemix {env['paddlemix'] or 'not installed'}")
    gb = report["gpu_backend"]
    lines.append(f"backend for a GPU tensor: {gb['backend']} ({gb['why']})")
    where = ("on the GPU, small ragged and Qwen2.5-VL-7B 8k shapes" if report["mode"] == "gpu" else
             "under the Triton interpreter on CPU, tiny shapes")
    lines.append(f"kernel checks ({where}; against the pure-Paddle reference):")
    for c in report["checks"]:
        lines.append(f"  {'PASS' if c['passed'] else 'FAIL'} {c['kernel']:<15} {c['shape']:<40} "
                     f"max error {c['max_error']:.3g} (tolerance {c['tolerance']:.3g}; {c['detail']})")
    t = report["timing"]
    if t["possible"]:
        lines.append("timing (median of 10, ms; Qwen2.5-VL-7B text attention, default config):")
        for r in t["rows"]:
            dense = "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                              if k in ("flash_attention", "flash_attention_fa3", "scaled_dot_product_attention"))
            lines.append(f"  L={r['L']}: PSA {r['psa_ms']:.2f} (density {r['density']:.3f})  {dense}")
    else:
        lines.append(f"timing: {t['why']}")
    n_bad = sum(not c["passed"] for c in report["checks"])
    lines.append(f"result: {'PASS' if report['passed'] else 'FAIL'} ({len(report['checks']) - n_bad} of "
                 f"{len(report['checks'])} checks passed)")
    return lines


def _child_main() -> int:
    """Entry of the interpreter child: TRITON_INTERPRET=1 is already set, nothing has imported Triton yet."""
    print(json.dumps({"checks": run_cases(INTERPRETER_CASES)}))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
