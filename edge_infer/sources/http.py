"""`type = "http"`: a JPEG snapshot URL polled every `interval` seconds (IP cameras, ESP32-CAM, go2rtc).

A live source: when the pipeline is behind, only the newest snapshot is kept. A camera that stops answering is
polled on (`source_lost` once, `source_restored` when it answers again: `edge_infer.sources.health`), not
turned into a stream of rejections; identical snapshots from a camera that stopped updating are caught by the
gate's frozen-frame check. Cameras that want a login get HTTP Basic or Digest authentication (whichever the
camera asks for): `username` (or `http://user@host/…`) and the password from `EDGE_INFER_HTTP_PASSWORD`, the
systemd credential `http_password` or `password_file` — or, discouraged, from the URL itself.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from edge_infer.secrets import SecretUnreadable, read_secret
from edge_infer.sources import Sample, SourceConfig, SourceError, register
from edge_infer.sources.health import SourceHealth

PASSWORD_ENV = "EDGE_INFER_HTTP_PASSWORD"
CREDENTIAL_NAME = "http_password"  # systemd LoadCredential=http_password:/etc/edge-infer/http_password


@dataclass(frozen=True, kw_only=True)
class Options(SourceConfig):
    """The `[source]` keys of type "http"."""

    url: str = opt(required=True, check=http_url)
    interval: float = opt(1.0, check=between(0.0, 86400), unit="s")
    timeout: float = opt(5.0, check=between(0.1, 600), unit="s")
    max_bytes: int = opt(20 * 1024 * 1024, check=between(1, 2**34), unit="bytes")
    username: str | None = opt(None)  # HTTP Basic or Digest login (also `http://user@host/…`)
    password_file: str | None = opt(None, is_path=True)



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
        self.url, login = split_login(options.url)
        self.name = options.name or "http"
        self.interval = options.interval
        self.timeout = options.timeout
        self.max_bytes = options.max_bytes
        self.failures = 0
        self.polls = 0
        self.health = SourceHealth()
        handlers: list[Any] = [SameOriginRedirects(self.url)]
        username = options.username or login[0]
        if username:
            try:
                password = read_secret(PASSWORD_ENV, CREDENTIAL_NAME, options.password_file) or login[1]
            except SecretUnreadable as exc:
                raise SourceError(f"[source] password: {exc}") from None
            logins = urllib.request.HTTPPasswordMgrWithDefaultRealm()
            logins.add_password(None, self.url, username, password or "")
            handlers += [urllib.request.HTTPBasicAuthHandler(logins), urllib.request.HTTPDigestAuthHandler(logins)]
        self._opener = urllib.request.build_opener(*handlers)

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
        while not stop.is_set():
            started = time.monotonic()
            self.polls += 1
            try:
                data = self.fetch()
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self.failures += 1
                self.health.lost(_why(exc))
                if once:
                    return
            else:
                self.health.restored()
                now = time.time()
                digest = hashlib.sha1(data, usedforsecurity=False).hexdigest()[:16]
                yield Sample(self.name, f"{self.name}@{rfc3339(now)}", digest, now, data)
                if once:
                    return
            stop.wait(max(0.0, self.interval - (time.monotonic() - started)))


def split_login(url: str) -> tuple[str, tuple[str | None, str | None]]:
    """`http://user:pw@host/…` → (`http://host/…`, (user, pw)): urllib cannot open a URL with a login in it."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, (None, None)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    clean = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return clean, (urllib.parse.unquote(parts.username), None if parts.password is None
                   else urllib.parse.unquote(parts.password))


def _why(exc: BaseException) -> str:
    """One line for `source_lost`: what the camera said, or why it could not be reached."""
    if isinstance(exc, urllib.error.HTTPError):
        hint = " (check username and password)" if exc.code == 401 else ""
        return f"HTTP {exc.code} {exc.reason}{hint}"
    return str(getattr(exc, "reason", exc))


@register("http")
def make_http_source(options: Options, spec: Any = None) -> HttpSource:
    return HttpSource(options)
