"""A loopback TCP server whose handler writes raw HTTP bytes (to fake broken servers); 127.0.0.1 only."""
from __future__ import annotations

import contextlib
import socket
import threading
from typing import Callable, Iterator


@contextlib.contextmanager
def raw_server(handler: Callable[[str, socket.socket], None]) -> Iterator[tuple[str, list[str]]]:
    """Serve on an ephemeral port: `handler(path, conn)` answers each request by writing raw bytes to `conn`.

    Yields (base URL, the request paths seen so far). A thread per connection; all closed on exit.
    """
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.05)
    stop, seen, threads = threading.Event(), [], []

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in data:
                    more = conn.recv(4096)
                    if not more:
                        return
                    data += more
                path = data.split(b" ", 2)[1].decode("latin-1")
                seen.append(path)
                handler(path, conn)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            t = threading.Thread(target=answer, args=(conn,), daemon=True)
            threads.append(t)
            t.start()

    loop = threading.Thread(target=serve, daemon=True)
    loop.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}", seen
    finally:
        stop.set()
        loop.join(timeout=5)
        srv.close()
        for t in threads:
            t.join(timeout=5)


def response(body: bytes, *, status: str = "200 OK", content_type: str | None = "image/png",
             length: int | None = -1, extra: str = "") -> bytes:
    """A raw response head + body; `length=-1` declares len(body), None declares nothing."""
    head = f"HTTP/1.1 {status}\r\nConnection: close\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    if length is not None:
        head += f"Content-Length: {len(body) if length == -1 else length}\r\n"
    return (head + extra + "\r\n").encode("latin-1") + body
