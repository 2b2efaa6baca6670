"""The self-test behind `paddlemix-psa check`: versions, the backend a GPU tensor gets, every kernel against the
pure-Paddle reference, and (on a Paddle GPU) full PSA timed against Paddle's own dense attention.

Without a Paddle GPU the kernel checks run under the Triton interpreter on tiny shapes, in a child process
(`TRITON_INTERPRET=1` must be set before Triton compiles anything), and no timing is attempted.
Tolerances: integer outputs (similarity cap, level map, index list) must be equal; fp32 estimator scores
within rtol 1e-3 / atol 1e-5; pooled K/V within one rounding of the dtype; attention by the project's rule
(docs/ALGORITHM.md T10): error vs the fp64 (GPU: fp32) reference <= 2x the error of Paddle's low-precision dense
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
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _result(kernel: str, case: Case, max_error: float | None, tolerance: float, passed: bool,
            detail: str = "") -> dict:
    """One check; `max_error` None when the kernel crashed before producing an output."""
    return {"kernel": kernel, "shape": case.label(), "passed": bool(passed),
            "max_error": None if max_error is None else float(max_error), "tolerance": float(tolerance),
            "detail": detail}


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


def _energy_ties(scores, ends, *, L, query_block, key_block, tol=1e-5):
    """bool [B, H, nq, nk]: blocks whose cumulative energy (fp64, in the §7 order) lies within ``tol`` of an interval
    end. There the kernel's fp32 sums (their order follows the launch layout) may cross the end on the other side
    than the reference's, so the level of such a block may differ by one interval."""
    import numpy as np

    A = scores.astype("float64").numpy()
    near = np.zeros(A.shape, bool)
    for i in range(A.shape[2]):
        n = (min((i + 1) * query_block, L) - 1) // key_block + 1  # causal, Lq = Lk: valid blocks of row i
        row = A[:, :, i, :n]
        order = np.argsort(-row, axis=-1, kind="stable")         # descending, ties to the smaller j
        csum = np.cumsum(np.take_along_axis(row, order, -1), -1)
        E = csum / np.maximum(csum[..., -1:], np.finfo(np.float64).tiny)
        hit = np.zeros(E.shape, bool)
        for e in ends:
            hit |= np.abs(E - e) < tol
        np.put_along_axis(near[:, :, i, :n], order, hit, -1)
    return near


def _equal_but_energy_ties(kernel, case, got, ref, near) -> dict:
    """Exact, except blocks at an fp32 tie of an interval end (``_energy_ties``)."""
    import numpy as np

    a, b = got.astype("int64").numpy(), ref.astype("int64").numpy()
    diff = a != b
    bad = int((diff & ~near).sum())
    return _result(kernel, case, float(np.abs(a - b).max()) if a.size else 0.0, 0.0, bad == 0,
                   f"exact except at fp32 ties of an interval end; {int(diff.sum())} of {a.size} differ, {bad} of "
                   "them elsewhere")


def _t10(kernel, case, got, q, k, v, oracle_fn) -> dict:
    """docs/ALGORITHM.md T10: kernel error vs the upcast oracle <= 2x Paddle's low-precision dense error + atol."""
    from ..reference import dense_attention_ref

    wide = "float64" if q.place.is_cpu_place() else "float32"
    qw, kw, vw = (t.astype(wide) for t in (q, k, v))
    err = float((got.astype(wide) - oracle_fn(qw, kw, vw)).abs().max())
    dense_err = float((dense_attention_ref(q, k, v).astype(wide) - dense_attention_ref(qw, kw, vw)).abs().max())
    tol = 2 * dense_err + ATOL_T10[case.dtype]
    return _result(kernel, case, err, tol, err <= tol, f"2 x dense {case.dtype} error {dense_err:.3g} + atol "
                                                         f"{ATOL_T10[case.dtype]:g}")


class _Inputs:
    """One shape's inputs on Paddle's current device, and the reference results every kernel check starts from."""

    def __init__(self, case: Case, seed: int) -> None:
        import paddle

        from ..config import AttentionConfig
        from ..ops.dispatch import allocator
        from ..reference import build_level_map_ref, similarity_cap, xattn_block_scores
        from ..synthetic import structured_qkv

        self.case = case
        self.cfg = cfg = AttentionConfig(query_block=case.query_block, key_block=case.key_block,
                                         dense_tail_tokens=case.dense_tail_tokens)
        self.q, self.k, self.v = (paddle.to_tensor(x).astype(case.dtype) for x in structured_qkv(
            case.L, batch=case.B, q_heads=case.Hq, kv_heads=case.Hkv, head_dim=case.D, seed=seed))
        self.G = case.Hq // case.Hkv
        self.nq, self.nk = -(-case.L // cfg.query_block), -(-case.L // cfg.key_block)
        self.alloc = allocator(self.q)
        self.blocks = dict(query_block=cfg.query_block, key_block=cfg.key_block)
        self.ref_scores = xattn_block_scores(self.q, self.k, stride=cfg.xattn_stride, causal=True, scale=cfg.scale,
                                             **self.blocks)
        self.ref_cap = similarity_cap(self.k, cfg.key_block, cfg.sim_thresholds)
        self.ref_map = build_level_map_ref(self.ref_scores, Lq=case.L, Lk=case.L, config=cfg, causal=True,
                                           sim_cap_levels=self.ref_cap, gqa_group=self.G).level_map

    def launch(self, launcher, *tensors, **kwargs):
        """`launcher(*tensors, **kwargs)` with tensors as launch arguments, inside the device's driver scope."""
        from ..ops._launch import kernel_args, launch_scope

        with launch_scope(self.q):
            return launcher(*kernel_args(*tensors), **kwargs)


def _check_estimator(x: _Inputs) -> dict:
    from ..kernels.estimate import psa_estimate_scores
    from ..ops.dispatch import unwrap

    c = x.case
    scores = x.alloc((c.B, c.Hq, x.nq, x.nk), "float32")
    x.launch(psa_estimate_scores, x.q, x.k, scores, stride=x.cfg.xattn_stride, causal=True, scale=x.cfg.scale,
             layout="BHSD", scratch=x.alloc, **x.blocks)
    return _close("estimator", c, unwrap(scores), x.ref_scores, 1e-3, 1e-5)


def _check_similarity(x: _Inputs) -> dict:
    from ..kernels.similarity import psa_similarity_cap
    from ..ops.dispatch import unwrap

    cap = x.alloc((x.case.B, x.case.Hkv, x.nk), "int8")
    x.launch(psa_similarity_cap, x.k, cap, key_block=x.cfg.key_block, thresholds=tuple(x.cfg.sim_thresholds),
             layout="BHSD")
    return _equal("similarity cap", x.case, unwrap(cap), x.ref_cap)


def _check_selection(x: _Inputs) -> dict:
    """From the reference's own scores and cap, so the integer map must match exactly, except (energybound) at an
    fp32 tie of an interval end, where the kernel's summation order may fall on the other side."""
    from ..kernels.select import psa_select_levels
    from ..ops._launch import kernel_args
    from ..ops.dispatch import unwrap

    c, cfg = x.case, x.cfg
    level_map = x.alloc((c.B, c.Hq, x.nq, x.nk), "int8")
    cap = x.ref_cap.astype("int8")
    x.launch(psa_select_levels, x.ref_scores.contiguous(), level_map, Lq=c.L, Lk=c.L, causal=True,
             mode=cfg.mask_mode, ends=dict(cfg.mask_ratios), dense_tail_tokens=cfg.dense_tail_tokens, prompt_end=None,
             force_sink=cfg.force_sink, sim_cap=kernel_args(cap)[0], gqa_group=x.G, **x.blocks)
    if cfg.mask_mode != "energybound":
        return _equal("selection", c, unwrap(level_map), x.ref_map)
    ends = sorted({float(e) for _, e in dict(cfg.mask_ratios).values() if e < 1.0})  # E <= 1: no tie at 1
    near = _energy_ties(x.ref_scores, ends, L=c.L, **x.blocks)
    return _equal_but_energy_ties("selection", c, unwrap(level_map), x.ref_map, near)


def _check_index_list(x: _Inputs) -> dict:
    import paddle

    from ..kernels.select import psa_build_lut
    from ..ops.dispatch import unwrap
    from ..reference import level_map_to_lut

    c = x.case
    lut, counts = x.alloc((c.B, c.Hq, x.nq, x.nk), "int32"), x.alloc((c.B, c.Hq, x.nq, 4), "int32")
    x.launch(psa_build_lut, x.ref_map, lut, counts, Lq=c.L, Lk=c.L, causal=True, **x.blocks)
    ref_lut, ref_counts = level_map_to_lut(x.ref_map, Lq=c.L, Lk=c.L, causal=True, **x.blocks)
    return _equal("index list", c, paddle.concat([unwrap(lut), unwrap(counts)], axis=-1),
                  paddle.concat([ref_lut, ref_counts], axis=-1))


def _check_pooling(x: _Inputs) -> dict:
    import paddle

    from ..kernels.pool import psa_pool_kv
    from ..ops.dispatch import unwrap
    from ..reference import pool_kv

    c = x.case
    kp = {p: x.alloc((c.B, c.Hkv, -(-c.L // p), c.D), c.dtype) for p in (2, 4, 8)}
    vp = {p: x.alloc((c.B, c.Hkv, -(-c.L // p), c.D), c.dtype) for p in (2, 4, 8)}
    x.launch(psa_pool_kv, x.k, x.v, kp, vp, layout="BHSD")
    ref = pool_kv(x.k, x.v, (2, 4, 8))
    got = paddle.concat([unwrap(t[p]).astype("float32").flatten() for t in (kp, vp) for p in (2, 4, 8)])
    want = paddle.concat([ref[p][i].astype("float32").flatten() for i in (0, 1) for p in (2, 4, 8)])
    return _close("pooling", c, got, want, POOL_RTOL[c.dtype], 1e-5)


def _psa_ref(x: _Inputs, level_map):
    from ..reference import psa_attention_ref

    return lambda qw, kw, vw: psa_attention_ref(qw, kw, vw, level_map, causal=True, scale=x.cfg.scale,
                                                gqa_mask=x.cfg.gqa_mask, **x.blocks)


def _check_attention(x: _Inputs) -> dict:
    """Index list + pooling + attention over the reference level map (kernels/pipeline.py)."""
    from ..kernels.pipeline import psa_attention_from_map
    from ..ops.dispatch import unwrap

    out, _, _ = x.launch(psa_attention_from_map, x.q, x.k, x.v, x.ref_map, alloc=x.alloc, causal=True,
                         scale=x.cfg.scale, layout="BHSD", gqa_mask=x.cfg.gqa_mask, **x.blocks)
    return _t10("attention", x.case, unwrap(out), x.q, x.k, x.v, _psa_ref(x, x.ref_map))


def _check_public_op(x: _Inputs) -> dict:
    """The public op end to end (plan + run in one pipeline), against the reference over its own plan."""
    from ..ops.attention import build_level_map, psa_attention

    out, stats = psa_attention(x.q, x.k, x.v, config=x.cfg, return_stats=True)
    res = _t10("psa_attention", x.case, out, x.q, x.k, x.v, _psa_ref(x, build_level_map(x.q, x.k, x.cfg)))
    if stats.backend != "triton":
        res.update(passed=False, detail=f"ran on the {stats.backend} backend, not the Triton kernels")
    else:
        res["detail"] += f"; density {stats.density:.3f}"
    return res


CHECKS = (("estimator", _check_estimator), ("similarity cap", _check_similarity), ("selection", _check_selection),
          ("index list", _check_index_list), ("pooling", _check_pooling), ("attention", _check_attention),
          ("psa_attention", _check_public_op))


def check_case(case: Case, seed: int = 0) -> list[dict]:
    """Every kernel on one shape against the pure-Paddle reference; a kernel that raises fails its own check."""
    try:
        inputs = _Inputs(case, seed)
    except Exception as exc:
        return [_result("reference", case, None, 0.0, False, f"raised {_first_line(exc)}")]
    results = []
    for kernel, check in CHECKS:
        try:
            results.append(check(inputs))
        except Exception as exc:
            results.append(_result(kernel, case, None, 0.0, False, f"raised {_first_line(exc)}"))
    return results


def run_cases(cases) -> list[dict]:
    return [r for case in cases for r in check_case(case)]


def interpreted_checks(timeout: float = 600) -> list[dict]:
    """INTERPRETER_CASES in a child process with TRITON_INTERPRET=1 (CPU tensors through host views)."""
    env = dict(os.environ, TRITON_INTERPRET="1", PADDLEMIX_PSA_BACKEND="auto")
    proc = subprocess.run([sys.executable, "-m", "paddlemix_psa.app.selfcheck"], capture_output=True, text=True,
                          env=env, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return [_result("interpreter", case, None, 0.0, False, f"child process failed: {tail}")
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
            out[name] = f"failed: {_first_line(exc)[:200]}"
    try:
        paddle.set_flags({"FLAGS_flash_attn_version": 3})
        out["flash_attention_fa3"] = _median_ms(lambda: flash_attention(qs, ks, vs, causal=True))
    except Exception as exc:
        out["flash_attention_fa3"] = f"failed: {_first_line(exc)[:200]}"
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
        err = "n/a" if c["max_error"] is None else f"{c['max_error']:.3g}"
        lines.append(f"  {'PASS' if c['passed'] else 'FAIL'} {c['kernel']:<15} {c['shape']:<40} "
                     f"max error {err} (tolerance {c['tolerance']:.3g}; {c['detail']})")
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
    import paddle

    paddle.device.set_device("cpu")          # the interpreter works on host memory, even on a GPU build
    print(json.dumps({"checks": run_cases(INTERPRETER_CASES)}))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
