"""Post-import hook: register `psa` right after a host module has executed (HOSTS.md §3, option B).

Loaded at interpreter start by `paddlemix_psa_autoload.pth` (by file path, without importing the
`paddlemix_psa` package), or by `import paddlemix_psa`. Standard library only; nothing here imports Paddle
or a host. It installs one `sys.meta_path` finder that answers only for the watched module names below and
wraps their loader so that, once the module body has run, the matching registration runs. It is idempotent
(one finder per process), never raises into the importing code, and with PADDLEMIX_PSA_AUTOLOAD=0 registers
nothing: it then only makes selecting `psa` fail with an error that names the variable.
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



def autoload_enabled() -> bool:
    value = os.environ.get(AUTOLOAD)
    return value is None or value.strip() == "" or value.strip().lower() not in ("0", "false", "no", "off")


_IN_HOOK = False    # True while the hook itself imports the package (that import must not force registration)


def _on_import(name: str, module, mode: str) -> None:
    """Run the registration for `name`; never raises (a failure is logged and remembered for the error)."""
    global _IN_HOOK
    _IN_HOOK = True
    try:
        _register_after_import(name, module, mode)
    finally:
        _IN_HOOK = False


def _register_after_import(name: str, module, mode: str) -> None:
    guard = mode != "active"
    why = "" if not guard else f"{AUTOLOAD}=0 switched off its automatic registration"
    try:
        if name == MIX_MODELING:
            from paddlemix_psa.integrations.paddlemix import register_paddlemix

            register_paddlemix(module=module, guard=guard, why=why)
            return
        from paddlemix_psa.integrations.paddleformers import install_config_flow, register_paddleformers

        if name == PF_INTERFACE:
            register_paddleformers(module, guard=guard, why=why)
        else:
            register_paddleformers(guard=guard, why=why)
            install_config_flow(module)
    except Exception as exc:  # never break the host import
        import logging

        logging.getLogger("paddlemix_psa").warning(
            "paddlemix_psa: automatic registration after importing %s failed: %r; selecting "
            "attn_implementation='psa' will raise (set %s=0 to silence)", name, exc, AUTOLOAD)
        try:
            detail = f"automatic registration failed ({exc!r})"
            if name == MIX_MODELING:
                from paddlemix_psa.integrations.paddlemix import register_paddlemix

                register_paddlemix(module=module, guard=True, why=detail)
            else:
                from paddlemix_psa.integrations.paddleformers import register_paddleformers

                register_paddleformers(guard=True, why=detail)
        except Exception:
            pass


class _HookLoader:
    """Delegates to the real loader; runs the registration after `exec_module`."""

    def __init__(self, loader, name: str, finder: "_PostImportFinder") -> None:
        self._loader, self._name, self._finder = loader, name, finder

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
        _on_import(self._name, module, self._finder.mode)

    def __getattr__(self, attr):
        return getattr(self._loader, attr)


class _PostImportFinder:
    """`sys.meta_path` finder that only answers for WATCHED names, by asking the finders after it."""

    _paddlemix_psa_finder = True

    def __init__(self, mode: str) -> None:
        self.mode = mode
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
        spec.loader = _HookLoader(spec.loader, fullname, self)
        return spec

    def invalidate_caches(self) -> None:
        pass


def _finder() -> "_PostImportFinder | None":
    for f in sys.meta_path:
        if getattr(f, "_paddlemix_psa_finder", False):
            return f
    return None


def arm(force: bool = False) -> None:
    """Install the finder (once). `force=True` (explicit `import paddlemix_psa` / `register()`): active mode
    even when PADDLEMIX_PSA_AUTOLOAD=0; otherwise the mode follows the variable."""
    mode = "active" if force or autoload_enabled() else "guard"
    f = _finder()                            # no lock: runs at interpreter start or under the import lock
    if f is None:
        sys.meta_path.insert(0, _PostImportFinder(mode))
    elif mode == "active":
        f.mode = "active"


def install_from_pth() -> None:
    """Entry of `paddlemix_psa_autoload.pth`: cheap, never raises."""
    try:
        arm(force=False)
    except Exception:  # pragma: no cover - must never break interpreter start
        pass
