"""The live view's HTTP server (Python's own `http.server`, at most `MAX_CONNECTIONS` at once):

- `/` the page; `/state.json` what it shows, once; `/events` the same as server-sent events, pushed when a
  result arrives (at most every `PUSH_S`) and at least every `IDLE_S`;
- `/frame.jpg` the latest input with its result drawn on; `/stream.mjpg` those frames as MJPEG (Home
  Assistant's MJPEG camera), at most `MJPEG_FPS` a second.

On loopback nothing is asked; on any other address every request needs the token (`?token=` — the page passes
it on to its own requests — or `Authorization: Bearer`), compared in constant time. The server never touches
the broker: it keeps working while the broker is down.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from edge_infer.metrics import CONNECTION_TIMEOUT_S, BoundedHTTPServer
from edge_infer.web.view import LiveView

log = logging.getLogger(__name__)
PUSH_S = 0.5
IDLE_S = 5.0
MJPEG_FPS = 5.0
BOUNDARY = "edge-infer-frame"


class WebServer:
    """The live view on `host:port` in its own thread; `status` builds the health part on each push."""

    def __init__(self, host: str, port: int, view: LiveView, status: Callable[[], dict[str, Any]],
                 token: str | None) -> None:
        page = resources.files("edge_infer.web").joinpath("page.html").read_bytes()
        self.stopping = threading.Event()
        handler = _handler(view, status, token, page, self.stopping)
        self.server = BoundedHTTPServer((host, port), handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="web", daemon=True)

    def start(self) -> WebServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def _handler(view: LiveView, status: Callable[[], dict[str, Any]], token: str | None, page: bytes,
             stopping: threading.Event) -> type[BaseHTTPRequestHandler]:
    def state() -> bytes:
        return json.dumps({**view.to_dict(), "status": status()}, default=str).encode()

    class Handler(BaseHTTPRequestHandler):
        timeout = CONNECTION_TIMEOUT_S

        def log_message(self, *_args: Any) -> None:  # page loads are not log events
            return

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if token is not None and not self._authorised(parse_qs(url.query).get("token", [""])[0]):
                self.send_error(401, "a token is required: open the page as /?token=...")
                return
            route = {"/": self._page, "/state.json": self._state, "/events": self._events,
                     "/frame.jpg": self._frame, "/stream.mjpg": self._mjpeg}.get(url.path)
            if route is None:
                self.send_error(404, "not here")
                return
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):  # the viewer went away
                route()

        def _authorised(self, given: str) -> bool:
            header = self.headers.get("Authorization", "")
            given = header[7:] if header.startswith("Bearer ") else given
            return hmac.compare_digest(given.encode(), token.encode()) if token is not None else True

        def _send(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _page(self) -> None:
            self._send(page, "text/html; charset=utf-8")

        def _state(self) -> None:
            self._send(state(), "application/json")

        def _frame(self) -> None:
            frame = view.frame()
            if frame is None:
                self.send_error(404, "no frame yet")
                return
            self._send(frame[1], "image/jpeg")

        def _events(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seen = -1
            while not stopping.is_set():
                self.wfile.write(b"data: " + state() + b"\n\n")
                self.wfile.flush()
                seen = view.wait(seen if seen >= 0 else view.version, IDLE_S)
                stopping.wait(PUSH_S)

        def _mjpeg(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            sent = -1
            while not stopping.is_set():
                frame = view.frame()
                if frame is not None and frame[0] != sent:
                    sent = frame[0]
                    self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(frame[1])}"
                                     "\r\n\r\n".encode() + frame[1] + b"\r\n")
                    self.wfile.flush()
                view.wait(view.version if frame is not None else -1, IDLE_S)
                stopping.wait(1.0 / MJPEG_FPS)

    return Handler


def start_web(host: str, port: int, view: LiveView, status: Callable[[], dict[str, Any]],
              token: str | None) -> WebServer:
    """Listen (OSError when the port is taken) and serve in a thread."""
    server = WebServer(host, port, view, status, token).start()
    log.info("event=web_listening address=http://%s:%d/%s", host, server.port, " (token required)" if token else "")
    return server

