"""Publisher options through the public surface: MQTT 3.1.1, credentials, the audit command."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge_infer.sinks.mqtt import Publisher
from edge_infer.sinks.mqtt_settings import CREDENTIAL_NAME, PASSWORD_ENV, MqttSettings, read_password
from tests.conftest import DIGITS_INT8, REPO, run_cli, write_config
from tests.device.faults import make_frames, wait_until
from tests.helpers.broker import Mosquitto
from tests.helpers.subscriber import Subscriber


def test_mqtt_311_delivers_too(tmp_path: Path, broker: Mosquitto) -> None:
    make_frames(tmp_path / "in", 10)
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=broker.port, mqtt='protocol = "3.1.1"')
    sub = Subscriber(broker.port, "edge/test-pi/results")
    proc = run_cli("run", "--config", str(cfg), "--once")
    assert proc.returncode == 0 and "published 10" in proc.stdout, proc.stderr
    assert wait_until(lambda: len(sub.of_kind("results")) == 10, 10)
    sub.close()


def test_audit_command_reports_a_complete_stream(tmp_path: Path, broker: Mosquitto) -> None:
    make_frames(tmp_path / "in", 25)
    (tmp_path / "in" / "bad.png").write_bytes(b"nope")
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=broker.port)
    auditor = subprocess.Popen(
        [sys.executable, "-m", "edge_infer", "audit", "--broker", f"127.0.0.1:{broker.port}", "--idle", "2",
         "--duration", "60"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert wait_until(lambda: _connected(broker), 10)
        assert run_cli("run", "--config", str(cfg), "--once").returncode == 0
        out, err = auditor.communicate(timeout=60)
    finally:
        auditor.kill()
    assert auditor.returncode == 0, out + err
    assert "test-pi: 26 unique messages (seq 1..26)" in out and "0 missing" in out and out.strip().endswith("complete")


def _connected(broker: Mosquitto) -> bool:
    return broker.log.exists() and "New client connected" in broker.log.read_text()


def test_password_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pw_file = tmp_path / "pw"
    pw_file.write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert read_password(str(pw_file)) == "from-file"
    (creds / CREDENTIAL_NAME).write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_password(str(pw_file)) == "from-systemd"
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    assert read_password(str(pw_file)) == "from-env"


def test_credentials_without_tls_to_a_remote_broker_warn_and_are_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Checked when the publisher is built — nothing connects anywhere (the remote host is never contacted)."""
    settings = MqttSettings(hosts=[("broker.example.net", 1883), ("127.0.0.1", 1883)], topic_prefix="edge",
                            device_id="pi", client_id="c", username="pi", password="s3cret-value")
    with caplog.at_level(logging.DEBUG):
        Publisher(settings, lambda: None, birth=lambda _p: b"", will=lambda: b"")  # type: ignore[arg-type]
    warnings = [r.getMessage() for r in caplog.records if "insecure_credentials" in r.getMessage()]
    assert len(warnings) == 1 and "broker=broker.example.net (password sent without TLS" in warnings[0]
    assert "s3cret-value" not in caplog.text and "s3cret-value" not in repr(settings)


def test_the_publishers_connection_sends_each_message_without_delay(broker: Mosquitto) -> None:
    """TCP_NODELAY on the connection to the broker: without it a small PUBLISH sent while an earlier one is
    unacknowledged waits for the broker's delayed ACK (up to 40 ms at the end of every burst of results)."""
    settings = MqttSettings(hosts=[("127.0.0.1", broker.port)], topic_prefix="edge", device_id="pi", client_id="c")
    publisher = Publisher(settings, lambda: None, birth=lambda _p: b"", will=lambda: b"")  # type: ignore[arg-type]
    client = publisher._new_client()
    client.connect("127.0.0.1", broker.port)
    try:
        sock = client.socket()
        assert sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        client.disconnect()
