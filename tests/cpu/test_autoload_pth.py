"""Activation with no caller code (docs/HOSTS.md §3 B): the `.pth` post-import hook, in fresh interpreters.

The child never imports `paddlemix_psa`. It processes `paddlemix_psa_autoload.pth` the way interpreter start
does (`site.addsitedir` on a folder holding a copy of the file; when the wheel is installed, the copy in
site-packages has already run and this is a no-op), then uses PaddleFormers the ordinary way.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

pytest.importorskip("paddleformers")

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")
PTH = os.path.join(SRC, "paddlemix_psa_autoload.pth")

CHILD = textwrap.dedent("""
    import json, os, sys, site
    site.addsitedir(sys.argv[1])
    assert "paddle" not in sys.modules and "paddlemix_psa" not in sys.modules, "the hook must stay lazy"
    import paddle
    from paddleformers.transformers.qwen2_5_vl.configuration import Qwen2_5_VLConfig
    from paddleformers.transformers.qwen2_5_vl.modeling import Qwen2_5_VLForConditionalGeneration as M
    with open(sys.argv[2]) as f:
        d = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    paddle.seed(0)
    M(Qwen2_5_VLConfig(**d)).save_pretrained(sys.argv[3])
    try:
        model = M.from_pretrained(sys.argv[3], attn_implementation="psa", load_checkpoint_format="safetensors",
                                  psa_config={"min_seq_len": 0})
        model.eval()
        ids = paddle.to_tensor([[1] + list(range(2, 40))])
        with paddle.no_grad():
            model(input_ids=ids)
        from paddlemix_psa.integrations import collect_stats
        calls = collect_stats(model)["model.language_model.layers.0.self_attn"].calls
        print("RESULT", model.config.text_config._attn_implementation,
              model.config.vision_config._attn_implementation, calls)
    except Exception as exc:
        print("ERROR", type(exc).__name__, exc)
""")


def _run(tmp_path, env_extra):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    shutil.copy(PTH, site_dir)
    tiny = os.path.join(SRC, "paddlemix_psa", "data", "tiny_qwen2_5_vl.json")
    env = dict(os.environ, GLOG_minloglevel="2", **env_extra)
    env.pop("PADDLEMIX_PSA_STRICT", None)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(site_dir), tiny, str(tmp_path / "model")],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("RESULT", "ERROR"))]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    return lines[-1]


def test_pth_file_is_one_import_line():
    with open(PTH) as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("import ")


def test_fresh_interpreter_selects_psa_without_import(tmp_path):
    assert _run(tmp_path, {"PADDLEMIX_PSA_AUTOLOAD": "1"}) == "RESULT psa psa 1"


def _isolated(code: str, site_dir, *args, env_extra: dict) -> subprocess.CompletedProcess:
    """Run `code` with no site processing (`-S`): the checkout's sources and the venv's packages on the path,
    and only the checkout's `.pth` processed (the installed copy may be older than the checkout)."""
    prologue = (f"import sys; sys.path[:0] = [{os.path.abspath(SRC)!r}]; "
                f"sys.path.append({sysconfig.get_paths()['purelib']!r})\n")
    env = dict(os.environ, GLOG_minloglevel="2", **env_extra)
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-S", "-c", prologue + code, str(site_dir), *args], capture_output=True,
                          text=True, env=env, timeout=300)


OPT_OUT_CHILD = textwrap.dedent("""
    import sys, site
    site.addsitedir(sys.argv[1])
    import paddleformers.transformers.qwen2_5_vl.modeling as modeling
    from paddleformers.nn.attention.interface import AttentionInterface
    loaded = sorted(n for n in sys.modules if n.startswith("paddlemix_psa"))
    finders = [type(f).__name__ for f in sys.meta_path if getattr(f, "_paddlemix_psa_finder", False)]
    wrapped = hasattr(modeling.Qwen2_5_VLForConditionalGeneration.__init__, "__psa_wrapped__")
    print("OFF", loaded, finders, wrapped, "psa" in AttentionInterface())
    import paddlemix_psa
    print("ON", "psa" in AttentionInterface(), paddlemix_psa.is_registered("paddleformers"))
""")


def test_opt_out_runs_nothing_of_the_plugin(tmp_path):
    """PADDLEMIX_PSA_AUTOLOAD=0: no plugin module loaded, no finder, nothing wrapped, until the import."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    shutil.copy(PTH, site_dir)
    proc = _isolated(OPT_OUT_CHILD, site_dir, env_extra={"PADDLEMIX_PSA_AUTOLOAD": "0"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("OFF", "ON"))]
    assert proc.returncode == 0 and lines == ["OFF [] [] False False", "ON True True"], proc.stderr[-3000:]


FAILING_CHILD = textwrap.dedent("""
    import sys, site
    site.addsitedir(sys.argv[1])
    import paddleformers.nn.general as general
    def broken(cls, key, value):
        raise TypeError("register() is broken in this build")
    general.GeneralInterface.register = classmethod(broken)
    import paddle
    from paddleformers.transformers.qwen2_5_vl.configuration import Qwen2_5_VLConfig
    from paddleformers.transformers.qwen2_5_vl.modeling import Qwen2_5_VLForConditionalGeneration as M
    import paddlemix_psa
    print("REGISTERED", paddlemix_psa.is_registered("paddleformers"))
    from paddlemix_psa.integrations import not_registered_reason
    print("REASON", not_registered_reason("paddleformers"))
    import json
    with open(sys.argv[2]) as f:
        d = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    try:
        M(Qwen2_5_VLConfig(**d), attn_implementation="psa")
    except Exception as exc:
        print("ERROR", type(exc).__name__, exc)
""")


def test_failed_registration_is_one_warning_and_the_selection_names_the_cause(tmp_path):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    shutil.copy(PTH, site_dir)
    tiny = os.path.join(SRC, "paddlemix_psa", "data", "tiny_qwen2_5_vl.json")
    proc = _isolated(FAILING_CHILD, site_dir, tiny, env_extra={"PADDLEMIX_PSA_AUTOLOAD": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [ln for ln in proc.stderr.splitlines() if "paddlemix_psa" in ln]
    assert len(warnings) == 1 and "register() is broken in this build" in warnings[0], proc.stderr[-3000:]
    assert "PADDLEMIX_PSA_AUTOLOAD" not in warnings[0]                # no advice that would not help
    out = dict(ln.split(" ", 1) for ln in proc.stdout.splitlines() if ln.startswith(("REGISTERED", "REASON",
                                                                                      "ERROR")))
    assert out["REGISTERED"] == "False" and "register() is broken" in out["REASON"]
    assert out["ERROR"].startswith("PSANotRegisteredError") and "register() is broken in this build" in out["ERROR"]


def test_failing_autoload_file_is_reported(tmp_path):
    """A `.pth` whose hook file cannot run says so on stderr instead of passing silently."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    fake = tmp_path / "fake"
    (fake / "paddlemix_psa" / "integrations").mkdir(parents=True)
    (fake / "paddlemix_psa" / "__init__.py").write_text("")
    (fake / "paddlemix_psa" / "integrations" / "_autoload.py").write_text("raise ImportError('damaged hook')\n")
    shutil.copy(PTH, site_dir)
    env = dict(os.environ, PADDLEMIX_PSA_AUTOLOAD="1")
    code = f"import site, sys; sys.path.insert(0, {str(fake)!r}); site.addsitedir(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(site_dir)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0
    assert "paddlemix_psa: the autoload hook failed (ImportError: damaged hook)" in proc.stderr, proc.stderr
