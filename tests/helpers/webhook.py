"""A real HTTP receiver for webhook tests: a `ThreadingHTTPServer` on a free port that records every POST, can
answer with a chosen status, and can be taken down and brought back on the same port (an outage)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.helpers.broker import free_port


@dataclass(frozen=True)
class Post:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def kind(self) -> str:
        return self.headers.get("x-edge-infer-kind", "")

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    """`answer(post) -> status` decides each reply (default 200); only 2xx posts count as `taken`."""

    def __init__(self, answer: Callable[[Post], int] | None = None) -> None:
        self.port = free_port()
        self.answer = answer or (lambda _post: 200)
        self.posts: list[Post] = []  # every request that arrived, whatever the answer
        self.taken: list[Post] = []  # the ones answered 2xx
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                post = Post(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                status = receiver.answer(post)
                with receiver._lock:
                    receiver.posts.append(post)
                    if 200 <= status < 300:
                        receiver.taken.append(post)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Down: the port refuses connections until `start` again."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def of_kind(self, kind: str) -> list[Post]:
        with self._lock:
            return [p for p in self.taken if p.kind == kind]
