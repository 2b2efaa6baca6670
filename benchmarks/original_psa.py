"""The original PSA (ziplab/Pyramid-Sparse-Attention, its Qwen2.5-VL causal path) as a benchmark row.

The original is imported at run time from a checkout the user provides (``--original PATH``); nothing of it is
in this repository. Only its package ``qwen2.5-vl-example/src/attention/PSA_casual`` is loaded, not the
``attention`` package above it, which imports transformers. That package needs torch and Triton, and for its
estimator's Triton path a GPU whose name contains "100", "200" or "6000" (an H200 qualifies; elsewhere it
prints a line and estimates with plain torch, much slower).

    orig = OriginalPSA(path)             # raises OriginalPSAError (one line) for a wrong path or missing deps
    fn = orig.make_fn(q, k, v)           # q [1, 28, L, 128], k/v [1, 4, L, 128], bf16, CUDA, causal
    out, sparsity, density = fn()        # time fn with do_bench

What one call of ``fn`` costs is the original's own per-call entry point, ``adaptive_block_sparse_attn``. That
is estimate, level map, similarity cap, pooling and attention, plus its density statistic (one host sync), as
its Qwen2.5-VL forward pays on every layer. Not timed: repeating K/V to the query heads, done once in
``make_fn``. The original has no GQA (its estimator asserts equal head counts and its kernel indexes K/V by the
query head), so its Qwen forward repeats K/V per call before the sparse module. Our dense "kv repeated" row
also repeats outside the timed region.

Sparsity: the original's own statistic, 1 - density, where density is the mean over the causally valid
(query block, key block) pairs (lower triangle with the diagonal, all heads pooled) of 1/p for a pair kept at
pooling level p, and 0 for a skipped pair. That is our FLOP-equivalent density (docs/ALGORITHM.md §9) whenever
query_block == key_block and Lq == Lk, which this adapter requires.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

PACKAGE_DIR = Path("qwen2.5-vl-example", "src", "attention", "PSA_casual")
#: name the original's package is registered under in sys.modules (private, so it cannot shadow anything)
MODULE_NAME = "_original_psa_casual"
#: the original's Python dependencies, besides the standard library
DEPENDENCIES = ("torch", "triton")
#: the original's Qwen2.5-VL kernel is built for 128-token blocks (its factory's POOLING_BLOCK_N and BLOCK_M)
BLOCK = 128


class OriginalPSAError(RuntimeError):
    """The original PSA cannot be loaded, or cannot express the requested configuration; one-line message."""


def load_original(path):
    """Import the original's ``PSA_casual`` package from the checkout at ``path``; returns the module."""
    root = Path(os.path.expanduser(str(path))).resolve()
    init = root / PACKAGE_DIR / "__init__.py"
    if not init.is_file():
        raise OriginalPSAError(f"--original {path}: {PACKAGE_DIR / '__init__.py'} is not there; pass the root of "
                               f"a ziplab/Pyramid-Sparse-Attention checkout")
    missing = [name for name in DEPENDENCIES if importlib.util.find_spec(name) is None]
    if missing:
        raise OriginalPSAError(f"--original {path}: the original PSA needs {', '.join(missing)} "
                               f"(pip install {' '.join(missing)})")
    loaded = sys.modules.get(MODULE_NAME)
    if loaded is not None:
        if Path(loaded.__file__).resolve() != init:
            raise OriginalPSAError(f"--original {path}: another original PSA is already loaded from "
                                   f"{Path(loaded.__file__).parent}; use one checkout per process")
        return loaded
    spec = importlib.util.spec_from_file_location(MODULE_NAME, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module    # its relative imports resolve through this entry
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        for name in [n for n in sys.modules if n == MODULE_NAME or n.startswith(MODULE_NAME + ".")]:
            del sys.modules[name]
        raise OriginalPSAError(f"--original {path}: importing {PACKAGE_DIR} failed: {exc}") from exc
    return module


def original_config(module, ours=None):
    """The original's ``AttentionConfig`` equal to our ``ours`` (default: ``AttentionConfig.preset("paper")``).

    Raises OriginalPSAError for a setting the original cannot express."""
    if ours is None:
        from paddlemix_psa.config import AttentionConfig
        ours = AttentionConfig.preset("paper")
    fixed = dict(query_block=BLOCK, key_block=BLOCK, causal=True, force_sink=True, sim_cap=True,
                 gqa_mask="per_head", scale=None)
    for name, needed in fixed.items():
        if getattr(ours, name) != needed:
            raise OriginalPSAError(f"original PSA: AttentionConfig.{name}={getattr(ours, name)!r} cannot be "
                                   f"expressed; the original runs only with {name}={needed!r}")
    t2, t4, t8 = ours.sim_thresholds
    return module.AttentionConfig(
        text_length=ours.dense_tail_tokens, query_block=BLOCK, warmup_steps=0,
        mask_ratios={level: tuple(bounds) for level, bounds in ours.mask_ratios.items()},
        mask_mode=ours.mask_mode, importance_method="xattn", xattn_stride=ours.xattn_stride, causal_main=True,
        sim_2x_threshold=t2, sim_4x_threshold=t4, sim_8x_threshold=t8)


def revision(path):
    """The checkout's commit: ``git rev-parse HEAD`` where ``path`` is a git checkout's root, else a REVISION
    file there (a partial copy of the sources), else "unknown"."""
    import subprocess
    root = Path(os.path.expanduser(str(path)))
    if (root / ".git").exists():
        try:
            head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=10)
            if head.returncode == 0 and head.stdout.strip():
                return head.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    marker = root / "REVISION"
    return marker.read_text().strip() if marker.is_file() else "unknown"


def check_inputs(q, k, v):
    """One-line ValueError naming the argument for inputs the original cannot run as our benchmark does."""
    import torch
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"original PSA: {name} must be 4-D [B, H, L, D], got shape {tuple(t.shape)}")
        if not t.is_cuda:
            raise ValueError(f"original PSA: {name} must be a CUDA tensor, got device {t.device}")
        if t.dtype != q.dtype or t.dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"original PSA: {name}.dtype={t.dtype}; q, k and v must all be bfloat16 or all "
                             f"float16")
    if k.shape != v.shape:
        raise ValueError(f"original PSA: k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    (b, hq, lq, d), (bk, hkv, lk, dk) = q.shape, k.shape
    if (b, lq, d) != (bk, lk, dk):
        raise ValueError(f"original PSA: q {tuple(q.shape)} and k {tuple(k.shape)} must share B, L and D "
                         f"(causal self-attention prefill)")
    if d not in (64, 128):
        raise ValueError(f"original PSA: head dim {d} is not supported; allowed: 64, 128")
    if lq % BLOCK:
        # its similarity kernel reads K up to the next multiple of the block, past the end of the tensor
        raise ValueError(f"original PSA: sequence length {lq} must be a multiple of {BLOCK}")
    if hq % hkv:
        raise ValueError(f"original PSA: q heads {hq} must be a multiple of k/v heads {hkv}")


class OriginalPSA:
    """The original PSA at the paper configuration (``AttentionConfig.preset("paper")``, or ``config``)."""

    def __init__(self, path, config=None):
        self.path = str(path)
        self.module = load_original(path)
        self.config = original_config(self.module, config)
        factory = importlib.import_module(MODULE_NAME + ".kernels.psa_kernel_causal").sparse_attention_factory
        self._attention = factory(BLOCK_M=BLOCK, POOLING_BLOCK_N=BLOCK, causal=True)
        self.revision = revision(path)

    def make_fn(self, q, k, v):
        """A zero-argument callable returning (out [B, Hq, L, D], sparsity, density); see the module docstring
        for what one call includes."""
        check_inputs(q, k, v)
        group = q.shape[1] // k.shape[1]
        k_rep = k.repeat_interleave(group, dim=1).contiguous() if group > 1 else k.contiguous()
        v_rep = v.repeat_interleave(group, dim=1).contiguous() if group > 1 else v.contiguous()
        q_c = q.contiguous()
        run_original = self.module.adaptive_block_sparse_attn

        def fn():
            out, sparsity, _per_head_density = run_original(q_c, k_rep, v_rep, self.config, self._attention)
            return out, float(sparsity), 1.0 - float(sparsity)
        return fn

    def run(self, q, k, v):
        """One call: (out, sparsity, density)."""
        return self.make_fn(q, k, v)()
