"""Pictures of what PSA did: one head's level map beside the per-layer sparsity (matplotlib, Agg backend)."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

# Category index -> (label, colour). Upper-triangle blocks (never computed in causal attention) are white,
# so the causal triangle is the coloured part of the map.
_CATEGORIES = (
    ("not computed (causal)", "#ffffff"),
    ("skip (0)", "#bdbdbd"),
    ("level 8", "#c6dbef"),
    ("level 4", "#6baed6"),
    ("level 2", "#fd8d3c"),
    ("level 1 (full)", "#a50f15"),
)
_LEVEL_TO_CAT = {0: 1, 8: 2, 4: 3, 2: 4, 1: 5}

FIGSIZE = (12.0, 5.0)   # inches
DPI = 100               # -> 1200 x 500 pixels


def causal_valid(nq: int, nk: int, *, Lq: int, Lk: int, query_block: int, key_block: int) -> np.ndarray:
    """bool [nq, nk]: block (i, j) holds at least one causally visible pair (bottom-right alignment)."""
    off = Lk - Lq
    last = np.minimum((np.arange(nq) + 1) * query_block, Lq) - 1 + off      # last absolute position per row
    return np.arange(nk)[None, :] <= (last // key_block)[:, None]


def level_categories(level_map: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """int [nq, nk] category indices of `_CATEGORIES` for a level map with values in {0, 1, 2, 4, 8}."""
    lm = np.asarray(level_map)
    cats = np.zeros(lm.shape, dtype=np.int64)
    for level, cat in _LEVEL_TO_CAT.items():
        cats[lm == level] = cat
    if valid is not None:
        cats[~valid] = 0
    return cats


def plot_levels(path: str | os.PathLike, level_map: np.ndarray | None, layer_sparsity: Mapping[str, float], *,
                title: str = "", map_title: str = "", Lq: int | None = None, Lk: int | None = None,
                query_block: int | None = None, key_block: int | None = None,
                layer_notes: Mapping[str, str] | None = None) -> str:
    """Write a PNG (1200 x 500 px): left, `level_map` [nq, nk] of one layer/head; right, sparsity per layer.

    `level_map` may be None (no PSA call was captured): the left panel then says so. With the block geometry
    (`Lq`, `Lk`, `query_block`, `key_block`) the causal triangle is computed exactly; without it, blocks above
    the diagonal that hold level 0 are drawn as "not computed".
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    fig, (ax_map, ax_bar) = plt.subplots(1, 2, figsize=FIGSIZE, dpi=DPI,
                                         gridspec_kw={"width_ratios": [1.1, 1.0]})
    try:
        if level_map is not None and np.asarray(level_map).size:
            lm = np.asarray(level_map)
            nq, nk = lm.shape
            if None not in (Lq, Lk, query_block, key_block):
                valid = causal_valid(nq, nk, Lq=Lq, Lk=Lk, query_block=query_block, key_block=key_block)
            else:
                valid = ~((lm == 0) & (np.arange(nk)[None, :] * nq > np.arange(nq)[:, None] * nk))
            cats = level_categories(lm, valid)
            cmap = ListedColormap([c for _, c in _CATEGORIES])
            norm = BoundaryNorm(np.arange(len(_CATEGORIES) + 1) - 0.5, cmap.N)
            ax_map.imshow(cats, cmap=cmap, norm=norm, interpolation="nearest", aspect="auto")
            # causal boundary: the staircase of the last valid key block of every query block
            last_valid = valid.sum(axis=1) - 0.5
            xs = np.repeat(last_valid, 2)
            ys = np.stack([np.arange(nq) - 0.5, np.arange(nq) + 0.5], axis=1).ravel()
            ax_map.plot(xs, ys, color="black", linewidth=1.2)
            ax_map.set_xlabel(f"key block ({key_block or '?'} tokens)")
            ax_map.set_ylabel(f"query block ({query_block or '?'} tokens)")
            present = {int(c) for c in np.unique(cats)}
            handles = [Patch(facecolor=col, edgecolor="black", label=lab)
                       for idx, (lab, col) in enumerate(_CATEGORIES) if idx in present or idx >= 1]
            ax_map.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.9)
            density = _density(lm, valid)
            ax_map.set_title((map_title + "\n" if map_title else "") + f"level map: density {density:.3f}, "
                             f"sparsity {1 - density:.3f}", fontsize=10)
        else:
            ax_map.axis("off")
            ax_map.text(0.5, 0.5, "no PSA level map captured\n(PSA off, or every call fell back to dense)",
                        ha="center", va="center", fontsize=11)
        names = list(layer_sparsity)
        values = [float(layer_sparsity[n]) for n in names]
        if names:
            ypos = np.arange(len(names))
            bars = ax_bar.barh(ypos, values, color="#3182bd")
            ax_bar.set_yticks(ypos, [_short(n) for n in names], fontsize=8)
            ax_bar.invert_yaxis()
            for b, v, n in zip(bars, values, names):
                note = (layer_notes or {}).get(n, "")
                ax_bar.text(min(v, 1.0) + 0.01, b.get_y() + b.get_height() / 2, f"{v:.3f}{' ' + note if note else ''}",
                            va="center", fontsize=8)
        else:
            ax_bar.text(0.5, 0.5, "no per-layer statistics", ha="center", va="center", transform=ax_bar.transAxes)
        ax_bar.set_xlim(0, 1.15)
        ax_bar.set_xlabel("sparsity (1 - FLOP-equivalent density)")
        ax_bar.set_title("sparsity per layer (LLM prefill)", fontsize=10)
        if title:
            fig.suptitle(title, fontsize=11)
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return os.fspath(path)


def _density(lm: np.ndarray, valid: np.ndarray) -> float:
    w = np.zeros(lm.shape, dtype=np.float64)
    for p in (1, 2, 4, 8):
        w[lm == p] = 1.0 / p
    n = int(valid.sum())
    return float(w[valid].sum() / n) if n else 1.0


def _short(name: str) -> str:
    return name if len(name) <= 28 else "…" + name[-27:]


def png_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) read from a PNG header; raises ValueError when the file is not a PNG."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


__all__: Sequence[str] = ["plot_levels", "level_categories", "causal_valid", "png_size", "FIGSIZE", "DPI"]
