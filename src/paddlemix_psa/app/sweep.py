"""Sparsity / fidelity sweep: PSA configs over mask_mode, tau1 / topk ratio, key_block and stride, each measured
against dense attention on the same q/k/v (synthetic, or a `infer --capture-qkv` file).

Per config: the FLOP-equivalent density, the output's cosine similarity and relative L2 error against dense
attention and, on a GPU, the time of plan (`build_level_map`) and run (`psa_attention_with_map`). The plot puts
density against error, marks the Pareto front (no other config is at once sparser and more accurate) and
labels the default and paper configs: the picture to pick a configuration from.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import time
from typing import Any, Sequence

import numpy as np

from ..config import AttentionConfig

DEFAULT_TAU1 = (0.5, 0.7, 0.9)          # energybound: cumulative energy kept at full resolution
DEFAULT_TOPK = (0.1, 0.2, 0.4)          # topk: share of key blocks kept at full resolution
DEFAULT_KEY_BLOCKS = (32, 64)
DEFAULT_STRIDES = (8, 16)
MASK_MODES = ("energybound", "topk")
NAMED = (("default", AttentionConfig()), ("paper", AttentionConfig.preset("paper")))


@dataclasses.dataclass
class SweepCase:
    """The attention inputs of one sweep: q [B, H_q, L, D], k/v [B, H_kv, L, D] (numpy, BHSD), causal."""

    name: str
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def synthetic_case(length: int = 2048, heads: int = 4, kv_heads: int = 2, head_dim: int = 64,
                   seed: int = 0) -> SweepCase:
    from ..synthetic import structured_qkv

    q, k, v = structured_qkv(length, q_heads=heads, kv_heads=kv_heads, head_dim=head_dim, seed=seed)
    return SweepCase(f"synthetic L={length} heads {heads}/{kv_heads} D={head_dim}", q, k, v,
                     {"source": "synthetic", "length": length, "heads": heads, "kv_heads": kv_heads,
                      "head_dim": head_dim, "seed": seed})


def capture_case(path: str | os.PathLike, layer: int | None = None, length: int | None = None) -> SweepCase:
    """One layer of a capture file (default: the first captured layer), optionally its first `length` tokens
    (a causal prefix is itself a valid prefill)."""
    from .capture import load_capture

    cap = load_capture(path)
    layer = cap.meta["layers"][0] if layer is None else layer
    if layer not in cap.layers:
        raise ValueError(f"--layer {layer} is invalid: {path} holds layers {sorted(cap.layers)}")
    t = cap.layers[layer]
    L = t["q"].shape[2] if length is None else min(length, t["q"].shape[2])
    q, k, v = (t[n][:, :, :L] for n in ("q", "k", "v"))
    counts = np.bincount(cap.arrays["token_type"][:L], minlength=3)
    return SweepCase(f"{os.path.basename(str(path))} layer {layer}, L={L}", q, k, v,
                     {"source": str(path), "layer": layer, "length": L, "model": cap.meta.get("model"),
                      "token_counts": {"text": int(counts[0]), "image": int(counts[1]), "video": int(counts[2])},
                      "source_dtype": cap.meta.get("source_dtype")})


# ------------------------------------------------------------------------------------------ configs
def energy_ratios(tau1: float) -> dict[int, tuple[float, float]]:
    """The default's shape scaled to tau1: half the remaining energy at level 2, a quarter at 4, the rest skipped
    (tau1 = 0.6 gives the default ratios)."""
    rest = 1.0 - tau1
    a, b = round(tau1 + rest / 2, 6), round(tau1 + 3 * rest / 4, 6)
    return {1: (0.0, tau1), 2: (tau1, a), 4: (a, b), 8: (b, b), 0: (b, 1.0)}


def topk_ratios(share: float) -> dict[int, tuple[float, float]]:
    """`share` of the blocks at level 1, as many again at level 2 and at level 4, the rest skipped."""
    a, b = min(1.0, round(2 * share, 6)), min(1.0, round(3 * share, 6))
    return {1: (0.0, share), 2: (share, a), 4: (a, b), 0: (b, 1.0)}


def sweep_configs(base: AttentionConfig | None = None, *, mask_modes: Sequence[str] = MASK_MODES,
                  tau1: Sequence[float] = DEFAULT_TAU1, topk: Sequence[float] = DEFAULT_TOPK,
                  key_blocks: Sequence[int] = DEFAULT_KEY_BLOCKS, strides: Sequence[int] = DEFAULT_STRIDES,
                  ) -> tuple[list[tuple[str, AttentionConfig]], list[str]]:
    """(label, config) for the grid plus the default and paper configs (a grid point equal to one of them takes
    its name), and the combinations that are not valid configs, each with the reason."""
    base = base or AttentionConfig()
    bad = [m for m in mask_modes if m not in MASK_MODES]
    if bad:
        raise ValueError(f"--mask-modes {bad} is invalid: valid modes are {list(MASK_MODES)}")
    out: dict[str, tuple[str, AttentionConfig]] = {}
    for name, cfg in NAMED:
        out[cfg.fingerprint()] = (name, cfg)
    skipped: list[str] = []
    ratios = {"energybound": [(f"tau1={t:g}", energy_ratios(t)) for t in tau1],
              "topk": [(f"topk={r:g}", topk_ratios(r)) for r in topk]}
    for mode in mask_modes:
        for (rlabel, r), kb, s in itertools.product(ratios[mode], key_blocks, strides):
            label = f"{mode} {rlabel} kb={kb} s={s}"
            try:
                cfg = dataclasses.replace(base, mask_mode=mode, mask_ratios=r, key_block=kb, xattn_stride=s)
            except (ValueError, TypeError) as e:
                skipped.append(f"{label}: {str(e).splitlines()[0]}")
                continue
            out.setdefault(cfg.fingerprint(), (label, cfg))
    return list(out.values()), skipped


# ------------------------------------------------------------------------------------------ measuring
def _sync(on_gpu: bool) -> None:
    if on_gpu:
        import paddle

        paddle.device.synchronize()


def run_sweep(case: SweepCase, configs: Sequence[tuple[str, AttentionConfig]], *, dtype: str | None = None,
              repeats: int = 3, progress: bool = True) -> list[dict[str, Any]]:
    """Measure every config on `case`; returns one point (a JSON-able dict) per config, Pareto flag set."""
    import paddle
    from tqdm.auto import tqdm

    from ..ops.attention import build_level_map, psa_attention_with_map
    from ..reference import dense_attention_ref

    on_gpu = paddle.get_device().startswith("gpu")
    dtype = dtype or ("bfloat16" if on_gpu else "float32")
    q, k, v = (paddle.to_tensor(x).astype(dtype) for x in (case.q, case.k, case.v))
    ref = dense_attention_ref(q, k, v).astype("float64").numpy().ravel()
    ref_norm = float(np.linalg.norm(ref))
    points = []
    for label, cfg in tqdm(configs, desc="sweep", unit="config", disable=not progress):
        level_map = build_level_map(q, k, cfg)
        out, st = psa_attention_with_map(q, k, v, level_map, config=cfg, return_stats=True)
        a = out.astype("float64").numpy().ravel()
        point = {"label": label, "mask_mode": cfg.mask_mode, "tau1_or_share": cfg.mask_ratios[1][1],
                 "key_block": cfg.key_block, "query_block": cfg.query_block, "stride": cfg.xattn_stride,
                 "density": st.density, "sparsity": st.sparsity, "histogram": dict(st.histogram),
                 "cosine": float(a @ ref / (np.linalg.norm(a) * ref_norm)),
                 "rel_l2": float(np.linalg.norm(a - ref) / ref_norm), "backend": st.backend,
                 "config": cfg.to_dict()}
        if on_gpu:
            point.update(_time(lambda: build_level_map(q, k, cfg),
                               lambda m: psa_attention_with_map(q, k, v, m, config=cfg), repeats))
        points.append(point)
    for p, front in zip(points, pareto_front([(p["density"], p["rel_l2"]) for p in points])):
        p["pareto"] = front
    return points


def _time(plan, run, repeats: int) -> dict[str, float]:
    """Median milliseconds of plan, run and both, after one warm-up (device synchronised around each)."""
    plans, runs = [], []
    run(plan())                                    # warm-up: compilation and autotuning stay out of the times
    for _ in range(max(1, repeats)):
        _sync(True)
        t0 = time.perf_counter()
        m = plan()
        _sync(True)
        t1 = time.perf_counter()
        run(m)
        _sync(True)
        plans.append((t1 - t0) * 1e3)
        runs.append((time.perf_counter() - t1) * 1e3)
    p, r = float(np.median(plans)), float(np.median(runs))
    return {"plan_ms": p, "run_ms": r, "time_ms": p + r}


def pareto_front(xy: Sequence[tuple[float, float]]) -> list[bool]:
    """True where no other point has lower-or-equal density and error with one of them strictly lower."""
    return [not any(x2 <= x and y2 <= y and (x2 < x or y2 < y) for x2, y2 in xy) for x, y in xy]


# ------------------------------------------------------------------------------------------ output
def format_points(points: Sequence[dict[str, Any]]) -> str:
    timed = any("time_ms" in p for p in points)
    head = (f"{'config':<36}{'density':>9}{'cosine':>10}{'rel-L2':>9}" + (f"{'ms':>9}" if timed else "")
            + "  pareto")
    lines = [head, "-" * len(head)]
    for p in sorted(points, key=lambda p: p["density"]):
        t = f"{p['time_ms']:9.2f}" if timed else ""
        lines.append(f"{p['label']:<36}{p['density']:9.3f}{p['cosine']:10.5f}{p['rel_l2']:9.4f}{t}  "
                     f"{'*' if p['pareto'] else ''}")
    return "\n".join(lines)


def plot_sweep(path: str | os.PathLike, points: Sequence[dict[str, Any]], *, title: str = "") -> str:
    """Density (x) against relative L2 error (y), per mask mode; the Pareto front joined; default and paper
    configs labelled. Writes a 1000 x 650 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10.0, 6.5), dpi=100)
    markers = {"energybound": ("o", "#3182bd"), "topk": ("^", "#e6550d")}
    for mode, (mk, colour) in markers.items():
        sel = [p for p in points if p["mask_mode"] == mode]
        if sel:
            ax.scatter([p["density"] for p in sel], [p["rel_l2"] for p in sel], marker=mk, s=36, c=colour,
                       alpha=0.75, label=mode)
    front = sorted((p for p in points if p["pareto"]), key=lambda p: p["density"])
    ax.plot([p["density"] for p in front], [p["rel_l2"] for p in front], "-", color="#31a354", lw=1.5,
            zorder=1, label="Pareto front")
    ax.scatter([p["density"] for p in front], [p["rel_l2"] for p in front], s=110, facecolors="none",
               edgecolors="#31a354", linewidths=1.5, zorder=3)
    for p in points:
        if p["label"] in dict(NAMED):
            ax.annotate(f"{p['label']} ({p['density']:.2f}, {p['rel_l2']:.3g})", (p["density"], p["rel_l2"]),
                        xytext=(12, 12), textcoords="offset points", fontsize=10, weight="bold",
                        arrowprops={"arrowstyle": "->", "lw": 1.0})
    errs = [p["rel_l2"] for p in points if p["rel_l2"] > 0]
    if errs and max(errs) / min(errs) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("FLOP-equivalent density (1 - sparsity)")
    ax.set_ylabel("relative L2 error vs dense attention")
    ax.set_title(title or "PSA configs: density vs error")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


__all__ = ["SweepCase", "synthetic_case", "capture_case", "energy_ratios", "topk_ratios", "sweep_configs",
           "run_sweep", "pareto_front", "format_points", "plot_sweep"]
