"""`AttentionConfig`: every PSA setting in one frozen, validated record (docs/ALGORITHM.md §7.1, §10)."""
from __future__ import annotations

import dataclasses
import json
import math
import types
from collections.abc import Mapping
from typing import Any

LEVELS = (1, 2, 4, 8)            # pooling factors of the kept levels, finest first
CANONICAL_ORDER = (1, 2, 4, 8, 0)  # level order by importance; 0 = skip
QUERY_BLOCKS = (32, 64, 128)
KEY_BLOCKS = (16, 32, 64, 128)
MASK_MODES = ("energybound", "topk")
GQA_MASKS = ("per_head", "per_kv_group")
ESTIMATORS = ("xattn",)
_SNAP_TOL = 1e-6
INT32_MAX = 2**31 - 1            # token counts reach the kernels as int32 launch arguments

DEFAULT_MASK_RATIOS = {1: (0.0, 0.6), 2: (0.6, 0.8), 4: (0.8, 0.9), 8: (0.9, 0.9), 0: (0.9, 1.0)}
PAPER_MASK_RATIOS = {1: (0.0, 0.7), 2: (0.7, 0.8), 4: (0.8, 0.9), 8: (0.9, 0.9), 0: (0.9, 1.0)}


def _fail(field: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"AttentionConfig.{field}={value!r} is invalid: {allowed}")


def normalize_mask_ratios(ratios: Any) -> Mapping[int, tuple[float, float]]:
    """Validate `mask_ratios` (docs/ALGORITHM.md §7.1 V1-V4); returns a read-only mapping in canonical order,
    snapped (read-only so that a frozen config cannot be changed behind its validation)."""
    if not isinstance(ratios, Mapping):
        raise TypeError(f"mask_ratios must be a mapping level -> (start, end), got {type(ratios).__name__}")
    parsed: dict[int, tuple[float, float]] = {}
    for key, value in ratios.items():
        level = key
        if isinstance(key, str) and key.strip().lstrip("-").isdigit():   # JSON object keys are strings
            level = int(key)
        if isinstance(level, bool) or not isinstance(level, int) or level not in CANONICAL_ORDER:
            raise TypeError(f"mask_ratios key {key!r} is invalid: levels are ints in {list(CANONICAL_ORDER)}")
        try:
            start, end = value
            start, end = float(start), float(end)
        except (TypeError, ValueError):
            raise TypeError(f"mask_ratios[{level}]={value!r} is invalid: expected a pair (start, end) of reals") from None
        if isinstance(value[0], bool) or isinstance(value[1], bool) or not (math.isfinite(start) and math.isfinite(end)):
            raise TypeError(f"mask_ratios[{level}]={value!r} is invalid: start and end must be finite reals")
        parsed[level] = (start, end)
    if 1 not in parsed:
        raise ValueError("mask_ratios: level 1 is required")
    for level, (start, end) in parsed.items():
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"mask_ratios[{level}]={(start, end)}: need 0 <= start <= end <= 1")
    out: dict[int, tuple[float, float]] = {}
    prev_level, prev_end = None, 0.0
    for level in CANONICAL_ORDER:
        if level not in parsed:
            continue
        start, end = parsed[level]
        if abs(start - prev_end) > _SNAP_TOL:
            where = "the first present level must start at 0" if prev_level is None else (
                f"start must equal the end of level {prev_level} ({prev_end:g})")
            raise ValueError(f"mask_ratios[{level}]={(start, end)}: {where}")
        start = prev_end
        end = max(end, start)
        out[level] = (start, end)
        prev_level, prev_end = level, end
    if abs(prev_end - 1.0) > _SNAP_TOL:
        raise ValueError(f"mask_ratios[{prev_level}] ends at {prev_end:g}: the last present level must end at 1")
    out[prev_level] = (out[prev_level][0], 1.0)
    return types.MappingProxyType(out)


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": dict(query_block=128, key_block=128, mask_ratios=PAPER_MASK_RATIOS, xattn_stride=8),
}


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """PSA settings (docs/ALGORITHM.md §10). Frozen (`mask_ratios` too); an invalid value cannot be constructed.

    >>> cfg = AttentionConfig(key_block=64)
    >>> cfg.query_block, cfg.key_block, cfg.mask_mode
    (128, 64, 'energybound')
    >>> AttentionConfig.from_json(cfg.to_json()) == cfg
    True
    """

    query_block: int = 128
    key_block: int = 32
    mask_mode: str = "energybound"
    mask_ratios: Mapping[int, tuple[float, float]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_MASK_RATIOS))
    xattn_stride: int = 16
    dense_tail_tokens: int = 512
    force_sink: bool = True
    sim_cap: bool = True
    sim_thresholds: tuple[float, float, float] = (0.75, 0.70, 0.70)
    gqa_mask: str = "per_head"
    estimator: str = "xattn"
    causal: bool = True
    scale: float | None = None
    # Integration policy (docs/HOSTS.md §4): prefills shorter than this run dense attention, counted as "short".
    min_seq_len: int = 1024

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        for name, allowed in (("query_block", QUERY_BLOCKS), ("key_block", KEY_BLOCKS)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
                raise _fail(name, value, f"must be one of {list(allowed)}")
        for name, allowed in (("mask_mode", MASK_MODES), ("gqa_mask", GQA_MASKS), ("estimator", ESTIMATORS)):
            value = getattr(self, name)
            if value not in allowed:
                hint = " (the finer-crossing 'thresholdbound' of the video path is not implemented)" \
                    if value == "thresholdbound" else ""
                raise _fail(name, value, f"must be one of {list(allowed)}{hint}")
        set_("mask_ratios", normalize_mask_ratios(self.mask_ratios))
        s = self.xattn_stride
        if isinstance(s, bool) or not isinstance(s, int) or s < 2 or s & (s - 1) or s > min(self.query_block, self.key_block):
            raise _fail("xattn_stride", s, f"must be a power of two in [2, min(query_block, key_block)="
                        f"{min(self.query_block, self.key_block)}]")
        for name in ("dense_tail_tokens", "min_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT32_MAX:
                raise _fail(name, value, f"must be an int in [0, {INT32_MAX}] (2**31 - 1)")
        for name in ("force_sink", "sim_cap", "causal"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(name, getattr(self, name), "must be True or False")
        try:
            th = tuple(float(t) for t in self.sim_thresholds)
        except (TypeError, ValueError):
            raise _fail("sim_thresholds", self.sim_thresholds, "must be three reals (tau2, tau4, tau8)") from None
        if len(th) != 3 or not all(-1.0 <= t <= 1.0 for t in th):
            raise _fail("sim_thresholds", self.sim_thresholds, "must be three cosines in [-1, 1] (tau2, tau4, tau8)")
        set_("sim_thresholds", th)
        if self.scale is not None:
            if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not (
                    math.isfinite(self.scale) and self.scale > 0):
                raise _fail("scale", self.scale, "must be None (1/sqrt(head_dim)) or a finite real > 0")
            set_("scale", float(self.scale))

    # The mapping field makes the dataclass unhashable by default; hash the canonical tuple form instead.
    def __hash__(self) -> int:
        return hash(self.fingerprint())

    # A read-only mapping cannot be pickled or deep-copied; the config is immutable, so rebuild it from its dict.
    def __reduce__(self):
        return (type(self).from_dict, (self.to_dict(),))

    def __copy__(self) -> "AttentionConfig":
        return self

    def __deepcopy__(self, memo: dict) -> "AttentionConfig":
        return self

    @property
    def levels_kept(self) -> tuple[int, ...]:
        """Kept levels with a non-empty interval, finest first."""
        return tuple(lv for lv in LEVELS if lv in self.mask_ratios
                     and self.mask_ratios[lv][1] > self.mask_ratios[lv][0])

    def fingerprint(self) -> str:
        """Short stable identifier of the settings, reported with every statistic (docs/ALGORITHM.md §9)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    # ---------------------------------------------------------------- presets and (de)serialisation
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "AttentionConfig":
        """`"default"`: the seed README's settings. `"paper"`: the original Qwen2.5-VL Video-MME setup."""
        if name not in PRESETS:
            raise ValueError(f"unknown AttentionConfig preset {name!r}: valid presets are {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["mask_ratios"] = {str(k): list(v) for k, v in self.mask_ratios.items()}
        d["sim_thresholds"] = list(self.sim_thresholds)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AttentionConfig":
        if not isinstance(data, Mapping):
            raise TypeError(f"AttentionConfig.from_dict needs a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"AttentionConfig: unknown field(s) {unknown}; valid fields are {sorted(names)}")
        kwargs = dict(data)
        if "sim_thresholds" in kwargs and isinstance(kwargs["sim_thresholds"], list):
            kwargs["sim_thresholds"] = tuple(kwargs["sim_thresholds"])
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AttentionConfig":
        return cls.from_dict(json.loads(text))

    @classmethod
    def coerce(cls, value: Any) -> "AttentionConfig":
        """Accept an AttentionConfig, a dict, a JSON string, a preset name, or None (the default)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                return cls.from_json(text)
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = text                                  # not JSON: a preset name
            if not isinstance(parsed, str):
                kind = {list: "array", bool: "boolean", type(None): "null"}.get(type(parsed), "number")
                raise ValueError(f"psa_config {text!r} is invalid: must be a JSON object or a preset name "
                                 f"{sorted(PRESETS)}, got a JSON {kind}")
            return cls.preset(parsed)
        raise TypeError(f"psa_config must be an AttentionConfig, a dict, a JSON string or a preset name, "
                        f"got {type(value).__name__}")
