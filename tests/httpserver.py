"""A local HTTP file server for download tests: Range requests, conditional GETs and injected failures."""

from __future__ import annotations

import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer:
    """Serves in-memory files on 127.0.0.1; `fail_next` answers 503 that many times; `cut_next`
    closes the connection after that many body bytes once (a dropped download). A hostile server:
    `drip` sends the body one byte every that many seconds (each read gets a byte well within any
    per-read timeout); `drip_headers` does the same to the headers; `no_length` sends no Content-Length
    and ends the body by closing the connection (so a client cannot know the size in advance)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fail_next = 0
        self.cut_next: int | None = None
        self.drip: float | None = None
        self.drip_headers = False
        self.no_length = False
        self.stop = threading.Event()  # ends a drip at once when the server shuts down
        self.requests: list[dict[str, str]] = []
        self.modified = formatdate(1_700_000_000, usegmt=True)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append({"path": self.path, **{k: v for k, v in self.headers.items()}})
                if server.fail_next > 0:
                    server.fail_next -= 1
                    self.send_error(503, "try later")
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                if self.headers.get("If-Modified-Since") == server.modified:
                    self.send_response(304)
                    self.end_headers()
                    return
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    status = 206
                part = body[start:]
                if server.drip_headers:
                    self.drip(b"HTTP/1.1 200 OK\r\nX-Padding: " + b"x" * len(part) + b"\r\n\r\n")
                    return
                self.send_response(status)
                if server.no_length:
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(part)))
                self.send_header("Last-Modified", server.modified)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                if server.drip is not None:
                    self.drip(part)
                    return
                if server.cut_next is not None:
                    cut, server.cut_next = server.cut_next, None
                    self.wfile.write(part[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(part)

            def drip(self, data: bytes) -> None:
                for i in range(len(data)):
                    if server.stop.wait(server.drip or 0):
                        return
                    try:
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                    except OSError:  # the client hung up
                        return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class Receiver:
    """A local webhook: keeps the JSON body of every POST; answers `status` after `delay_s` seconds."""

    def __init__(self, status: int = 200, delay_s: float = 0.0) -> None:
        import json

        self.received: list[dict] = []
        self.status = status
        self.delay_s = delay_s
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(receiver.delay_s)
                receiver.received.append(json.loads(body or b"null"))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
