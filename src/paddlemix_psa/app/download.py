"""http(s) downloads into the media cache: a cached file is complete, or there is none.

- The body goes to a unique temp file in the cache directory and is renamed onto its cache name only when the
  byte count matches Content-Length; on any failure, and on Ctrl-C, the temp file is deleted.
- A size cap (64 MiB for images, 4 GiB for videos, or `PADDLEMIX_PSA_MAX_DOWNLOAD_MB` / `--max-download-mb`)
  refuses a too-large Content-Length before reading and stops streaming at the cap.
- Besides the per-read socket timeout there is a total deadline over connecting, headers and body: a watchdog
  shuts the socket down when it passes, so a server that drips bytes cannot keep a read alive.
- Only http and https are followed, at every redirect hop.
- One download per URL at a time, across threads and processes (a file lock); the others reuse its file.
- A body whose Content-Type says it is not media (an HTML error page, JSON, ...) is refused.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO, Iterator

from .. import _env
from .errors import DownloadError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: see _url_lock
    fcntl = None  # type: ignore[assignment]

_log = logging.getLogger("paddlemix_psa")

MIB = 1 << 20
IMAGE_CAP_BYTES = 64 * MIB
VIDEO_CAP_BYTES = 4096 * MIB
READ_TIMEOUT_S = 30.0            # per socket operation
DEADLINE_S = 3600.0              # the whole download (4 GiB at ~1.2 MB/s)
CHUNK_BYTES = 1 << 16
PARTIAL_PREFIX = ".partial-"     # temp files; names starting with "." are never cache entries
LOCK_DIR = ".locks"
CACHE_LAYOUT = b"paddlemix-psa-cache-2\n"

# Content types that are never an image or a video (error pages, API answers).
_NOT_MEDIA = ("application/json", "application/xml", "application/xhtml+xml", "application/javascript")
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_warned_no_fcntl = False


def default_cache_dir() -> Path:
    """`$PADDLEMIX_PSA_CACHE/media`, else `$XDG_CACHE_HOME/paddlemix_psa/media`, else `~/.cache/...`."""
    root = os.environ.get(_env.CACHE) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "paddlemix_psa")
    return Path(root) / "media"


def download_cap(kind: str | None, max_bytes: int | None = None) -> int:
    """The size cap in bytes: `max_bytes`, else the environment variable, else the default for `kind`."""
    if max_bytes is not None:
        return max_bytes
    mb = _env.max_download_mb()
    if mb is not None:
        return int(mb * MIB)
    return IMAGE_CAP_BYTES if kind == "image" else VIDEO_CAP_BYTES


def ascii_url(url: str) -> str:
    """`url` with a non-ASCII host IDNA-encoded and other non-ASCII characters percent-encoded."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        host, port = parts.hostname or "", parts.port
    except ValueError as e:
        raise DownloadError(f"download failed: invalid URL {url!r} ({e})") from None
    if not host:
        raise DownloadError(f"download failed: no host in URL {url!r}")
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise DownloadError(f"download failed: invalid host name {parts.hostname!r} in {url!r}") from None
    if ":" in host:                                   # IPv6 literal
        host = f"[{host}]"
    user = parts.netloc.rpartition("@")[0]
    netloc = (_quote_unsafe(user) + "@" if user else "") + host + (f":{port}" if port is not None else "")
    return urllib.parse.urlunsplit((parts.scheme.lower(), netloc, _quote_unsafe(parts.path) or "/",
                                    _quote_unsafe(parts.query), ""))


def _quote_unsafe(text: str) -> str:
    """Percent-encode what may not appear raw in a request line (non-ASCII, spaces, controls), nothing else."""
    return re.sub(r"[^\x21-\x7e]", lambda m: urllib.parse.quote(m.group(), safe=""), text)


def cache_path(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `url` is cached: `<sha256 prefix>-<sanitised file name>` in the cache directory."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = urllib.parse.unquote(os.path.basename(urllib.parse.urlsplit(url).path)) or "download"
    name = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)[-80:].lstrip(".")
    # keyed with a layout tag: files of the first layout (before byte counts were checked) may be truncated, so
    # they are never reused; `paddlemix-psa cache --clear` removes them
    key = hashlib.sha256(CACHE_LAYOUT + url.encode()).hexdigest()[:16]
    return cache / f"{key}-{name or 'download'}"


def download(url: str, *, cache_dir: str | os.PathLike | None = None, quiet: bool = False, kind: str | None = None,
             max_bytes: int | None = None, timeout: float = READ_TIMEOUT_S, deadline: float = DEADLINE_S) -> Path:
    """Download `url` once into the cache and return the file (a cached complete file is reused).

    `kind` ("image" | "video" | None) picks the default size cap and the content-type check; `max_bytes`
    overrides the cap. Raises `DownloadError` (one line); nothing is left in the cache then.
    """
    url = ascii_url(url)
    target = cache_path(url, cache_dir)
    if target.is_file():
        return target
    cap = download_cap(kind, max_bytes)
    try:
        (target.parent / LOCK_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create cache directory {target.parent}: {e.strerror or e}") from None
    with _url_lock(target.parent / LOCK_DIR / (target.name.split("-", 1)[0] + ".lock")):
        if target.is_file():                      # another thread or process finished it while we waited
            return target
        fd, tmp = tempfile.mkstemp(prefix=PARTIAL_PREFIX + target.name.split("-", 1)[0] + "-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                _fetch(url, fh, kind=kind, cap=cap, quiet=quiet, timeout=timeout, deadline=deadline,
                       label=target.name.split("-", 1)[1])
            try:
                os.replace(tmp, target)
            except OSError as e:                  # e.g. `paddlemix-psa cache --clear` ran meanwhile
                raise DownloadError(f"download failed: cannot store {target}: {e.strerror or e}") from None
        except BaseException:                     # failures and Ctrl-C alike: never leave a partial file
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return target


def cache_entries(cache_dir: str | os.PathLike | None = None) -> tuple[list[Path], list[Path]]:
    """(complete downloads, partial files) in the cache directory, each sorted by name."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    files = sorted(p for p in cache.iterdir() if p.is_file()) if cache.is_dir() else []
    return ([p for p in files if not p.name.startswith(".")],
            [p for p in files if p.name.startswith(PARTIAL_PREFIX)])


def clear_cache(cache_dir: str | os.PathLike | None = None) -> tuple[list[Path], list[Path]]:
    """Delete every complete download and every partial file no download is writing to.

    Returns (removed, kept): a partial file is kept while the process writing it holds its URL lock.
    """
    entries, partials = cache_entries(cache_dir)
    removed, kept = [], []
    for p in entries:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    for p in partials:
        key = p.name[len(PARTIAL_PREFIX):].split("-", 1)[0]
        if not _try_lock(p.parent / LOCK_DIR / f"{key}.lock"):
            kept.append(p)
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed, kept


def _try_lock(path: Path) -> bool:
    """True when nobody holds the URL lock at `path` (checked without waiting, released at once)."""
    if fcntl is None or not path.exists():  # pragma: no cover - Windows
        return True
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


@contextlib.contextmanager
def _url_lock(path: Path) -> Iterator[None]:
    """Exclusive per-URL lock: flock on a lock file (separate opens conflict across threads and processes)."""
    global _warned_no_fcntl
    if fcntl is None:  # pragma: no cover - Windows
        if not _warned_no_fcntl:
            _warned_no_fcntl = True
            _log.warning("no fcntl on this platform: downloads of one URL are serialised within this process only")
        with _THREAD_LOCKS.setdefault(str(path), threading.Lock()):
            yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to http(s): never hand a URL to the ftp or file handlers."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = urllib.parse.urljoin(req.full_url, newurl)
        scheme = urllib.parse.urlsplit(target).scheme.lower()
        if scheme not in ("http", "https"):
            raise DownloadError(f"download refused: {req.full_url} redirects to {target!r}; only http(s) "
                                f"redirects are followed")
        return super().redirect_request(req, fp, code, msg, headers, ascii_url(target))


def _fetch(url: str, fh: BinaryIO, *, kind: str | None, cap: int, quiet: bool, timeout: float, deadline: float,
           label: str) -> None:
    """Stream the body of `url` into `fh`, enforcing the cap, the deadline, the byte count and the type."""
    watchdog = _Watchdog(deadline)
    opener = urllib.request.build_opener(_HttpOnlyRedirects, _DeadlineHTTPHandler(watchdog),
                                         _DeadlineHTTPSHandler(watchdog))
    request = urllib.request.Request(url, headers={"User-Agent": "paddlemix-psa"})
    late = f"download failed: {url} took longer than the {deadline:g} s deadline"
    try:
        with opener.open(request, timeout=min(timeout, deadline)) as resp:
            got, declared = _stream(resp, fh, url=url, kind=kind, cap=cap, quiet=quiet, label=label,
                                    watchdog=watchdog, late=late)
    except DownloadError:
        raise
    except Exception as e:
        if watchdog.expired():                    # the watchdog cut a read that was still trickling in
            raise DownloadError(late) from None
        raise _one_line_error(e, url) from None
    finally:
        watchdog.cancel()
    if watchdog.expired() and (declared is None or got != declared):     # EOF from the watchdog's shutdown
        raise DownloadError(f"{late} ({got} bytes received)")
    if declared is not None and got != declared:
        raise DownloadError(f"download failed: truncated: received {got} of {declared} bytes (Content-Length) "
                            f"from {url}")
    if got == 0:
        raise DownloadError(f"download failed: empty body (0 bytes) from {url}")


def _stream(resp, fh: BinaryIO, *, url: str, kind: str | None, cap: int, quiet: bool, label: str,
            watchdog: _Watchdog, late: str) -> tuple[int, int | None]:
    """(bytes written, Content-Length or None)."""
    from tqdm.auto import tqdm

    _check_content_type(resp.headers.get("Content-Type"), kind, url)
    declared = _content_length(resp.headers.get("Content-Length"))
    if declared is not None and declared > cap:
        raise DownloadError(f"download refused: {url} is {_mb(declared)} (Content-Length), above the "
                            f"{_mb(cap)} limit{_for(kind)}; {_RAISE_CAP}")
    got = 0
    with tqdm(total=declared, unit="B", unit_scale=True, desc=f"download {label}", disable=quiet,
              leave=False) as bar:
        while True:
            if watchdog.expired():
                raise DownloadError(f"{late} ({got} bytes received)")
            chunk = resp.read1(CHUNK_BYTES)      # at most one socket read: the deadline check runs often
            if not chunk:
                return got, declared
            got += len(chunk)
            if got > cap:
                raise DownloadError(f"download stopped: {url} passed the {_mb(cap)} limit{_for(kind)}; {_RAISE_CAP}")
            fh.write(chunk)
            bar.update(len(chunk))


def _one_line_error(e: Exception, url: str) -> DownloadError:
    if isinstance(e, urllib.error.HTTPError):
        return DownloadError(f"download failed: HTTP {e.code} {e.reason} for {url}")
    if isinstance(e, urllib.error.URLError):
        return DownloadError(f"download failed: {_reason(e.reason)} for {url}")
    if isinstance(e, http.client.IncompleteRead):
        return DownloadError(f"download failed: truncated body from {url} (connection closed after "
                             f"{len(e.partial)} bytes of a chunk)")
    if isinstance(e, http.client.HTTPException):      # BadStatusLine, RemoteDisconnected, LineTooLong, ...
        return DownloadError(f"download failed: malformed HTTP response from {url} ({type(e).__name__}: "
                             f"{_reason(e)})")
    if isinstance(e, (OSError, ValueError)):
        return DownloadError(f"download failed: {_reason(e)} for {url}")
    raise e


class _Watchdog:
    """The total deadline over every connection of one download: when it passes, the open socket is shut
    down, which ends a read that a slow server keeps alive byte by byte (the per-read timeout cannot)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.timers: list[threading.Timer] = []

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def arm(self, sock) -> None:
        timer = threading.Timer(max(0.0, self.end - time.monotonic()), _shutdown, (sock,))
        timer.daemon = True
        self.timers.append(timer)
        timer.start()

    def cancel(self) -> None:
        for timer in self.timers:
            timer.cancel()


def _shutdown(sock) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _watched(base: type, watchdog: _Watchdog) -> type:
    class Watched(base):
        def connect(self) -> None:
            super().connect()
            watchdog.arm(self.sock)
    return Watched


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self.connection = _watched(http.client.HTTPConnection, watchdog)

    def http_open(self, req):
        return self.do_open(self.connection, req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self.connection = _watched(http.client.HTTPSConnection, watchdog)

    def https_open(self, req):
        return self.do_open(self.connection, req, context=self._context)


_RAISE_CAP = f"raise it with --max-download-mb or {_env.MAX_DOWNLOAD_MB}"


def _check_content_type(header: str | None, kind: str | None, url: str) -> None:
    ctype = (header or "").split(";")[0].strip().lower()
    if not ctype:
        return
    wrong = ctype.startswith("text/") or ctype in _NOT_MEDIA or (
        kind == "image" and ctype.split("/")[0] in ("video", "audio"))
    if wrong:
        what = f"an {kind}" if kind == "image" else (f"a {kind}" if kind else "media")
        raise DownloadError(f"download refused: {url} returned Content-Type {ctype!r}, not {what} "
                            f"(an error or login page?)")


def _content_length(value: str | None) -> int | None:
    return int(value.strip()) if value and value.strip().isdigit() else None


def _mb(n: int) -> str:
    if n < MIB:
        return f"{n / 1024:.1f} KiB"
    return f"{n / MIB:.1f} MiB" if n < 1024 * MIB else f"{n / (1024 * MIB):.2f} GiB"


def _for(kind: str | None) -> str:
    return f" for {kind}s" if kind else ""


def _reason(e: object) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(text).strip().splitlines()[0] if str(text).strip() else type(e).__name__


__all__ = ["download", "download_cap", "cache_path", "cache_entries", "clear_cache", "default_cache_dir", "ascii_url",
           "DownloadError", "IMAGE_CAP_BYTES", "VIDEO_CAP_BYTES", "PARTIAL_PREFIX", "LOCK_DIR"]
