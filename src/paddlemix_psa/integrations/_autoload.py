"""Post-import hook: register `psa` right after a host module has executed (docs/HOSTS.md §3, option B).

Loaded at interpreter start by `paddlemix_psa_autoload.pth` (by file path, without importing the
`paddlemix_psa` package), or by `import paddlemix_psa`. Standard library only; nothing here imports Paddle
or a host. It installs one `sys.meta_path` finder that answers only for the watched module names below and
wraps their loader so that, once the module body has run, the matching registration runs. It is idempotent
(one finder per process) and never raises into the importing code: a failed registration is one warning with
its cause, and selecting `psa` afterwards raises the plugin's error naming that cause.

With PADDLEMIX_PSA_AUTOLOAD=0 the `.pth` line does not even load this file: nothing of the plugin runs until
`import paddlemix_psa` or `paddlemix_psa.register()`.
"""
from __future__ import annotations

import os
import sys

AUTOLOAD = "PADDLEMIX_PSA_AUTOLOAD"      # same name as paddlemix_psa._env.AUTOLOAD (this file is stdlib-only)

PF_INTERFACE = "paddleformers.nn.attention.interface"
PF_QWEN_CONFIG = "paddleformers.transformers.qwen2_5_vl.configuration"
PF_QWEN_MODELING = "paddleformers.transformers.qwen2_5_vl.modeling"
MIX_MODELING = "paddlemix.models.qwen2_5_vl.modeling_qwen2_5_vl"
WATCHED = (PF_INTERFACE, PF_QWEN_CONFIG, PF_QWEN_MODELING, MIX_MODELING)

FAILURES: dict[str, str] = {}            # host -> cause of its failed automatic registration (warned once)


def autoload_enabled() -> bool:
    value = os.environ.get(AUTOLOAD)
    return value is None or value.strip() == "" or value.strip().lower() not in ("0", "false", "no", "off")


_IN_HOOK = False    # True while the hook itself imports the package (that import must not force registration)


def _on_import(name: str, module) -> None:
    """Run the registration for `name`; never raises (a failure is warned once and remembered for the error)."""
    global _IN_HOOK
    _IN_HOOK = True
    try:
        _register_after_import(name, module)
    except Exception as exc:  # never break the host import
        _record_failure(name, module, exc)
    finally:
        _IN_HOOK = False


def _register_after_import(name: str, module) -> None:
    if name == MIX_MODELING:
        from paddlemix_psa.integrations.paddlemix import register_paddlemix

        register_paddlemix(module=module)
        return
    from paddlemix_psa.integrations.paddleformers import install_config_flow, register_paddleformers

    if name == PF_INTERFACE:
        register_paddleformers(module)
    else:
        register_paddleformers()
        install_config_flow(module)


def _record_failure(name: str, module, exc: BaseException) -> None:
    """One warning per host with the real cause; later selections of `psa` raise an error naming it."""
    host = "PaddleMIX" if name == MIX_MODELING else "PaddleFormers"
    detail = f"{type(exc).__name__}: {exc}"
    cause = f"automatic registration failed ({detail})"
    first = host not in FAILURES
    FAILURES[host] = cause
    try:
        if first:
            import logging

            logging.getLogger("paddlemix_psa").warning(
                "paddlemix_psa: attn_implementation='psa' is not available with %s: registration failed (%s)",
                host, detail)
        if host == "PaddleMIX":
            from paddlemix_psa.integrations.paddlemix import mark_failed

            mark_failed(module, cause)
        else:
            from paddlemix_psa.integrations.paddleformers import mark_failed

            mark_failed(cause)
    except Exception:  # noqa: BLE001 - the host import must go on; the warning above carries the cause
        pass


class _HookLoader:
    """Delegates to the real loader; runs the registration after `exec_module`."""

    def __init__(self, loader, name: str) -> None:
        self._loader, self._name = loader, name

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        try:                                 # leave the module looking exactly as a normal import would
            module.__loader__ = self._loader
            if module.__spec__ is not None:
                module.__spec__.loader = self._loader
        except Exception:
            pass
        _on_import(self._name, module)

    def __getattr__(self, attr):
        return getattr(self._loader, attr)


class _PostImportFinder:
    """`sys.meta_path` finder that only answers for WATCHED names, by asking the finders after it."""

    _paddlemix_psa_finder = True

    def __init__(self) -> None:
        self._busy: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in WATCHED or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            for finder in list(sys.meta_path):
                if finder is self or getattr(finder, "_paddlemix_psa_finder", False):
                    continue
                find = getattr(finder, "find_spec", None)
                if find is None:
                    continue
                try:
                    spec = find(fullname, path, target)
                except Exception:
                    return None              # let the normal machinery run (and raise) as usual
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._busy.discard(fullname)
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _HookLoader(spec.loader, fullname)
        return spec

    def invalidate_caches(self) -> None:
        pass


def _finder() -> "_PostImportFinder | None":
    for f in sys.meta_path:
        if getattr(f, "_paddlemix_psa_finder", False):
            return f
    return None


def arm() -> None:
    """Install the finder (once); called by the `.pth` line (only when PADDLEMIX_PSA_AUTOLOAD is not 0), by
    `import paddlemix_psa` and by `register()`."""
    if _finder() is None:                    # no lock: runs at interpreter start or under the import lock
        sys.meta_path.insert(0, _PostImportFinder())


def install_from_pth() -> None:
    """Entry of `paddlemix_psa_autoload.pth`: cheap; a failure is one stderr line, never an exception."""
    if not autoload_enabled():
        return
    try:
        arm()
    except Exception as exc:  # pragma: no cover - must never break interpreter start
        sys.stderr.write(f"paddlemix_psa: the autoload hook failed ({type(exc).__name__}: {exc}); "
                         f"`import paddlemix_psa` registers attn_implementation='psa' explicitly\n")
