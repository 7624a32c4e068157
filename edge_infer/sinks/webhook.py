"""Outbox → HTTP webhook: each stored message is POSTed, in seq order, as the JSON it is stored as.

The same delivery rules as MQTT: a row is deleted only after the receiver answered 2xx (at least once; the
`Idempotency-Key` header, the message's `msg_id`, lets the receiver drop a duplicate); a receiver that is down,
slow or failing (connection error, timeout, 5xx, 408, 429, a redirect) keeps everything queued and is retried
with exponential back-off and full jitter up to `[sink].reconnect_max`; a receiver that refuses one message
for what it is (400, 413, 415, 422) sends that message to the dead-letter table with an event, and the queue
moves on. A receiver that refuses every message (401, 403, 404, 405, …) is a configuration problem, not a
message problem: nothing is dead-lettered, the sink backs off and says so in its log and the health problems.

Headers: `Content-Type: application/json`, `Idempotency-Key`, `X-Edge-Infer-Kind` (results, rejections,
events, health, snapshot), `X-Edge-Infer-Seq` (stored messages), `X-Edge-Infer-Device`, and with
`token_file` `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import http.client
import logging
import random
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge_infer.config import ConfigError
from edge_infer.options import between, http_url, opt
from edge_infer.outbox import Outbox
from edge_infer.outbox_items import Row
from edge_infer.sinks import SinkConfig
from edge_infer.sinks.receipts import Counted, Receipts

log = logging.getLogger(__name__)
MESSAGE_REFUSED = frozenset({400, 413, 415, 422})  # this message is wrong: dead letter, move on
RETRY_LATER = frozenset({408, 425, 429})  # the receiver is busy: keep it, back off
BATCH = 32  # rows read from the outbox at a time


@dataclass(frozen=True, kw_only=True)
class Options(SinkConfig):
    """The `[sink]` keys of type "webhook"."""

    url: str = opt(required=True, check=http_url)
    timeout: float = opt(10.0, check=between(0.1, 600), unit="s")
    reconnect_max: float = opt(30.0, check=between(0.5, 3600), unit="s")
    token_file: str | None = opt(None, is_path=True)  # sent as `Authorization: Bearer <token>`


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    device_id: str
    timeout_s: float = 10.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    token: str | None = field(default=None, repr=False)

    @property
    def target(self) -> urllib.parse.SplitResult:
        return urllib.parse.urlsplit(self.url)


def settings_from_config(options: Options, device_id: str) -> WebhookSettings:
    """`[sink]` of type "webhook" → settings (reads the token file; the token is never logged)."""
    token = None
    if options.token_file:
        try:
            token = Path(options.token_file).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigError(f"[sink].token_file: cannot read {options.token_file}: {exc.strerror}") from None
    return WebhookSettings(url=options.url, device_id=device_id, timeout_s=float(options.timeout),
                           reconnect_max_s=float(options.reconnect_max), token=token)


class Unreachable(Exception):
    """The receiver did not take the message now (down, slow, busy or misconfigured): keep it, back off."""


class WebhookSink(Counted, threading.Thread):
    """Drains the outbox to one URL until stopped; survives receiver outages by backing off and retrying."""

    def __init__(self, settings: WebhookSettings, open_outbox: Callable[[], Outbox]) -> None:
        super().__init__(name="webhook", daemon=True)
        self.settings = settings
        self._open_outbox = open_outbox
        self._stop_requested = threading.Event()
        self._wake = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self._snapshots: dict[str, bytes] = {}
        self._problems: dict[str, str] = {}
        self.receipts = Receipts()
        self.failures = 0  # consecutive failed deliveries
        target = settings.target  # the URL's form is checked once, by Options (options.http_url)
        if target.scheme == "http" and settings.token and target.hostname not in ("127.0.0.1", "localhost", "::1"):
            log.warning("event=insecure_credentials url=%s (token sent without TLS; use https)", target.hostname)

    # ---- called from other threads -------------------------------------------------------------
    def notify(self) -> None:
        """New rows were committed."""
        self._wake.set()

    def offer(self, kind: str, payload: bytes) -> None:
        """A snapshot (`health`, `snapshot`): POSTed once when the receiver takes messages, never stored."""
        self._snapshots[kind] = payload
        self._wake.set()

    def retain(self, kind: str, payload: bytes) -> None:
        """A latest value (`image`, `state/<label>`): MQTT's retained topics; a webhook has no place for one (its
        receiver sees every result and its `state` already)."""

    def set_problem(self, name: str, text: str | None) -> None:
        """Raise (text) or clear (None) a condition; logged, and listed by `problems()`."""
        if text is None:
            self._problems.pop(name, None)
        elif self._problems.get(name) != text:
            self._problems[name] = text
            log.warning("event=problem name=%s text=%r", name, text)

    def problems(self) -> list[str]:
        return [f"{name}: {text}" for name, text in sorted(self._problems.items())]

    def refresh(self, _discovery: list[tuple[str, bytes]]) -> None:
        """The model changed: nothing is announced over a webhook (every message names its model)."""

    def uploading(self) -> bool:
        return False  # kept-input uploads go over MQTT only

    def unreachable(self) -> bool:
        """True while the last delivery attempt failed."""
        return self.failures >= 1

    def stop(self, timeout: float = 10.0) -> None:
        self._stop_requested.set()
        self._wake.set()
        self.join(timeout)

    # ---- the sink's thread -----------------------------------------------------------------------
    def run(self) -> None:
        outbox = self._open_outbox()
        delay = self.settings.reconnect_min_s
        try:
            while not self._stop_requested.is_set():
                try:
                    self._drain(outbox)
                except Unreachable as exc:
                    self._failed(str(exc))
                    self._stop_requested.wait(random.uniform(self.settings.reconnect_min_s, delay))
                    delay = min(delay * 2, self.settings.reconnect_max_s)
                    continue
                except Exception:  # never let the sink die: log, drop the connection, retry
                    log.exception("event=webhook_error (retrying)")
                    self._close()
                    self._stop_requested.wait(delay)
                    continue
                delay = self.settings.reconnect_min_s
                self._wake.wait(1.0)
                self._wake.clear()
        finally:
            self._flush(outbox)
            self._close()
            outbox.close()

    def _drain(self, outbox: Outbox) -> None:
        """POST what is stored, oldest first, until the outbox is empty; then the newest snapshots."""
        try:
            while not self._stop_requested.is_set():
                rows = outbox.pending(0, BATCH)
                if not rows:
                    break
                for row in rows:
                    self._deliver(row)
                self._flush(outbox)
                if self.receipts.taken or self.receipts.refused:
                    return  # the disk is full: the next turn applies them (instead of posting the rows again now)
            for kind in list(self._snapshots):
                payload = self._snapshots.pop(kind, None)
                if payload is not None:
                    try:
                        self._post(kind, payload, None, None)
                    except Unreachable:
                        self._snapshots.setdefault(kind, payload)  # unless a newer one came meanwhile
                        raise
        finally:
            self._flush(outbox)

    def _deliver(self, row: Row) -> None:
        msg_id = row.msg_id or f"seq-{row.seq}"
        refused = self._post(row.kind, row.payload, msg_id, row.seq)
        if refused is None:
            self.receipts.taken.append(row.seq)
        else:
            self.receipts.refused.append((row.seq, refused))
        if self.failures:
            log.info("event=webhook_reachable url=%s after_failures=%d", self.settings.target.hostname,
                     self.failures)
            self.failures = 0
            self.set_problem("webhook", None)

    def _post(self, kind: str, payload: bytes, msg_id: str | None, seq: int | None) -> str | None:
        """One POST. Returns None when taken, the reason when this message is refused for good; raises
        `Unreachable` when it should be tried again later."""
        target = self.settings.target
        headers = {"Content-Type": "application/json", "X-Edge-Infer-Kind": kind,
                   "X-Edge-Infer-Device": self.settings.device_id, "User-Agent": "edge-infer"}
        if msg_id is not None:
            headers["Idempotency-Key"] = msg_id
        if seq is not None:
            headers["X-Edge-Infer-Seq"] = str(seq)
        if self.settings.token:
            headers["Authorization"] = f"Bearer {self.settings.token}"
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        try:
            conn = self._connection()
            conn.request("POST", path, body=payload, headers=headers)
            response = conn.getresponse()
            response.read(64 * 1024)  # the body is not used; read it so the connection can be reused
            status = response.status
            if response.will_close or not response.isclosed():  # a longer body: a new connection next time
                self._close()
        except (OSError, http.client.HTTPException) as exc:
            self._close()
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            return None
        if status in MESSAGE_REFUSED:
            return f"the receiver refused the message: HTTP {status} {response.reason}"
        if status in RETRY_LATER or status >= 500 or 300 <= status < 400:
            raise Unreachable(f"HTTP {status} {response.reason}")
        self.set_problem("webhook", f"the receiver refuses every message: HTTP {status} {response.reason} "
                                    "(check [sink].url and token_file)")
        raise Unreachable(f"HTTP {status} {response.reason}")

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            target = self.settings.target
            cls = http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
            self._conn = cls(target.hostname or "", target.port, timeout=self.settings.timeout_s)
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _failed(self, why: str) -> None:
        self.failures += 1
        if self.failures <= 1 or self.failures % 20 == 0:
            log.warning("event=webhook_unreachable url=%s attempts=%d error=%r (results stay queued)",
                        self.settings.target.hostname, self.failures, why)

    def _flush(self, outbox: Outbox) -> None:
        """Apply what the receiver said (a full disk leaves it for the next turn)."""
        self.receipts.apply(outbox)
