"""Every environment variable the plugin reads, in one place."""
from __future__ import annotations

import os

AUTOLOAD = "PADDLEMIX_PSA_AUTOLOAD"   # "0" disables the post-import registration hook
BACKEND = "PADDLEMIX_PSA_BACKEND"     # "auto" (default) | "triton" | "reference"
STRICT = "PADDLEMIX_PSA_STRICT"       # "1": unexpected dense fallbacks raise
STATS = "PADDLEMIX_PSA_STATS"         # "1": collect per-call statistics from the start
LOGLEVEL = "PADDLEMIX_PSA_LOGLEVEL"   # logging level name for the "paddlemix_psa" logger
CACHE = "PADDLEMIX_PSA_CACHE"         # root of the download cache (default ~/.cache/paddlemix_psa)
MAX_DOWNLOAD_MB = "PADDLEMIX_PSA_MAX_DOWNLOAD_MB"  # size cap of one download in MiB (default 64 image, 4096 video)

BACKENDS = ("auto", "triton", "reference")


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def autoload_enabled() -> bool:
    return _flag(AUTOLOAD, True)


def strict() -> bool:
    return _flag(STRICT, False)


def stats_enabled() -> bool:
    return _flag(STATS, False)


def backend() -> str:
    value = os.environ.get(BACKEND, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{BACKEND}={value!r} is invalid: valid values are {list(BACKENDS)}")
    return value


def max_download_mb() -> float | None:
    """The download size cap in MiB from the environment, or None when unset."""
    value = os.environ.get(MAX_DOWNLOAD_MB, "").strip()
    if not value:
        return None
    try:
        mb = float(value)
    except ValueError:
        mb = float("nan")
    if not (mb > 0 and mb != float("inf")):
        raise ValueError(f"{MAX_DOWNLOAD_MB}={value!r} is invalid: use a positive number of MiB")
    return mb
