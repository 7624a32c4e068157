"""A real MQTT subscriber (paho 2.x) that records everything under a topic filter."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool

    @property
    def kind(self) -> str:
        """The device topic's last segment (`results`, `events`, …); everything under `/cmd/` — inbound commands,
        whatever their name ends with (a fuzzer's `cmd/x/events`) — is `cmd`."""
        return "cmd" if "/cmd/" in self.topic else self.topic.rsplit("/", 1)[-1]

    def json(self) -> dict[str, Any]:
        return json.loads(self.payload)


class Subscriber:
    """`session=NAME` makes it a persistent session (clean_start off, 1 h expiry) that reconnects by itself:
    with a persistent broker, nothing published while it is away is lost to it."""

    def __init__(self, port: int, topic: str = "#", session: str | None = None, qos: int = 1, **tls: Any) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=session or "", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=qos)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        if tls:
            self.client.tls_set(**tls)
        properties = None
        if session:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
            self.client.reconnect_delay_set(0.05, 0.5)
        self.client.connect("127.0.0.1", port, clean_start=not session, properties=properties)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("subscriber did not get SUBACK")

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def all(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def of_kind(self, kind: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.kind == kind]

    def went_offline(self, runs: int = 1) -> bool:
        """At least `runs` daemon runs said `offline` while this subscriber listened (not a retained copy from
        before): the positive witness that a run published everything it was going to, in order."""
        with self._lock:
            return sum(1 for m in self.messages if m.kind == "status" and not m.retain
                       and json.loads(m.payload).get("state") == "offline") >= runs

    def wait_for(self, predicate: Callable[[Subscriber], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return predicate(self)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
