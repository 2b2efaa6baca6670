"""Statistics (docs/ALGORITHM.md §9): per-call `PSAStats`, per-layer aggregation and process-wide fallback counters.

Collection of per-call statistics is off by default (it costs a device reduction and, for timings, device
synchronisation); fallback counters are always on, because a fallback is never silent (docs/HOSTS.md §4).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections import Counter
from typing import Any, Iterable

from . import _env

logger = logging.getLogger("paddlemix_psa")

HIST_KEYS = ("1", "2", "4", "8", "0")       # level histogram keys: kept levels finest first, then skip
FORCED_KEYS = ("tail", "diagonal", "sink", "cap", "degenerate", "guard")
TIME_KEYS = ("estimate_ms", "mask_ms", "pool_ms", "attention_ms")


@dataclasses.dataclass
class PSAStats:
    """What one PSA call (or an aggregate of calls) did.

    `density` is the FLOP-equivalent density over causally valid (query block, key block) pairs
    (sum of 1/p over kept pairs / number of valid pairs); `sparsity = 1 - density`.
    """

    calls: int = 1
    Lq: int = 0
    Lk: int = 0
    nq: int = 0
    nk: int = 0
    query_block: int = 0
    key_block: int = 0
    backend: str = ""                        # "triton" | "reference"
    config_fingerprint: str = ""
    valid_pairs: int = 0                     # summed over batch and mask heads
    weighted_kept: float = 0.0               # sum of 1/p over kept valid pairs
    histogram: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(HIST_KEYS, 0))
    per_head_density: list[float] = dataclasses.field(default_factory=list)
    forced: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(FORCED_KEYS, 0))
    times: dict[str, float] = dataclasses.field(default_factory=dict)
    fallbacks: dict[str, int] = dataclasses.field(default_factory=dict)
    backends: dict[str, int] = dataclasses.field(default_factory=dict)   # PSA calls per backend (aggregates)
    call_densities: list[float] = dataclasses.field(default_factory=list)

    @property
    def density(self) -> float:
        return self.weighted_kept / self.valid_pairs if self.valid_pairs else 1.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    @property
    def estimator_share(self) -> float | None:
        total = sum(self.times.get(k, 0.0) for k in TIME_KEYS)
        if not total:
            return None
        return (self.times.get("estimate_ms", 0.0) + self.times.get("mask_ms", 0.0)) / total

    @property
    def mean_call_density(self) -> float:
        """Unweighted mean over calls (reported beside the valid-pair-weighted `density`)."""
        return sum(self.call_densities) / len(self.call_densities) if self.call_densities else self.density

    @classmethod
    def merge(cls, items: Iterable["PSAStats"]) -> "PSAStats":
        """Valid-pair-weighted aggregate; per-head densities are averaged over calls of equal head count."""
        items = list(items)
        out = cls(calls=0)
        heads: list[list[float]] = []
        for s in items:
            out.calls += s.calls
            out.valid_pairs += s.valid_pairs
            out.weighted_kept += s.weighted_kept
            for key in HIST_KEYS:
                out.histogram[key] += s.histogram.get(key, 0)
            for key, n in s.forced.items():
                out.forced[key] = out.forced.get(key, 0) + n
            for key, t in s.times.items():
                out.times[key] = out.times.get(key, 0.0) + t
            for field in ("fallbacks", "backends"):
                for key, n in getattr(s, field).items():
                    getattr(out, field)[key] = getattr(out, field).get(key, 0) + n
            out.call_densities.extend(s.call_densities or ([s.density] if s.valid_pairs else []))
            if s.per_head_density:
                heads.append(s.per_head_density)
        if items:
            last = items[-1]
            for key in ("Lq", "Lk", "nq", "nk", "query_block", "key_block", "backend", "config_fingerprint"):
                setattr(out, key, getattr(last, key))
        if heads and all(len(h) == len(heads[0]) for h in heads):
            out.per_head_density = [sum(col) / len(col) for col in zip(*heads)]
        return out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(density=self.density, sparsity=self.sparsity, estimator_share=self.estimator_share,
                 mean_call_density=self.mean_call_density)
        d.pop("call_densities")
        return d

    def __str__(self) -> str:
        total = sum(self.histogram.values()) or 1
        hist = "  ".join(f"L{k}:{self.histogram[k]} ({100 * self.histogram[k] / total:.1f}%)" for k in HIST_KEYS[:4])
        hist += f"  skip:{self.histogram['0']} ({100 * self.histogram['0'] / total:.1f}%)"
        lines = [f"PSA stats: {self.calls} call(s), backend={self.backend or '-'}, "
                 f"blocks {self.query_block}x{self.key_block}, last Lq={self.Lq} Lk={self.Lk}",
                 f"  density {self.density:.4f}  sparsity {self.sparsity:.4f} (FLOP-equivalent, valid pairs)",
                 f"  levels  {hist}"]
        if any(self.forced.values()):
            lines.append("  forced  " + "  ".join(f"{k}:{v}" for k, v in self.forced.items() if v))
        if self.times:
            share = self.estimator_share
            lines.append("  time    " + "  ".join(f"{k[:-3]} {v:.2f} ms" for k, v in self.times.items())
                         + (f"  estimator share {100 * share:.1f}%" if share is not None else ""))
        if self.backends:
            lines.append("  backends " + "  ".join(f"{k}:{v}" for k, v in sorted(self.backends.items())))
        if self.fallbacks:
            lines.append("  fallbacks " + "  ".join(f"{k}:{v}" for k, v in sorted(self.fallbacks.items())))
        return "\n".join(lines)


class StatsRegistry:
    """Process-wide fallback counters and (when enabled) the aggregate of every PSA call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.enabled = _env.stats_enabled()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.fallbacks: Counter[str] = Counter()
            self._logged: set[str] = set()
            self.calls: list[PSAStats] = []
            self.backends: Counter[str] = Counter()

    def record_backend(self, backend: str, why: str) -> None:
        """Count which implementation ran a PSA call; log the first use of each once, with the reason."""
        with self._lock:
            self.backends[backend] += 1
            first = ("backend:" + backend) not in self._logged
            self._logged.add("backend:" + backend)
        if first:
            logger.info("paddlemix_psa: PSA runs on the %s backend (%s)", backend, why)

    def record_call(self, stats: PSAStats) -> None:
        if self.enabled:
            with self._lock:
                self.calls.append(stats)

    def record_fallback(self, reason: str, *, expected: bool, detail: str = "") -> None:
        """Count a dense fallback; log once per reason; raise in strict mode when unexpected."""
        with self._lock:
            self.fallbacks[reason] += 1
            first = reason not in self._logged
            self._logged.add(reason)
        if not expected and _env.strict():
            raise RuntimeError(f"paddlemix_psa: unexpected dense fallback '{reason}'{': ' + detail if detail else ''}"
                               f" (PADDLEMIX_PSA_STRICT=1 turns these into errors)")
        if first:
            level = logging.INFO if expected else logging.WARNING
            logger.log(level, "paddlemix_psa: dense fallback '%s'%s (logged once; counted in paddlemix_psa.stats())",
                       reason, f": {detail}" if detail else "")

    def summary(self) -> PSAStats:
        with self._lock:
            agg = PSAStats.merge(self.calls)
            agg.fallbacks = dict(self.fallbacks)
            agg.backends = dict(self.backends)
        return agg


REGISTRY = StatsRegistry()


def enable_stats(flag: bool = True) -> None:
    """Turn per-call statistics on or off for the whole process (fallback counters are always on)."""
    REGISTRY.enabled = bool(flag)


def stats() -> PSAStats:
    """Aggregate of all recorded calls in this process, with the fallback counters."""
    return REGISTRY.summary()


def print_stats() -> None:
    print(stats())
