"""Outbox → MQTT. One thread owns every paho call.

The publisher only hands paho what it can send now (while connected, at most `max_inflight` unacknowledged,
at most `max_publish_rate` per second), and deletes an outbox row only when the broker acknowledged it
without a failure reason code; a refused message goes to the dead-letter table and never blocks the queue.
Each connection gets a fresh paho client, so nothing queued inside paho outlives a connection: after a
reconnect the outbox, not paho, decides what is sent again (at-least-once; subscribers drop duplicates by
`msg_id`). Brokers in `hosts` are tried in turn, with exponential back-off and jitter between rounds.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_infer.hosts import is_loopback
from edge_infer.inbox import Inbox
from edge_infer.outbox import Outbox
from edge_infer.sinks import SinkConfig
from edge_infer.sinks.mqtt_settings import MqttSettings, login
from edge_infer.sinks.receipts import Counted, Receipts
from edge_infer.uploader import CaptureFile, CaptureUploader

log = logging.getLogger(__name__)
ACTIVE_S = 1.0  # after a commit, the publisher looks for new rows every 10 ms for this long (else every 50 ms)
Options = SinkConfig  # the `[sink]` keys of type "mqtt": none of its own — the broker is in `[mqtt]`
PUBLISH_OVERHEAD = 64  # fixed header, topic length, packet id, properties: a safe upper bound


class Publisher(Counted, threading.Thread):
    """Drains the outbox to the broker until stopped; survives broker outages by reconnecting."""

    def __init__(
        self,
        settings: MqttSettings,
        open_outbox: Callable[[], Outbox],
        birth: Callable[[list[str]], bytes],
        will: Callable[[], bytes],
        uploader: CaptureUploader | None = None,
        commands: Inbox | None = None,
    ) -> None:
        """`open_outbox` opens this thread's own connection to the outbox (with the daemon's event builder,
        so a dead letter is announced as an event). With `commands`, `cmd/#` is subscribed and what arrives is
        queued there, bounded in size (the daemon's control thread runs it)."""
        super().__init__(name="publisher", daemon=True)
        self.settings = settings
        self._open_outbox = open_outbox
        self._birth = birth
        self._will = will
        self._stop_requested = threading.Event()
        self._wake = threading.Event()
        self._notified_at = 0.0  # monotonic time of the last `notify`
        self.active_s = ACTIVE_S
        self.connected = threading.Event()
        self.connect_failures = 0  # consecutive failed connection attempts
        self.receipts = Receipts()
        self.broker: str | None = None  # "host:port" while connected
        self._problems: dict[str, str] = {}
        self._status_dirty = threading.Event()
        self._snapshots: dict[str, bytes] = {}  # kind → newest unsent snapshot (health)
        self._retained: dict[str, bytes] = {}  # kind → latest value (image, state/<label>), re-sent on connect
        self._retained_dirty: set[str] = set()
        self._retained_lock = threading.Lock()
        self._uploader = uploader
        self._commands = commands
        self.discovery: list[tuple[str, bytes]] = []  # (topic, payload) published retained on every connect
        self._discovery_dirty = False
        self._upload_inflight: dict[int, CaptureFile] = {}  # paho mid → the capture file the chunk belongs to
        self._upload_left: dict[str, int] = {}  # capture file name → chunks not yet acknowledged
        self._idle = False  # the last look at the outbox found nothing to send
        self._inflight: dict[int, int] = {}  # paho mid → outbox seq
        self._last_sent = 0
        self._max_packet: int | None = None
        self._connack_failure: str | None = None
        self._tokens = 0.0
        self._tokens_at = time.monotonic()
        for host, _port in settings.hosts:
            if settings.username and not settings.tls and not is_loopback(host):
                log.warning("event=insecure_credentials broker=%s (password sent without TLS; set mqtt.tls)", host)
        if settings.tls_insecure:
            log.warning("event=tls_insecure (broker certificate hostname is NOT verified: mqtt.tls_insecure)")

    # ---- called from other threads -------------------------------------------------------------
    def notify(self) -> None:
        """Tell the publisher new rows were committed."""
        self._notified_at = time.monotonic()
        self._wake.set()

    def set_problem(self, name: str, text: str | None) -> None:
        """Raise (text) or clear (None) a condition shown in the retained status message."""
        changed = self._problems.get(name) != text
        if text is None:
            self._problems.pop(name, None)
        else:
            self._problems[name] = text
        if changed:
            self._status_dirty.set()

    def refresh(self, discovery: list[tuple[str, bytes]]) -> None:
        """The model changed: publish the retained status and Home Assistant discovery again."""
        self.discovery = discovery
        self._discovery_dirty = True
        self._status_dirty.set()

    def offer(self, kind: str, payload: bytes) -> None:
        """A snapshot (`health`): sent once at QoS 0 when connected, never stored — a newer one replaces it."""
        self._snapshots[kind] = payload
        self._wake.set()

    def retain(self, kind: str, payload: bytes) -> None:
        """The latest value of a retained topic (`image`, `state/<label>`): published retained at QoS 1 when
        connected and again after every reconnect, never stored; a newer value replaces one not yet sent."""
        with self._retained_lock:
            self._retained[kind] = payload
            self._retained_dirty.add(kind)
        self._wake.set()

    def _send_retained(self, client: mqtt.Client) -> None:
        with self._retained_lock:
            due = [(kind, self._retained[kind]) for kind in sorted(self._retained_dirty)]
            self._retained_dirty.clear()
        for kind, payload in due:
            client.publish(self.settings.topic(kind), payload, qos=1, retain=True)

    def uploading(self) -> bool:
        """Kept inputs are waiting to be uploaded or have chunks in flight."""
        return bool(self._upload_inflight) or (self._uploader is not None and self._uploader.pending())

    def stop(self, timeout: float = 10.0) -> None:
        """Publish `offline`, disconnect cleanly and end the thread."""
        self._stop_requested.set()
        self.join(timeout)

    def unreachable(self) -> bool:
        """True once a connection attempt has failed and no connection has been made since."""
        return self.connect_failures >= 1 and not self.connected.is_set()

    # ---- publisher thread ----------------------------------------------------------------------
    def run(self) -> None:
        outbox = self._open_outbox()
        hosts = self.settings.hosts
        delay = self.settings.reconnect_min_s
        attempt = 0
        try:
            while not self._stop_requested.is_set():
                host, port = hosts[attempt % len(hosts)]
                client = self._new_client()
                try:
                    client.connect(host, port, self.settings.keepalive, properties=self._connect_properties())
                except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS verification
                    self._connection_failed(host, port, f"{type(exc).__name__}: {exc}")
                else:
                    self.broker = f"{host}:{port}"
                    try:
                        established = self._session(client, outbox)
                    except Exception:  # never let the publisher thread die: log, drop the connection, retry
                        log.exception("event=publisher_error broker=%s (reconnecting)", self.broker)
                        established = False
                        self.connected.clear()
                        with contextlib.suppress(Exception):
                            client.disconnect()
                    if established:
                        delay = self.settings.reconnect_min_s
                        attempt -= 1  # a connection that worked: retry the same broker first
                    else:
                        self._connection_failed(host, port, self._connack_failure or "closed before CONNACK")
                    self.broker = None
                attempt += 1
                if self._stop_requested.is_set():
                    break
                if attempt % len(hosts) == 0:  # a whole round failed: back off, with full jitter
                    self._stop_requested.wait(random.uniform(self.settings.reconnect_min_s, delay))
                    delay = min(delay * 2, self.settings.reconnect_max_s)
        finally:
            outbox.close()

    def _connection_failed(self, host: str, port: int, why: str) -> None:
        self.connect_failures += 1
        if self.connect_failures <= len(self.settings.hosts) or self.connect_failures % 20 == 0:
            log.warning(
                "event=mqtt_unreachable broker=%s:%d attempts=%d error=%r (results stay queued)",
                host, port, self.connect_failures, why,
            )

    def _connect_properties(self) -> Any:
        """MQTT v5: tell the broker the largest packet this client takes (it then drops larger ones for us)."""
        if self.settings.protocol != "5":
            return None
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.MaximumPacketSize = self.settings.max_inbound_bytes + PUBLISH_OVERHEAD + 65536  # + the topic
        return props

    def _new_client(self) -> mqtt.Client:
        s = self.settings
        v5 = s.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
        )
        client.suppress_exceptions = True
        client.connect_timeout = 5.0
        login(client, s)
        client.will_set(s.topic("status"), self._will(), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_socket_open = _no_delay
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._inflight = {}
        self.receipts.clear()
        self._last_sent = 0
        self._max_packet = None
        self._connack_failure = None
        return client

    def _session(self, client: mqtt.Client, outbox: Outbox) -> bool:
        """Run one connection until it drops or a stop is requested. True if it was ever established."""
        established = False
        last_poll = 0.0
        connack_deadline = time.monotonic() + max(5.0, self.settings.keepalive)
        while True:
            # paho's wait on the socket cannot be cut short by `notify`: short while results come in (a new row
            # waits at most 10 ms to be sent), longer when idle (fewer wake-ups on a quiet device)
            active = self._inflight or time.monotonic() - self._notified_at < self.active_s
            rc = client.loop(timeout=0.01 if active else 0.05)
            if self.connected.is_set():
                established = True
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            self._flush_acks(outbox)
            if self._stop_requested.is_set():
                self._goodbye(client, outbox)
                break
            if not self.connected.is_set():
                if established or self._connack_failure or time.monotonic() > connack_deadline:
                    break
                continue
            if self._status_dirty.is_set():
                self._status_dirty.clear()
                client.publish(self.settings.topic("status"), self._birth(self.problems()), qos=1, retain=True)
                if self._discovery_dirty:
                    self._discovery_dirty = False
                    for topic, payload in self.discovery:
                        client.publish(topic, payload, qos=1, retain=True)
            self._send_snapshots(client)
            self._send_retained(client)
            now = time.monotonic()
            if self._wake.is_set() or (len(self._inflight) < self.settings.max_inflight and now - last_poll > 1.0):
                self._wake.clear()
                last_poll = now
                self._fill(client, outbox)
            if self._uploader is not None and self._idle and not self._inflight and not self._upload_inflight:
                self._upload(client)
        self.connected.clear()
        self._upload_inflight, self._upload_left = {}, {}  # a file cut off is sent again whole
        self._flush_acks(outbox)
        self._inflight = {}
        return established

    def _upload(self, client: mqtt.Client) -> None:
        """One kept input, all its chunks, at QoS 1 — only while the outbox has nothing waiting."""
        assert self._uploader is not None
        found = self._uploader.next_file()
        if found is None:
            return
        capture, chunks = found
        self._upload_left[capture.name] = len(chunks)
        for payload in chunks:
            info = client.publish(self.settings.topic("captures"), payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            self._upload_inflight[info.mid] = capture

    def _send_snapshots(self, client: mqtt.Client) -> None:
        for kind in list(self._snapshots):
            payload = self._snapshots.pop(kind, None)
            if payload is not None:
                client.publish(self.settings.topic(kind), payload, qos=0)

    def problems(self) -> list[str]:
        return [f"{name}: {text}" for name, text in sorted(self._problems.items())]

    def _room(self) -> int:
        room = self.settings.max_inflight - len(self._inflight)
        rate = self.settings.max_publish_rate
        if rate > 0:
            now = time.monotonic()
            self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)  # bucket of one second
            self._tokens_at = now
            room = min(room, int(self._tokens))
        return room

    def _fill(self, client: mqtt.Client, outbox: Outbox) -> None:
        room = self._room()
        if room <= 0:
            self._wake.set()  # window full or rate spent: try again on the next loop turn
            return
        rows = outbox.pending(self._last_sent, room)
        self._idle = not rows
        for row in rows:
            topic = self.settings.topic(row.kind)
            if self._max_packet and len(row.payload) + len(topic) + PUBLISH_OVERHEAD > self._max_packet:
                self._last_sent = row.seq
                self.receipts.refused.append((row.seq, f"payload of {len(row.payload)} bytes exceeds the broker's "
                                                f"maximum packet size ({self._max_packet})"))
                continue
            info = client.publish(topic, row.payload, qos=self.settings.qos)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.warning("event=publish_failed seq=%d rc=%s", row.seq, info.rc)
                return
            self._tokens -= 1
            if self.settings.qos == 0:
                self.receipts.taken.append(row.seq)  # QoS 0 has no acknowledgement: handed to the socket is all we get
            else:
                self._inflight[info.mid] = row.seq
            self._last_sent = row.seq
        if len(rows) == room:
            self._wake.set()  # there may be more: come back on the next loop turn

    def _flush_acks(self, outbox: Outbox) -> None:
        """Record acknowledgements and refusals. If the disk is full they wait here (already sent, so they
        are not sent again in this connection) and are retried on the next loop turn."""
        if self.receipts.apply(outbox):
            self._wake.set()  # the dead-letter event is a new row to publish

    def _goodbye(self, client: mqtt.Client, outbox: Outbox) -> None:
        """Clean stop: wait briefly for in-flight acks, publish retained `offline`, disconnect."""
        if not self.connected.is_set():
            return
        deadline = time.monotonic() + 2.0
        while self._inflight and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            self._flush_acks(outbox)
        self._send_snapshots(client)
        info = client.publish(self.settings.topic("status"), self._will(), qos=1, retain=True)
        while not info.is_published() and time.monotonic() < deadline + 1.0:
            if client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
        client.disconnect()
        client.loop(timeout=0.1)
        self._flush_acks(outbox)

    # ---- paho callbacks (run inside client.loop on this thread; must never raise) --------------------
    def _on_connect(self, client: mqtt.Client, _userdata, _flags, reason_code, props) -> None:
        try:
            if reason_code.is_failure:
                self._connack_failure = f"broker refused the connection: {reason_code}"
                log.error("event=mqtt_refused broker=%s reason=%r", self.broker, str(reason_code))
                return
            self._max_packet = getattr(props, "MaximumPacketSize", None) if props is not None else None
            log.info("event=mqtt_connected broker=%s after_failures=%d max_packet=%s", self.broker,
                     self.connect_failures, self._max_packet)
            self.connect_failures = 0
            self._status_dirty.clear()
            client.publish(self.settings.topic("status"), self._birth(self.problems()), qos=1, retain=True)
            for topic, payload in self.discovery:  # Home Assistant: retained, so it finds us after its restarts
                client.publish(topic, payload, qos=1, retain=True)
            with self._retained_lock:
                self._retained_dirty.update(self._retained)  # the latest values again: the broker may be new
            if self._commands is not None:  # a fresh session each connection: subscribe every time
                client.subscribe(self.settings.topic("cmd/#"), qos=1)
            self.connected.set()
            self._wake.set()
        except Exception:
            log.exception("event=callback_error callback=on_connect")

    def _on_message(self, _client, _userdata, message) -> None:
        try:
            if self._commands is None or message.retain:  # a retained command would run on every connect
                return
            self._commands.put(message.topic, message.payload)  # MQTT 3.1.1 has no packet limit: checked here
        except Exception:
            log.exception("event=callback_error callback=on_message")

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _props) -> None:
        try:
            if self.connected.is_set() and not self._stop_requested.is_set():
                log.warning("event=mqtt_disconnected broker=%s reason=%r inflight=%d", self.broker,
                            str(reason_code), len(self._inflight))
            self.connected.clear()
        except Exception:
            log.exception("event=callback_error callback=on_disconnect")

    def _on_publish(self, _client, _userdata, mid: int, reason_code, _props) -> None:
        try:
            capture = self._upload_inflight.pop(mid, None)
            if capture is not None:
                left = self._upload_left.get(capture.name, 0) - (0 if reason_code.is_failure else 1)
                self._upload_left[capture.name] = left
                if left == 0 and self._uploader is not None:
                    self._upload_left.pop(capture.name)
                    self._uploader.mark_done(capture)
                return
            seq = self._inflight.pop(mid, None)
            if seq is None:
                return  # status messages are not outbox rows
            if reason_code.is_failure:
                self.receipts.refused.append((seq, f"broker refused: {reason_code} (0x{reason_code.value:02x})"))
            else:
                self.receipts.taken.append(seq)
        except Exception:
            log.exception("event=callback_error callback=on_publish")


def _no_delay(_client: mqtt.Client, _userdata: object, sock: object) -> None:
    """Each message goes out when it is handed over: without TCP_NODELAY, a small packet sent while an earlier one
    is unacknowledged waits for the broker's delayed ACK — up to 40 ms at the end of every burst."""
    with contextlib.suppress(OSError, AttributeError):  # a websocket or test stand-in without socket options
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]
