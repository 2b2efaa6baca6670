"""Paddle adapter: argument checks, backend dispatch, the Triton driver scope, the public ops."""
from .attention import build_level_map, psa_attention, psa_attention_with_map

__all__ = ["build_level_map", "psa_attention", "psa_attention_with_map"]
