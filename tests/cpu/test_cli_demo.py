"""`paddlemix-psa demo`: offline, tiny model, image and generated video, PSA on vs off, plot and JSON."""
from __future__ import annotations

import json

from _cli import run_cli

from paddlemix_psa.app.plot import png_size


def test_demo_runs_offline(tmp_path):
    proc = run_cli("demo", "--quiet", "--max-new-tokens", "2", "--plot", str(tmp_path / "levels.png"),
                   "--stats-out", str(tmp_path / "demo.json"), cwd=tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "meaningless" in out and "PSA vs dense" in out and "logit cos" in out
    rows = [ln for ln in out.splitlines() if ln.startswith(("image ", "video "))]
    assert len(rows) == 4, out
    rep = json.loads((tmp_path / "demo.json").read_text())
    for kind in ("image", "video"):
        case = rep["cases"][kind]
        assert case["dense"]["prompt_tokens"] == case["psa"]["prompt_tokens"] > 256
        assert case["comparison"]["logits_cosine"] > 0.99           # sparse prefill stays close to dense
        assert 0.0 < case["psa"]["sparsity"] < 1.0                   # PSA really ran sparse
        assert case["psa"]["fallbacks"].get("short", 0) == 0        # ... and not as a "short" fallback
        assert case["dense"]["fallbacks"] == {}
    assert png_size(tmp_path / "levels.png") == (1200, 500)
    assert "plot written to" in out
    answers = [ln.split(":", 1)[1] for ln in out.splitlines() if "answer:" in ln]
    assert len(answers) == 4 and all(a.isprintable() and "\ufffd" not in a for a in answers)
    assert "top-1 agree = share of prompt positions" in out
    assert out.strip().splitlines()[-1].startswith("verdict: PSA matches dense: logits cosine 0.99")
