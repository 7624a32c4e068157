"""Outbox → MQTT. One thread owns every paho call.

The publisher only hands paho what it can send now (while connected, at most `max_inflight` unacknowledged),
and deletes an outbox row only when the broker acknowledged it without a failure reason code. Each connection
gets a fresh paho client, so nothing queued inside paho outlives a connection: after a reconnect the outbox,
not paho, decides what is sent again (at-least-once; subscribers drop duplicates by `msg_id`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edge_infer.outbox import Outbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int
    topic_prefix: str
    device_id: str
    client_id: str
    keepalive: int = 30
    qos: int = 1
    protocol: str = "5"
    max_inflight: int = 32
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0

    def topic(self, kind: str) -> str:
        return f"{self.topic_prefix}/{self.device_id}/{kind}"


class Publisher(threading.Thread):
    """Drains the outbox to the broker until stopped; survives broker outages by reconnecting."""

    def __init__(
        self,
        settings: MqttSettings,
        outbox_path: str,
        birth: Callable[[], bytes],
        will: Callable[[], bytes],
        durability: str = "full",
    ) -> None:
        super().__init__(name="publisher", daemon=True)
        self.settings = settings
        self._outbox_path = outbox_path
        self._durability = durability
        self._birth = birth
        self._will = will
        self._stop_requested = threading.Event()
        self._wake = threading.Event()
        self.connected = threading.Event()
        self.connect_failures = 0  # consecutive failed connection attempts
        self.published = 0
        self.dead_lettered = 0
        self._inflight: dict[int, int] = {}  # paho mid → outbox seq
        self._acked: list[int] = []
        self._refused: list[tuple[int, str]] = []
        self._last_sent = 0
        self._connack_failure: str | None = None

    # ---- called from other threads -------------------------------------------------------------
    def notify(self) -> None:
        """Tell the publisher new rows were committed."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Publish `offline`, disconnect cleanly and end the thread."""
        self._stop_requested.set()
        self.join(timeout)

    def unreachable(self) -> bool:
        """True once a connection attempt has failed and no connection has been made since."""
        return self.connect_failures >= 1 and not self.connected.is_set()

    # ---- publisher thread ----------------------------------------------------------------------
    def run(self) -> None:
        outbox = Outbox(self._outbox_path, self._durability)
        delay = self.settings.reconnect_min_s
        try:
            while not self._stop_requested.is_set():
                client = self._new_client()
                try:
                    client.connect(self.settings.host, self.settings.port, self.settings.keepalive)
                except (OSError, ValueError) as exc:
                    self._connection_failed(f"{type(exc).__name__}: {exc}")
                else:
                    was_connected = self._session(client, outbox)
                    if was_connected:
                        delay = self.settings.reconnect_min_s
                    else:
                        self._connection_failed(self._connack_failure or "connection closed before CONNACK")
                if self._stop_requested.is_set():
                    break
                # exponential back-off with full jitter, so a fleet does not reconnect in lockstep
                self._stop_requested.wait(random.uniform(self.settings.reconnect_min_s, delay))
                delay = min(delay * 2, self.settings.reconnect_max_s)
        finally:
            outbox.close()

    def _connection_failed(self, why: str) -> None:
        self.connect_failures += 1
        if self.connect_failures == 1 or self.connect_failures % 20 == 0:
            log.warning(
                "event=mqtt_unreachable broker=%s:%d attempts=%d error=%r (results stay queued)",
                self.settings.host,
                self.settings.port,
                self.connect_failures,
                why,
            )

    def _new_client(self) -> mqtt.Client:
        v5 = self.settings.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.settings.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
        )
        client.will_set(self.settings.topic("status"), self._will(), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        self._inflight = {}
        self._acked = []
        self._refused = []
        self._last_sent = 0
        self._connack_failure = None
        return client

    def _session(self, client: mqtt.Client, outbox: Outbox) -> bool:
        """Run one connection until it drops or a stop is requested. True if it was ever established."""
        established = False
        last_poll = 0.0
        connack_deadline = time.monotonic() + max(5.0, self.settings.keepalive)
        while True:
            busy = bool(self._inflight)
            rc = client.loop(timeout=0.01 if busy else 0.05)
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
            now = time.monotonic()
            if self._wake.is_set() or (
                len(self._inflight) < self.settings.max_inflight and now - last_poll > 1.0
            ):
                self._wake.clear()
                last_poll = now
                self._fill(client, outbox)
        self.connected.clear()
        self._flush_acks(outbox)
        self._inflight = {}
        return established

    def _fill(self, client: mqtt.Client, outbox: Outbox) -> None:
        room = self.settings.max_inflight - len(self._inflight)
        if room <= 0:
            return
        rows = outbox.pending(self._last_sent, room)
        for row in rows:
            info = client.publish(self.settings.topic(row.kind), row.payload, qos=self.settings.qos)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.warning("event=publish_failed seq=%d rc=%s", row.seq, info.rc)
                return
            self._inflight[info.mid] = row.seq
            self._last_sent = row.seq
        if len(rows) == room:
            self._wake.set()  # there may be more: come back on the next loop turn

    def _flush_acks(self, outbox: Outbox) -> None:
        while self._refused:
            seq, reason = self._refused.pop()
            outbox.dead_letter(seq, reason)
            self.dead_lettered += 1
            log.error("event=dead_letter seq=%d reason=%r (the broker refused it; kept in dead_letters)", seq, reason)
        if self._acked:
            acked, self._acked = self._acked, []
            outbox.delete(acked)
            self.published += len(acked)

    def _goodbye(self, client: mqtt.Client, outbox: Outbox) -> None:
        """Clean stop: wait briefly for in-flight acks, publish retained `offline`, disconnect."""
        if not self.connected.is_set():
            return
        deadline = time.monotonic() + 2.0
        while self._inflight and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            self._flush_acks(outbox)
        info = client.publish(self.settings.topic("status"), self._will(), qos=1, retain=True)
        while not info.is_published() and time.monotonic() < deadline + 1.0:
            if client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
        client.disconnect()
        client.loop(timeout=0.1)
        self._flush_acks(outbox)

    # ---- paho callbacks (run inside client.loop on this thread; must never raise) --------------------
    def _on_connect(self, client: mqtt.Client, _userdata, _flags, reason_code, _props) -> None:
        try:
            if reason_code.is_failure:
                self._connack_failure = f"broker refused the connection: {reason_code}"
                log.error("event=mqtt_refused reason=%r", str(reason_code))
                return
            if self.connect_failures:
                log.info("event=mqtt_connected broker=%s:%d after_attempts=%d", self.settings.host,
                         self.settings.port, self.connect_failures)
            else:
                log.info("event=mqtt_connected broker=%s:%d", self.settings.host, self.settings.port)
            self.connect_failures = 0
            client.publish(self.settings.topic("status"), self._birth(), qos=1, retain=True)
            self.connected.set()
            self._wake.set()
        except Exception:
            log.exception("event=callback_error callback=on_connect")

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _props) -> None:
        try:
            if self.connected.is_set() and not self._stop_requested.is_set():
                log.warning("event=mqtt_disconnected reason=%r inflight=%d", str(reason_code), len(self._inflight))
            self.connected.clear()
        except Exception:
            log.exception("event=callback_error callback=on_disconnect")

    def _on_publish(self, _client, _userdata, mid: int, reason_code, _props) -> None:
        try:
            seq = self._inflight.pop(mid, None)
            if seq is None:
                return  # status messages are not outbox rows
            if reason_code.is_failure:
                self._refused.append((seq, str(reason_code)))
            else:
                self._acked.append(seq)
        except Exception:
            log.exception("event=callback_error callback=on_publish")
