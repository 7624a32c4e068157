"""The operator's side of `/cmd/#`: send a (signed) command or a bundle to a device and wait for its answer on
`/events`. Used by `edge-infer command` and `edge-infer push-model`."""

from __future__ import annotations

import base64
import contextlib
import json
import queue
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_infer.control.transfer import header_args
from edge_infer.signing import load_private_key, sign_command

ANSWERS = ("command_done", "command_failed")


@dataclass(frozen=True)
class Broker:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None


def client_for(broker: Broker, role: str) -> mqtt.Client:
    """An MQTT v5 client with the broker's login and TLS (not yet connected): one way for every command."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-infer-{role}-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv5)
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set(ca_certs=broker.ca_file)
    return client


class Remote:
    """One connection to the broker, subscribed to a device's events."""

    def __init__(self, broker: Broker, prefix: str, device: str) -> None:
        self.base = f"{prefix}/{device}"
        self.device = device
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client = client_for(broker, "remote")
        subscribed = queue.Queue[int]()
        self.client.on_subscribe = lambda *_a: subscribed.put(1)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, 30)
        self.client.loop_start()
        self.client.subscribe(f"{self.base}/events", qos=1)
        try:
            subscribed.get(timeout=10)  # events answering what we send must not be missed
        except queue.Empty:
            self.close()
            raise TimeoutError("the broker did not confirm the subscription to the device's events") from None

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        with contextlib.suppress(ValueError):
            self.events.put(json.loads(message.payload))

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(f"{self.base}/{topic}", payload, qos=1)
        info.wait_for_publish(timeout=30)

    def wait(self, command_id: str, timeout: float, also: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Events until the answer to `command_id` (and, if `also` names events, until one of them); [] on
        timeout."""
        seen: list[dict[str, Any]] = []
        answered = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            name, details = event.get("event"), event.get("details", {})
            if name in ANSWERS and details.get("id") == command_id:
                seen.append(event)
                answered = True
                if name == "command_failed" or not also:
                    return seen
            elif answered or name in also:
                seen.append(event)
                if name in also:
                    return seen
            else:
                seen.append(event)
        return seen if answered else []

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def command_payload(command: str, device: str, args: dict[str, Any], key: Path | None) -> tuple[str, bytes]:
    """The id and payload of a command: signed with `key` (the fleet's private key), or plain for ACL mode."""
    command_id = uuid.uuid4().hex[:16]
    if key is None:
        return command_id, json.dumps({"id": command_id, "args": args}).encode()
    body = {"command": command, "device": device, "id": command_id, "issued": time.time(), "args": args}
    return command_id, sign_command(body, load_private_key(key))


def bundle_chunks(bundle: Path, chunk_bytes: int, key: Path, device: str) -> tuple[str, list[bytes]]:
    """A bundle as `update-model` payloads: the transfer header signed with `key` (the fleet's private key),
    then the chunks it lists (transfer id, payloads)."""
    transfer = uuid.uuid4().hex[:16]
    args, parts = header_args(bundle, chunk_bytes, transfer)
    body = {"command": "update-model", "device": device, "id": transfer, "issued": time.time(), "args": args}
    payloads = [sign_command(body, load_private_key(key))]
    for index, part in enumerate(parts):
        payloads.append(json.dumps({"transfer": transfer, "index": index,
                                    "data": base64.b64encode(part).decode()}).encode())
    return transfer, payloads
