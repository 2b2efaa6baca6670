"""`paddlemix-psa check` on a CPU machine: the interpreter path, its JSON report and its exit codes (issue 8)."""
import json
import os
import textwrap

import pytest

from _cli import run_cli

pytest.importorskip("triton")
KERNELS = ["estimator", "similarity cap", "selection", "index list", "pooling", "attention", "psa_attention"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("check") / "report.json"
    proc = run_cli("check", "--json", str(path), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(path) as f:
        return json.load(f), proc.stdout


def test_json_report_covers_every_kernel_under_the_interpreter(report):
    data, _ = report
    assert data["mode"] == "interpreter" and data["passed"] is True
    shapes = sorted({c["shape"] for c in data["checks"]})
    assert len(shapes) == 2 and any("float16" in s for s in shapes) and any("float32" in s for s in shapes)
    for shape in shapes:
        assert [c["kernel"] for c in data["checks"] if c["shape"] == shape] == KERNELS
    for c in data["checks"]:
        assert c["passed"] and 0.0 <= c["max_error"] <= c["tolerance"]
    exact = [c for c in data["checks"] if c["kernel"] in ("similarity cap", "index list")]
    assert all(c["tolerance"] == 0.0 and c["detail"].startswith("exact; 0 of ") for c in exact)
    # the selection allows fp32 ties of an interval end (GPU summation order); the interpreter has none
    sel = [c for c in data["checks"] if c["kernel"] == "selection"]
    assert sel and all(c["tolerance"] == 0.0 and c["detail"].startswith(
        "exact except at fp32 ties of an interval end; 0 of ") for c in sel)


def test_json_report_states_versions_backend_and_no_timing(report):
    data, stdout = report
    env = data["environment"]
    import paddle
    import triton

    assert env["paddle"] == paddle.__version__ and env["triton"] == triton.__version__
    assert env["paddle_compiled_with_cuda"] is False and env["gpus"] == []
    assert {"cuda_driver", "paddleformers", "paddlemix", "paddlemix_psa"} <= set(env)
    assert data["gpu_backend"]["backend"] == "none" and "CPU build" in data["gpu_backend"]["why"]
    assert data["timing"]["possible"] is False
    assert data["timing"]["why"].startswith("no GPU timing was possible")
    assert "timing: no GPU timing was possible" in stdout
    assert "backend for a GPU tensor: none" in stdout and "result: PASS (14 of 14 checks passed)" in stdout


_CORRUPT_POOLING = textwrap.dedent("""
    # test fault injection: the reference pooling is 1% off, so the pooling check must fail (and only it)
    import paddlemix_psa.reference as ref
    _orig = ref.pool_kv
    ref.pool_kv = lambda k, v, levels=(2, 4, 8): {p: (a * 1.01, b) for p, (a, b) in _orig(k, v, levels).items()}
""")


def test_a_failing_check_names_kernel_shape_and_error_and_exits_6(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(_CORRUPT_POOLING)
    path = tmp_path / "report.json"
    pythonpath = os.pathsep.join(p for p in (str(tmp_path), os.path.dirname(__file__), os.environ.get("PYTHONPATH"))
                                 if p)
    proc = run_cli("check", "--json", str(path), timeout=300, env_extra={"PYTHONPATH": pythonpath})
    assert proc.returncode == 6, proc.stdout + proc.stderr
    data = json.loads(path.read_text())
    failed = [c for c in data["checks"] if not c["passed"]]
    assert [c["kernel"] for c in failed] == ["pooling", "pooling"] and data["passed"] is False
    assert all(c["max_error"] > c["tolerance"] for c in failed)
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("FAIL"))
    assert "pooling" in line and "B=1 Hq=4 Hkv=2 L=200 D=64 float16" in line and "max error" in line
    assert "result: FAIL (12 of 14 checks passed)" in proc.stdout
