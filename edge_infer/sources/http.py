"""`type = "http"`: a JPEG snapshot URL polled every `interval` seconds (IP cameras, ESP32-CAM, go2rtc).

A live source: when the pipeline is behind, only the newest snapshot is kept. A failed poll is logged once
(and again when the camera comes back), not turned into a stream of rejections; identical snapshots from a
camera that stopped updating are caught by the gate's frozen-frame check.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from edge_infer.clock import rfc3339
from edge_infer.options import between, http_url, opt
from edge_infer.sources import Sample, SourceConfig, register


@dataclass(frozen=True, kw_only=True)
class Options(SourceConfig):
    """The `[source]` keys of type "http"."""

    url: str = opt(required=True, check=http_url)
    interval: float = opt(1.0, check=between(0.0, 86400))
    timeout: float = opt(5.0, check=between(0.1, 600))
    max_bytes: int = opt(20 * 1024 * 1024, check=between(1, 2**34))

log = logging.getLogger(__name__)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


class SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to the configured URL's own scheme, host and port."""

    def __init__(self, url: str) -> None:
        self.origin = _origin(url)

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if _origin(newurl) != self.origin:
            raise urllib.error.HTTPError(req.full_url, code, "redirect to another origin refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class HttpSource:
    kind = "image"
    live = True
    dropped = 0

    def __init__(self, options: Options) -> None:
        self.url = options.url
        self.name = options.name or "http"
        self.interval = options.interval
        self.timeout = options.timeout
        self.max_bytes = options.max_bytes
        self.failures = 0
        self.polls = 0
        self._opener = urllib.request.build_opener(SameOriginRedirects(self.url))

    def fetch(self) -> bytes:
        """One snapshot within `timeout` seconds overall (connect, redirects and body together), at most
        `max_bytes`, redirected only within the URL's own origin. Raises `OSError` / `ValueError` with a reason."""
        deadline = time.monotonic() + self.timeout
        request = urllib.request.Request(self.url, headers={"User-Agent": "edge-infer", "Cache-Control": "no-cache"})
        with self._opener.open(request, timeout=self.timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                raise ValueError(f"snapshot of {length} bytes is over max_bytes ({self.max_bytes})")
            chunks: list[bytes] = []
            got = 0
            while got <= self.max_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"snapshot not complete within timeout ({self.timeout:g} s)")
                with contextlib.suppress(AttributeError, OSError):  # the socket's next read gets what is left
                    response.fp.raw._sock.settimeout(left)  # noqa: SLF001 — the stdlib has no public way to shorten it
                chunk = response.read1(min(64 * 1024, self.max_bytes + 1 - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        if got > self.max_bytes:
            raise ValueError(f"snapshot over max_bytes ({self.max_bytes})")
        return b"".join(chunks)

    def samples(self, stop: threading.Event, once: bool, done: Callable[[Sample], bool]) -> Iterator[Sample]:
        down_since: float | None = None
        while not stop.is_set():
            started = time.monotonic()
            self.polls += 1
            try:
                data = self.fetch()
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self.failures += 1
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("event=http_source_unreachable url=%s error=%r (retrying every %.3gs)", self.url,
                                str(getattr(exc, "reason", exc)), self.interval)
                if once:
                    return
            else:
                if down_since is not None:
                    log.warning("event=http_source_recovered url=%s after_s=%.1f", self.url,
                                time.monotonic() - down_since)
                    down_since = None
                now = time.time()
                digest = hashlib.sha1(data, usedforsecurity=False).hexdigest()[:16]
                yield Sample(self.name, f"{self.name}@{rfc3339(now)}", digest, now, data)
                if once:
                    return
            stop.wait(max(0.0, self.interval - (time.monotonic() - started)))


@register("http")
def make_http_source(options: Options, spec: Any = None) -> HttpSource:
    return HttpSource(options)
