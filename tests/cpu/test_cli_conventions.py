"""Conventions shared by every `paddlemix-psa` subcommand: one exit-code table (in `--help` too), `--version`,
early checks before the model loads, one-line messages, quiet pipes, quiet hosts unless `--verbose`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest
from _cli import run_cli

from paddlemix_psa.app import inference
from paddlemix_psa.app.samples import make_sample_image, sample_image_path
from paddlemix_psa.cli import exit_codes
from paddlemix_psa.cli.main import build_parser, main

IMG = str(sample_image_path())


def _err_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the model is built: the checks under test must run before it."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(inference.QwenVLInference, "__init__", refuse)


def test_every_help_prints_the_exit_code_table(capsys):
    parser = build_parser()
    commands = list(parser._subparsers._group_actions[0].choices)
    assert {"attention", "infer", "demo"} <= set(commands)
    for argv in [["--help"]] + [[c, "--help"] for c in commands]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "exit codes: 0 ok" in text and "4 bad --psa-config or option value" in text, argv


def test_version(capsys):
    from paddlemix_psa import __version__

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"paddlemix-psa {__version__}"


def test_demo_help_does_not_mention_model(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "--model" not in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["attention", "--config", '{"key_block": 24}'],
    ["infer", "--model", "tiny", "--input", IMG, "--prompt", "x", "--psa-config", '{"key_block": 24}'],
    ["demo", "--psa-config", '{"key_block": 24}'],
])
def test_same_config_error_same_exit_code(argv, capsys, no_model):
    assert main(argv) == exit_codes.CONFIG == 4
    assert "AttentionConfig.key_block=24" in _err_line(capsys)


def test_json_array_config_is_named(capsys, no_model):
    assert main(["infer", "--model", "tiny", "--input", IMG, "--prompt", "x", "--psa-config", "[1,2]"]) == 4
    assert "must be a JSON object or a preset name" in _err_line(capsys)


@pytest.mark.parametrize("model", ["/nonexistent", "./missing/dir", "a/b/c"])
def test_missing_model_directory(model, capsys, no_model):
    assert main(["infer", "--model", model, "--input", IMG, "--prompt", "x"]) == exit_codes.MODEL
    assert "not a local model directory or a model id" in _err_line(capsys)


@pytest.mark.parametrize("option", ["--plot", "--stats-out"])
@pytest.mark.parametrize("command", ["infer", "demo"])
def test_output_paths_are_checked_before_the_model_loads(tmp_path, option, command, capsys, no_model):
    target = str(tmp_path / "missing" / "out.file")
    argv = [command, option, target] + (["--model", "tiny", "--input", IMG, "--prompt", "x"]
                                        if command == "infer" else [])
    assert main(argv) == exit_codes.CONFIG
    assert f"{option} {target}: directory" in _err_line(capsys)
    assert main([command, option, str(tmp_path)] + argv[3:]) == exit_codes.CONFIG
    assert "is a directory" in _err_line(capsys)


def test_attention_json_path_is_checked_first(tmp_path, capsys):
    assert main(["attention", "--json", str(tmp_path / "no" / "r.json")]) == exit_codes.CONFIG
    assert "--json" in _err_line(capsys)


@pytest.mark.parametrize("extra,match", [
    (["--plot-layer", "2"], "--plot-layer 2 is out of range: the model has 2 LLM layers"),
    (["--plot-head", "4"], "--plot-head 4 is out of range: the level map has 4 heads"),
    (["--plot-head", "2", "--psa-config", '{"gqa_mask": "per_kv_group", "min_seq_len": 256}'], "has 2 heads"),
])
def test_plot_selectors_checked_before_the_tiny_model_loads(extra, match, capsys, no_model):
    assert main(["infer", "--model", "tiny", "--input", IMG, "--prompt", "x", *extra]) == exit_codes.CONFIG
    assert match in _err_line(capsys)


def test_plot_selectors_checked_once_real_weights_load(tmp_path, monkeypatch, capsys):
    """A downloaded model's sizes are known after loading, still before any inference runs."""
    class Loaded:
        def __init__(self, **kwargs):
            text = types.SimpleNamespace(num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2)
            self.model = types.SimpleNamespace(config=types.SimpleNamespace(text_config=text))

        def inference_image(self, *args, **kwargs):
            raise AssertionError("inference ran before the check")

    monkeypatch.setattr(inference, "QwenVLInference", Loaded)
    assert main(["infer", "--model", "Org/model", "--input", IMG, "--prompt", "x", "--plot-layer", "3"]) == 4
    assert "the model has 3 LLM layers (0..2)" in _err_line(capsys)


def test_plot_error_keeps_the_statistics(tmp_path, monkeypatch, capsys):
    def broken_plot(self, path, head=0):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(inference.QwenVLInference, "plot", broken_plot)
    img = make_sample_image(tmp_path / "small.png", 224, 168)
    stats = tmp_path / "stats.json"
    rc = main(["infer", "--model", "tiny", "--input", str(img), "--prompt", "x", "--max-new-tokens", "1",
               "--quiet", "--stats-out", str(stats), "--plot", str(tmp_path / "p.png")])
    assert rc == exit_codes.OTHER
    line = _err_line(capsys)
    assert "renderer exploded" in line and f"statistics were written to {stats}" in line
    assert json.loads(stats.read_text())["result"]["new_tokens"] == 1


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["attention", "--length", "256", "--heads", "2",
                                                               "--kv-heads", "1", "--head-dim", "64"]])
def test_closed_pipe_exits_quietly(argv):
    proc = subprocess.Popen([sys.executable, "-m", "paddlemix_psa.cli.main", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()                      # the reader is gone before the first write (`| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == "", err


def test_host_noise_is_quiet_by_default_and_shown_with_verbose(tmp_path):
    img = str(make_sample_image(tmp_path / "small.png", 224, 168))
    args = ("infer", "--model", "tiny", "--input", img, "--prompt", "x", "--max-new-tokens", "1")
    quiet = run_cli(*args)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    for noise in ("ccache", "PyTorch was not found", "\x1b[", "W1", "UserWarning"):
        assert noise not in quiet.stderr, (noise, quiet.stderr[-2000:])
    loud = run_cli("--verbose", *args, "--quiet")
    assert loud.returncode == 0 and "No ccache found" in loud.stderr


def test_tiny_tokenizer_prints_printable_text():
    from paddlemix_psa.app.tiny import ByteTokenizer

    tok = ByteTokenizer()
    text = tok.decode([0, 102, 143, 3, 10, 258, 65, 200])
    assert text.isprintable() and "\ufffd" not in text and text == "\\x00f\\x8f\\x03\\x0aA\\xc8"
    assert tok.decode(tok.encode("héllo wörld")) == "héllo wörld"


def test_demo_verdict_line():
    from paddlemix_psa.cli.demo import verdict

    same = {"logits_cosine": 0.99953, "same_tokens": True}
    assert verdict({"image": same}) == "verdict: PSA matches dense: logits cosine 0.9995, same text"
    two = verdict({"image": same, "video": {"logits_cosine": 0.95, "same_tokens": False}})
    assert two.startswith("verdict: PSA differs from dense: logits cosine 0.9500") and "1/2 cases" in two


def test_cli_does_not_quiet_the_plugin_logger():
    from paddlemix_psa.cli.infer import quiet_hosts

    quiet_hosts()
    import logging

    assert not logging.getLogger("paddlemix_psa").filters     # unexpected-fallback warnings stay visible
    assert os.environ.get("GLOG_minloglevel") is not None
