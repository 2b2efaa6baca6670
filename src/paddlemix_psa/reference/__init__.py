"""Pure-Paddle PSA: the CPU execution path and the oracle the Triton kernels are tested against.

Readable over fast, but memory-bounded: attention and the estimator are chunked over query blocks, so no
fp32 [Lq, Lk] matrix for the whole sequence is ever built.
"""
from .dense import dense_attention_ref
from .estimate import xattn_block_scores
from .lut import level_map_to_lut
from .masks import LevelMapResult, build_level_map_ref, level_histogram
from .psa import psa_attention_ref
from .pyramid import pool_kv, similarity_cap

__all__ = [
    "LevelMapResult", "build_level_map_ref", "dense_attention_ref", "level_histogram", "level_map_to_lut",
    "pool_kv", "psa_attention_ref", "similarity_cap", "xattn_block_scores",
]
