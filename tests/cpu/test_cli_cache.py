"""`paddlemix-psa cache`: list the downloads with their total size, `--clear` them (sparing running ones)."""
from __future__ import annotations

import fcntl

from _cli import run_cli
from _rawhttp import raw_server, response

from paddlemix_psa.app import download as dl


def _cache_cli(cache_root, *args):
    proc = run_cli("cache", *args, env_extra={"PADDLEMIX_PSA_CACHE": str(cache_root)}, timeout=60)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc.stdout


def test_cache_lists_and_clears(tmp_path):
    media_dir = tmp_path / "media"
    with raw_server(lambda path, c: c.sendall(response(b"\x89PNG" + b"\0" * (3000 if "a" in path else 1000)))) \
            as (base, _):
        a = dl.download(f"{base}/a.png", cache_dir=media_dir, quiet=True)
        b = dl.download(f"{base}/b.png", cache_dir=media_dir, quiet=True)
    stale = media_dir / f"{dl.PARTIAL_PREFIX}0123456789abcdef-x"      # an interrupted download, nobody writing
    stale.write_bytes(b"\0" * 500)
    out = _cache_cli(tmp_path)
    assert f"cache: {media_dir}" in out and a.name in out and b.name in out
    assert "2 files, 3.9 KiB" in out                                  # 3004 + 1004 bytes
    assert "partial downloads (running or interrupted): 1 file, 500 B" in out

    running = media_dir / f"{dl.PARTIAL_PREFIX}fedcba9876543210-y"    # a download in progress: its lock is held
    running.write_bytes(b"\0" * 10)
    with open(media_dir / dl.LOCK_DIR / "fedcba9876543210.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out = _cache_cli(tmp_path, "--clear")
    assert f"removed 3 files (4.4 KiB) from {media_dir}" in out and "kept 1 file" in out
    assert not a.exists() and not b.exists() and not stale.exists() and running.exists()
    assert "0 files, 0 B" in _cache_cli(tmp_path)


def test_cache_of_a_missing_directory_is_empty(tmp_path):
    assert "0 files, 0 B" in _cache_cli(tmp_path / "never-used")
    (tmp_path / "f").write_text("x")
    proc = run_cli("cache", "--dir", str(tmp_path / "f"), timeout=60)
    assert proc.returncode == 4 and "not a directory" in proc.stderr and "Traceback" not in proc.stderr
