"""URL downloads against loopback servers that misbehave on purpose: a cached file is complete or absent."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
from _rawhttp import raw_server, response

from paddlemix_psa.app import download as dl
from paddlemix_psa.app.errors import DownloadError, MediaError

BODY = bytes(range(256)) * 40          # 10 kB


def _leftovers(cache):
    """Everything in the cache dir except the lock directory (partials included)."""
    return sorted(p.name for p in cache.iterdir() if p.name != dl.LOCK_DIR) if cache.exists() else []


def _fails(url, cache, match, **kw):
    with pytest.raises(DownloadError, match=match) as info:
        dl.download(url, cache_dir=cache, quiet=True, **kw)
    assert "\n" not in str(info.value) and isinstance(info.value, MediaError)
    assert _leftovers(cache) == [], "a failed download left files in the cache"
    return str(info.value)


def test_complete_download_is_cached_and_reused(tmp_path):
    with raw_server(lambda path, c: c.sendall(response(BODY))) as (base, seen):
        got = dl.download(f"{base}/a.png", cache_dir=tmp_path, quiet=True)
        again = dl.download(f"{base}/a.png", cache_dir=tmp_path, quiet=True)
    assert got == again and got.read_bytes() == BODY and seen == ["/a.png"]
    assert _leftovers(tmp_path) == [got.name]


def test_truncated_body_is_not_cached(tmp_path):
    def short(path, c):
        c.sendall(response(BODY[:4000], length=len(BODY)))      # closes 6000 bytes early
    with raw_server(short) as (base, _):
        msg = _fails(f"{base}/t.png", tmp_path, "truncated")
    assert "4000 of 10240" in msg
    with raw_server(lambda path, c: c.sendall(response(BODY))) as (base2, _):
        assert dl.download(f"{base2}/t.png", cache_dir=tmp_path, quiet=True).read_bytes() == BODY


def test_files_of_the_unchecked_cache_layout_are_not_reused(tmp_path):
    """The first cache layout (sha256(url)[:16]-name) held files whose byte count was never checked."""
    import hashlib

    with raw_server(lambda path, c: c.sendall(response(BODY))) as (base, _):
        url = f"{base}/old.png"
        old = tmp_path / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-old.png"
        old.write_bytes(BODY[:100])                               # truncated by an earlier version
        assert dl.download(url, cache_dir=tmp_path, quiet=True).read_bytes() == BODY


def test_truncated_chunked_body_is_one_line(tmp_path):
    def chunked(path, c):
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"400\r\n" + BODY[:100])                        # promises 1024 bytes, sends 100, closes
    with raw_server(chunked) as (base, _):
        _fails(f"{base}/c.png", tmp_path, "truncated body")


def test_bad_status_line_is_one_line(tmp_path):
    with raw_server(lambda path, c: c.sendall(b"HTTX/9 banana\r\n\r\n")) as (base, _):
        _fails(f"{base}/s.png", tmp_path, "malformed HTTP response")


def test_non_ascii_url_is_encoded(tmp_path):
    with raw_server(lambda path, c: c.sendall(response(BODY))) as (base, seen):
        got = dl.download(f"{base}/bild ü.png?q=ä", cache_dir=tmp_path, quiet=True)
    assert got.read_bytes() == BODY and seen == ["/bild%20%C3%BC.png?q=%C3%A4"]
    _fails("http://" + "ü" * 70 + "/x.png", tmp_path / "other", "invalid host name")


def test_size_cap_refused_from_content_length(tmp_path):
    def huge(path, c):
        c.sendall(response(b"", length=315 << 20))               # declares 315 MiB, sends nothing
        time.sleep(2)
    with raw_server(huge) as (base, _):
        t0 = time.monotonic()
        msg = _fails(f"{base}/big.png", tmp_path, "refused", kind="image")
        assert time.monotonic() - t0 < 1.5                      # refused from the header, not by reading
    assert "315.0 MiB" in msg and "64.0 MiB limit for images" in msg and "--max-download-mb" in msg


def test_size_cap_stops_streaming_without_content_length(tmp_path, monkeypatch):
    sent = []

    def endless(path, c):
        c.sendall(response(b"", length=None))
        for _ in range(64):                                      # 4 MiB unless the client hangs up
            c.sendall(b"\0" * (1 << 16))
            sent.append(1)
    with raw_server(endless) as (base, _):
        _fails(f"{base}/v.mp4", tmp_path, "stopped", max_bytes=1 << 20)
        monkeypatch.setenv("PADDLEMIX_PSA_MAX_DOWNLOAD_MB", "0.5")
        msg = _fails(f"{base}/w.mp4", tmp_path, "stopped", kind="video")
    assert "512.0 KiB limit for videos" in msg


def test_cap_from_env_is_validated(tmp_path, monkeypatch):
    monkeypatch.setenv("PADDLEMIX_PSA_MAX_DOWNLOAD_MB", "lots")
    with pytest.raises(ValueError, match="PADDLEMIX_PSA_MAX_DOWNLOAD_MB='lots' is invalid"):
        dl.download("http://127.0.0.1:9/x.png", cache_dir=tmp_path, quiet=True)
    assert dl.download_cap("image", 5) == 5
    monkeypatch.delenv("PADDLEMIX_PSA_MAX_DOWNLOAD_MB")
    assert (dl.download_cap("image"), dl.download_cap("video")) == (64 << 20, 4 << 30)


def test_total_deadline_stops_a_drip(tmp_path):
    def drip(path, c):
        c.sendall(response(b"", length=1000))
        for _ in range(1000):
            c.sendall(b"x")
            time.sleep(0.1)
    with raw_server(drip) as (base, _):
        t0 = time.monotonic()
        _fails(f"{base}/d.png", tmp_path, "deadline", timeout=3, deadline=1.0)
        assert time.monotonic() - t0 < 3.0


def test_total_deadline_stops_a_dripping_status_line(tmp_path):
    def drip_head(path, c):
        for byte in b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n" * 20:
            c.sendall(bytes([byte]))
            time.sleep(0.05)
    with raw_server(drip_head) as (base, _):
        t0 = time.monotonic()
        _fails(f"{base}/h.png", tmp_path, "took longer than the 1 s deadline", timeout=3, deadline=1.0)
        assert time.monotonic() - t0 < 2.5


def test_redirect_to_another_scheme_is_refused(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(1.5)
    port = listener.getsockname()[1]

    def to_ftp(path, c):
        c.sendall(response(b"", status="302 Found", length=0, extra=f"Location: ftp://127.0.0.1:{port}/x.png\r\n"))
    with raw_server(to_ftp) as (base, _):
        _fails(f"{base}/r.png", tmp_path, "only http\\(s\\) redirects")
    with pytest.raises((TimeoutError, socket.timeout)):
        listener.accept()                                        # nothing ever connected to the ftp port
    listener.close()


def test_redirect_between_http_urls_is_followed(tmp_path):
    def hop(path, c):
        if path == "/old.png":
            c.sendall(response(b"", status="301 Moved", length=0, extra="Location: /new%20file.png\r\n"))
        else:
            c.sendall(response(BODY))
    with raw_server(hop) as (base, seen):
        assert dl.download(f"{base}/old.png", cache_dir=tmp_path, quiet=True).read_bytes() == BODY
    assert seen == ["/old.png", "/new%20file.png"]


def test_html_error_page_is_refused(tmp_path):
    page = b"<html><body>Sign in</body></html>"
    with raw_server(lambda path, c: c.sendall(response(page, content_type="text/html; charset=utf-8"))) as (base, _):
        msg = _fails(f"{base}/p.png", tmp_path, "Content-Type 'text/html'", kind="image")
    assert "not an image" in msg


def test_interrupt_removes_the_partial_file(tmp_path, monkeypatch):
    reads = []

    class _Interrupting:
        @staticmethod
        def monotonic():
            reads.append(1)
            if len(reads) > 3:
                raise KeyboardInterrupt
            return time.monotonic()
    monkeypatch.setattr(dl, "time", _Interrupting)
    monkeypatch.setattr(dl, "CHUNK_BYTES", 100)
    with raw_server(lambda path, c: c.sendall(response(BODY))) as (base, _):
        with pytest.raises(KeyboardInterrupt):
            dl.download(f"{base}/k.png", cache_dir=tmp_path, quiet=True)
    assert len(reads) > 3 and _leftovers(tmp_path) == []


_CHILD = """
import sys
from paddlemix_psa.app.download import download
print(download(sys.argv[1], cache_dir=sys.argv[2], quiet=True))
"""


def test_concurrent_downloads_of_one_url(tmp_path):
    """4 threads and 2 processes ask for one URL at once: one request, every caller gets the same full file."""
    def slow(path, c):
        c.sendall(response(b"", length=len(BODY)))
        for i in range(0, len(BODY), 1024):
            c.sendall(BODY[i:i + 1024])
            time.sleep(0.02)
    results, errors = [], []

    def worker():
        try:
            results.append(dl.download(url, cache_dir=tmp_path, quiet=True))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)
    with raw_server(slow) as (base, seen):
        url = f"{base}/same.mp4"
        procs = [subprocess.Popen([sys.executable, "-c", _CHILD, url, str(tmp_path)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        outs = [p.communicate(timeout=60) for p in procs]
    assert errors == [] and len(results) == 4
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    paths = {str(r) for r in results} | {o[0].strip() for o in outs}
    assert len(paths) == 1 and results[0].read_bytes() == BODY
    assert seen == ["/same.mp4"] and _leftovers(tmp_path) == [results[0].name]


def _broken(path, c):
    if path.startswith("/chunked"):
        c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n" + BODY[:10])
    elif path.startswith("/status"):
        c.sendall(b"HTTP/1.1 OOPS\r\n\r\n")
    else:
        c.sendall(response(BODY * 200))                          # 2 MiB


@pytest.mark.parametrize("case, match", [
    ("/chunked.png", "truncated body"), ("/status.png", "malformed HTTP response"),
    ("/big.png --max-download-mb 1", "above the 1.0 MiB limit"), ("HOST", "invalid host name"),
])
def test_cli_download_failures_exit_3_in_one_line(tmp_path, case, match):
    from _cli import run_cli

    with raw_server(_broken) as (base, _):
        path, *extra = case.split()
        url = "http://" + "ü" * 70 + "/x.png" if case == "HOST" else base + path
        proc = run_cli("infer", "--model", "tiny", "--input", url, "--prompt", "x", "--quiet", *extra,
                       env_extra={"PADDLEMIX_PSA_CACHE": str(tmp_path)}, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert match in proc.stderr and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert _leftovers(tmp_path / "media") == []


def test_api_download_cap(tmp_path):
    """`QwenVLInference(max_download_mb=...)` caps URL inputs as `--max-download-mb` does."""
    from paddlemix_psa.app.inference import QwenVLInference

    with pytest.raises(ValueError, match="max_download_mb=-1 is invalid"):
        QwenVLInference(model="tiny", quiet=True, max_download_mb=-1)
    app = QwenVLInference(model="tiny", quiet=True, cache_dir=str(tmp_path), max_download_mb=0.005)
    with raw_server(lambda path, c: c.sendall(response(BODY))) as (base, seen):
        with pytest.raises(DownloadError, match=r"above the 5.1 KiB limit for images"):
            app.inference_image(f"{base}/a.png", "x", max_new_tokens=1)
    assert _leftovers(tmp_path) == []


def test_a_download_that_cannot_be_decoded_leaves_the_cache(tmp_path):
    """A complete download that is not a usable image or video is not kept: the next run fetches it afresh."""
    from paddlemix_psa.app import media

    def garbage(path, c):
        body = (b"\x89PNG\r\n\x1a\n" if path.endswith(".png") else b"\0\0\0\x18ftypmp42") + b"garbage" * 100
        c.sendall(response(body, content_type="application/octet-stream"))
    with raw_server(garbage) as (base, _):
        with pytest.raises(MediaError, match="not a readable image"):
            media.load_image(f"{base}/bad.png", cache_dir=tmp_path, quiet=True)
        with pytest.raises(MediaError, match="not a readable video"):
            media.load_video(f"{base}/bad.mp4", cache_dir=tmp_path, quiet=True)
    assert _leftovers(tmp_path) == []
