"""`paddlemix-psa attention` end to end in a subprocess (the README's main-job building block)."""
import json
import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", "paddlemix_psa.cli.main", *args], capture_output=True, text=True,
                          timeout=300)


def test_attention_command_prints_histogram_sparsity_and_similarity(tmp_path):
    out_json = tmp_path / "r.json"
    r = _run("attention", "--length", "1024", "--heads", "4", "--kv-heads", "2", "--head-dim", "64",
             "--config", '{"query_block": 64, "key_block": 32, "dense_tail_tokens": 128}', "--json", str(out_json))
    assert r.returncode == 0, r.stderr
    for needle in ("level histogram", "level 2 (2x pooled)", "skipped", "FLOP-equivalent density",
                   "cosine similarity", "relative L2 error", "reference backend"):
        assert needle in r.stdout
    data = json.loads(out_json.read_text())
    assert 0.0 < data["stats"]["sparsity"] < 1.0 and data["cosine"] > 0.9
    assert sum(data["stats"]["histogram"].values()) > 0


def test_attention_command_bad_input_is_one_line():
    r = _run("attention", "--config", '{"key_block": 24}')
    assert r.returncode == 4                         # the config exit code of every subcommand
    lines = r.stderr.strip().splitlines()            # host noise is quiet by default: only the error line
    assert len(lines) == 1 and lines[0].startswith("paddlemix-psa attention: error: invalid --config: "
                                                   "AttentionConfig.key_block=24")
    assert "Traceback" not in r.stderr
