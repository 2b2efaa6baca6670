"""`paddlemix-psa infer` end to end on the tiny model (subprocess), URL inputs from a loopback server, and the
one-line error + exit code of every bad input."""
from __future__ import annotations

import json

import pytest
from _cli import run_cli, standalone_main
from _loopback import serve_directory

from paddlemix_psa.app.plot import png_size
from paddlemix_psa.app.samples import make_sample_image, make_sample_video, sample_image_path

PROMPT = "Describe this image."


def _no_traceback(proc):
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_infer_image_end_to_end(tmp_path):
    stats, plot = tmp_path / "stats.json", tmp_path / "levels.png"
    proc = run_cli("infer", "--model", "tiny", "--type", "image", "--input", str(sample_image_path()),
                   "--prompt", PROMPT, "--max-new-tokens", "3", "--stats-out", str(stats), "--plot", str(plot),
                   "--quiet")
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "meaningless" in out and "attention: PSA" in out and "768 visual tokens" in out
    assert "LLM 0" in out and "LLM 1" in out and "dense fallbacks this run:" in out
    assert proc.stderr.strip() == ""                                  # --quiet: no bars, no host chatter
    rep = json.loads(stats.read_text())
    assert rep["use_psa"] is True and rep["meaningless_text"] is True
    assert rep["result"]["new_tokens"] <= 3 and rep["result"]["prompt_tokens"] > 768
    assert rep["aggregate"]["psa_calls"] == 2 and 0.0 < rep["aggregate"]["sparsity"] < 1.0
    llm = {k: v for k, v in rep["layers"].items() if "visual" not in k}
    assert len(llm) == 2 and all(v["calls"] == 1 and sum(v["histogram"].values()) > 0 for v in llm.values())
    assert rep["fallbacks"].get("decode", 0) >= 2 * (rep["result"]["new_tokens"] - 1)
    assert png_size(plot) == (1200, 500)
    assert "plot written to" in out and "no PSA level map" not in out


def test_infer_video_from_url(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    make_sample_video(www / "clip.mp4", seconds=4.0, fps=8, width=336, height=252)
    stats = tmp_path / "v.json"
    with serve_directory(www) as base:
        proc = run_cli("infer", "--model", "tiny", "--type", "video", "--input", f"{base}/clip.mp4",
                       "--prompt", "What happens?", "--fps", "2", "--max-frames", "8", "--max-new-tokens", "2",
                       "--stats-out", str(stats), "--quiet",
                       env_extra={"PADDLEMIX_PSA_CACHE": str(tmp_path / "cache")})
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 frames at 2.00 fps" in proc.stdout
    rep = json.loads(stats.read_text())
    assert rep["result"]["kind"] == "video" and rep["result"]["media"]["frames"] == 8
    assert rep["aggregate"]["psa_calls"] == 2                       # ~460 tokens >= tiny min_seq_len 256
    assert rep["fallbacks"].get("vision_dense", 0) == 4             # one full-attention call per frame pair
    assert list((tmp_path / "cache" / "media").iterdir())           # downloaded into the cache


def test_infer_no_psa_in_process(tmp_path, capsys):
    img = make_sample_image(tmp_path / "small.png", 448, 336)
    rc = standalone_main(["infer", "--model", "tiny", "--input", str(img), "--prompt", PROMPT, "--no-psa",
                          "--max-new-tokens", "2", "--quiet", "--plot", str(tmp_path / "p.png")])
    out = capsys.readouterr().out
    assert rc == 0 and "dense (PSA off)" in out and "no PSA level map" in out
    assert png_size(tmp_path / "p.png") == (1200, 500)


# ------------------------------------------------------------------------------------------ bad inputs
def _bad_inputs(tmp_path, base):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 30)
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "bad.json").write_text("{not json")
    img = str(sample_image_path())
    return {
        "missing": (["--type", "image", "--input", str(tmp_path / "nope.jpg")], 3, "not found"),
        "zero-length": (["--type", "image", "--input", str(tmp_path / "empty.png")], 3, "empty"),
        "corrupt image": (["--type", "image", "--input", str(tmp_path / "corrupt.png")], 3, "not a readable image"),
        "corrupt video": (["--type", "video", "--input", str(tmp_path / "corrupt.mp4")], 3, "video"),
        "text as image": (["--type", "image", "--input", str(tmp_path / "notes.txt")], 3, "not a readable image"),
        "text as video": (["--type", "video", "--input", str(tmp_path / "notes.txt")], 3, "video"),
        "unknown kind": (["--input", str(tmp_path / "notes.txt")], 3, "--type"),
        "ftp url": (["--type", "image", "--input", "ftp://example.org/a.png"], 3, "unsupported URL scheme"),
        "http 404": (["--type", "image", "--input", f"{base}/missing.png"], 3, "HTTP 404"),
        "config json": (["--input", img, "--psa-config", "{\"query_block\": "], 4, "not valid JSON"),
        "config preset": (["--input", img, "--psa-config", "fastest"], 4, "unknown AttentionConfig preset"),
        "config value": (["--input", img, "--psa-config", "{\"key_block\": 7}"], 4, "key_block"),
        "config file": (["--input", img, "--psa-config", str(tmp_path / "bad.json")], 4, "not valid JSON"),
        "host missing": (["--input", img, "--host", "paddlemix", "--model", "Qwen/x"], 5, "PaddleMIX"),
    }


def test_bad_inputs_one_line_and_exit_code(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PADDLEMIX_PSA_CACHE", str(tmp_path / "cache"))
    with serve_directory(tmp_path) as base:
        cases = _bad_inputs(tmp_path, base)
        for name, (extra, code, match) in cases.items():
            rc = standalone_main(["infer", "--prompt", "x", "--model", "tiny", *extra]
                                 if "--model" not in extra else ["infer", "--prompt", "x", *extra])
            err = capsys.readouterr().err
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert rc == code, (name, rc, err)
            assert len(lines) == 1 and lines[0].startswith("paddlemix-psa infer: error: "), (name, err)
            assert match in lines[0], (name, lines[0])


@pytest.mark.parametrize("case", ["missing", "config json"])
def test_bad_input_subprocess_has_no_traceback(tmp_path, case):
    extra, code, match = _bad_inputs(tmp_path, "http://127.0.0.1:9")[case]
    proc = run_cli("infer", "--model", "tiny", "--prompt", "x", *extra)
    assert proc.returncode == code
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in proc.stderr


def test_usage_errors_exit_2(capsys):
    for argv in (["infer", "--input", "a.png", "--prompt", "x", "--fps", "-1"],
                 ["infer", "--input", "a.png", "--prompt", "x", "--type", "audio"],
                 ["infer", "--prompt", "x"]):
        with pytest.raises(SystemExit) as info:
            standalone_main(argv)
        assert info.value.code == 2
    capsys.readouterr()
