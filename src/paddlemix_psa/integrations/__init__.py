"""Host glue: `attn_implementation="psa"` for Qwen2.5-VL in PaddleFormers and PaddleMIX.

Three ways in (docs/HOSTS.md §3), all idempotent and cheap (no Triton compile, no GPU query):

* `register(hosts="auto")`: import the installed hosts and register `psa` with them now.
* `import paddlemix_psa`: registers with hosts that are already imported and arms the post-import hook
  (`_autoload`) for the others, so nothing is imported before the host itself is (`arm()`).
* the `paddlemix_psa_autoload.pth` file installed with the wheel: the same hook at interpreter start, with no
  caller code at all; `PADDLEMIX_PSA_AUTOLOAD=0` switches it off completely (nothing of the plugin is loaded,
  so selecting `psa` gives the host's own unknown-implementation error until `import paddlemix_psa`).

Plus the entry-point group loader (`load_attention_plugins`) a host would call (docs/upstream.md), per-layer
statistics (`collect_stats`, `reset_stats`) and the per-tower switch `set_attn_implementation`.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from typing import Any, Iterable

from .. import _env
from ..statistics import PSAStats
from . import _autoload
from .qwen2_5_vl import STATS_ATTR

logger = logging.getLogger("paddlemix_psa")

HOSTS = ("paddleformers", "paddlemix")
ENTRY_POINT_GROUPS = ("paddleformers.attention", "paddlemix.attention")


class PSANotRegisteredError(RuntimeError):
    """`psa` was selected but paddlemix_psa is not registered with the host."""


def not_registered_error(host: str, why: str = "") -> PSANotRegisteredError:
    """The error of selecting `psa` without a registration; `why` is the cause of a failed registration."""
    if why:
        reason, hint = why, "`paddlemix_psa.register()` retries and raises the full error"
    else:
        reason = (f"{_env.AUTOLOAD}=0 switched off its automatic registration" if not _env.autoload_enabled()
                  else "it was not registered")
        hint = "run `import paddlemix_psa` or `paddlemix_psa.register()` before building the model"
    return PSANotRegisteredError(
        f"attn_implementation='psa' was selected but paddlemix_psa is not registered with {host}: {reason}; "
        f"{hint}")


# ----------------------------------------------------------------------------------------------- registration
def _installed(module_name: str) -> bool:
    if module_name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        return False


def _register_host(host: str, module: Any = None) -> bool:
    if host == "paddleformers":
        from .paddleformers import register_paddleformers

        return register_paddleformers(module)
    if host == "paddlemix":
        from .paddlemix import register_paddlemix

        return register_paddlemix(module=module)
    raise ValueError(f"unknown host {host!r}: valid hosts are {list(HOSTS)}")


def register(hosts: str | Iterable[str] = "auto") -> dict[str, bool]:
    """Register `psa` with the hosts, importing them. Returns {host: registered}.

    `hosts="auto"`: every installed host (one that is not installed, or fails to import, is skipped with a
    warning); a host name or a list of names: those hosts, and a missing one raises `ImportError`. Idempotent.
    """
    auto = hosts == "auto"
    names = list(HOSTS) if auto else ([hosts] if isinstance(hosts, str) else list(hosts))
    done: dict[str, bool] = {}
    for host in names:
        if host not in HOSTS:
            raise ValueError(f"unknown host {host!r}: valid hosts are {list(HOSTS)} or 'auto'")
        probe = "paddleformers" if host == "paddleformers" else "paddlemix.models.qwen2_5_vl"
        if auto and not _installed(probe.split(".")[0]):
            done[host] = False
            continue
        if auto and host == "paddlemix" and not _installed(probe):
            done[host] = False
            continue
        try:
            done[host] = _register_host(host)
        except ImportError as exc:
            if not auto:
                raise
            logger.warning("paddlemix_psa: %s is installed but could not be imported (%r); psa not registered "
                           "with it", host, exc)
            done[host] = False
    _autoload.arm()
    return done


def arm() -> dict[str, bool]:
    """What `import paddlemix_psa` does: register with hosts already imported, hook the others (no imports)."""
    done: dict[str, bool] = {}
    for host, module_name in (("paddleformers", _autoload.PF_INTERFACE), ("paddlemix", _autoload.MIX_MODELING)):
        mod = sys.modules.get(module_name)
        if mod is not None:
            try:
                done[host] = _register_host(host, mod)
            except Exception as exc:  # noqa: BLE001 - same outcome as a failure in the import hook
                _autoload._record_failure(module_name, mod, exc)
                done[host] = False
    _autoload.arm()
    return done


def not_registered_reason(host: str) -> str:
    """Why `psa` is not registered with `host` ("" when it is); never raises for a broken host."""
    if host not in HOSTS:
        raise ValueError(f"unknown host {host!r}: valid hosts are {list(HOSTS)}")
    try:
        if host == "paddleformers":
            from .paddleformers import not_registered_reason as reason
        else:
            from .paddlemix import not_registered_reason as reason
        return reason()
    except Exception as exc:  # noqa: BLE001 - a broken host answers False with the cause, not an exception
        return f"{type(exc).__name__}: {exc}"


def is_registered(host: str | None = None) -> bool:
    """Whether `psa` is registered with `host` (or with any host when None). False for a broken host;
    `not_registered_reason(host)` says why."""
    if host is not None:
        return not not_registered_reason(host)
    return any(not not_registered_reason(h) for h in HOSTS)


def activate() -> None:
    """Entry-point target (groups `paddleformers.attention`, `paddlemix.attention`): register with every
    installed host. A host that loads its group on a registry miss calls this, then retries."""
    register("auto")


def load_attention_plugins(group: str, name: str | None = None) -> list[str]:
    """Load and call the entry points of `group` (optionally only `name`); returns the names loaded.

    The loader a host would run (docs/upstream.md); usable today by launchers. Errors propagate: an
    explicitly requested plugin must fail loudly.
    """
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=group):
        if name is not None and ep.name != name:
            continue
        fn = ep.load()
        if callable(fn):
            fn()
        loaded.append(ep.name)
    return loaded


# ----------------------------------------------------------------------------------------------- stats
def _attention_layers(model) -> Iterable[tuple[str, Any]]:
    for name, layer in model.named_sublayers(include_self=True):
        if STATS_ATTR in layer.__dict__:
            yield name, layer


def collect_stats(model) -> dict[str, PSAStats]:
    """Per-layer statistics of a model run with `psa`: {layer name: PSAStats}.

    Every attention module that saw a call is listed, with its PSA call count and its dense fallbacks per
    reason; densities and level histograms are filled when statistics collection is on
    (`paddlemix_psa.statistics.enable_stats()` or PADDLEMIX_PSA_STATS=1).
    """
    return {name: layer.__dict__[STATS_ATTR].summary() for name, layer in _attention_layers(model)}


def reset_stats(model) -> None:
    """Forget the per-layer statistics of `model`.

    Process-wide counters: `paddlemix_psa.statistics.REGISTRY.reset()`."""
    for _, layer in list(_attention_layers(model)):
        del layer.__dict__[STATS_ATTR]


def set_attn_implementation(model, text: str | None = "psa", vision: str | None = "psa") -> None:
    """Choose the attention implementation per tower on a built Qwen2.5-VL model (None: leave as is).

    PaddleFormers reads the key at forward time, so this just sets each sub-config. PaddleMIX picks classes at
    construction; this swaps each attention module's class within the host's class table (same parameters).
    """
    module = type(model).__module__
    if module.startswith("paddleformers"):
        from .paddleformers import set_attn_implementation as impl
    else:
        from .paddlemix import set_attn_implementation as impl
    impl(model, text=text, vision=vision)


__all__ = ["register", "arm", "is_registered", "not_registered_reason", "activate", "load_attention_plugins", "collect_stats",
           "reset_stats", "set_attn_implementation", "PSANotRegisteredError", "not_registered_error"]
