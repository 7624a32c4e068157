"""How the device reaches its broker: the `[mqtt]` table as settings (hosts in turn, login, TLS), the password
from the environment / a systemd credential / a file, and `probe` — one login as the device would, for `check`."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_infer.config import ConfigError
from edge_infer.secrets import SecretUnreadable, read_secret
from edge_infer.sections import MqttConfig

PASSWORD_ENV = "EDGE_INFER_MQTT_PASSWORD"
CREDENTIAL_NAME = "mqtt_password"  # systemd LoadCredential=mqtt_password:/etc/edge-infer/mqtt_password


@dataclass(frozen=True)
class MqttSettings:
    hosts: list[tuple[str, int]]
    topic_prefix: str
    device_id: str
    client_id: str
    keepalive: int = 30
    qos: int = 1
    protocol: str = "5"
    max_inflight: int = 32
    max_publish_rate: float = 0.0  # messages per second while draining; 0 = unlimited
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    max_inbound_bytes: int = 256 * 1024  # MQTT v5 Maximum Packet Size: the broker drops anything larger for us

    def topic(self, kind: str) -> str:
        return f"{self.topic_prefix}/{self.device_id}/{kind}"


def read_password(password_file: str | None) -> str | None:
    """The broker password (`edge_infer.secrets`: environment, systemd credential, `password_file`)."""
    try:
        return read_secret(PASSWORD_ENV, CREDENTIAL_NAME, password_file)
    except SecretUnreadable as exc:
        raise ConfigError(f"MQTT password: {exc}") from None


def login(client: mqtt.Client, s: MqttSettings) -> None:
    """The device's TLS and credentials on a client (the daemon's connection, and `check`'s probe)."""
    if s.tls:
        client.tls_set(ca_certs=s.ca_file, certfile=s.cert_file, keyfile=s.key_file, cert_reqs=ssl.CERT_REQUIRED)
        client.tls_insecure_set(s.tls_insecure)
    if s.username:
        client.username_pw_set(s.username, s.password)


def probe(s: MqttSettings, host: str, port: int, timeout: float = 5.0) -> str | None:
    """Log in to one broker as the device would (its protocol, TLS and credentials, under a client id of its
    own so a running daemon is not disconnected) and leave: None when the broker accepted, else why not."""
    import threading
    import uuid

    v5 = s.protocol == "5"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-infer-check-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    answered = threading.Event()
    outcome: list[Any] = []

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        outcome.append(reason)
        answered.set()

    client.on_connect = on_connect
    try:
        login(client, s)
        client.connect(host, port, keepalive=10)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    client.loop_start()
    try:
        if not answered.wait(timeout):
            return f"no MQTT answer within {timeout:g} s"
        reason = outcome[0]
        return f"refused: {reason}" if getattr(reason, "is_failure", False) else None
    finally:
        client.disconnect()
        client.loop_stop()


def settings_from_config(mqtt_cfg: MqttConfig, device_id: str, max_inbound_bytes: int = 256 * 1024) -> MqttSettings:
    """Build publisher settings from a validated `[mqtt]` table (reads the password, never logs it)."""
    hosts = []
    for item in mqtt_cfg.hosts:
        host, _, port = item.rpartition(":")
        hosts.append((host.strip("[]"), int(port)))
    return MqttSettings(
        hosts=hosts,
        topic_prefix=mqtt_cfg.topic_prefix,
        device_id=device_id,
        client_id=mqtt_cfg.client_id,
        keepalive=mqtt_cfg.keepalive,
        qos=mqtt_cfg.qos,
        protocol=mqtt_cfg.protocol,
        max_inflight=mqtt_cfg.max_inflight,
        max_publish_rate=float(mqtt_cfg.max_publish_rate),
        username=mqtt_cfg.username,
        password=read_password(mqtt_cfg.password_file) if mqtt_cfg.username else None,
        tls=mqtt_cfg.tls,
        ca_file=mqtt_cfg.ca_file,
        cert_file=mqtt_cfg.cert_file,
        key_file=mqtt_cfg.key_file,
        tls_insecure=mqtt_cfg.tls_insecure,
        reconnect_max_s=float(mqtt_cfg.reconnect_max),
        max_inbound_bytes=max_inbound_bytes,
    )

