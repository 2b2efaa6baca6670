"""Activation with no caller code (HOSTS.md §3 B): the `.pth` post-import hook, in fresh interpreters.

The child never imports `paddlemix_psa`. It processes `paddlemix_psa_autoload.pth` the way interpreter start
does (`site.addsitedir` on a folder holding a copy of the file; when the wheel is installed, the copy in
site-packages has already run and this is a no-op), then uses PaddleFormers the ordinary way.
"""
import os
import shutil
import subprocess
import sys
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


def test_opt_out_names_the_variable(tmp_path):
    line = _run(tmp_path, {"PADDLEMIX_PSA_AUTOLOAD": "0"})
    assert line.startswith("ERROR") and "PADDLEMIX_PSA_AUTOLOAD" in line, line
