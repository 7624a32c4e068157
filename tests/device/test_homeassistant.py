"""Home Assistant discovery: the retained config messages carry what Home Assistant's MQTT integration requires,
and their templates, rendered with Jinja2 (what Home Assistant uses) against real results and health, give the
states Home Assistant expects."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jinja2.sandbox import SandboxedEnvironment

from tests.conftest import DIGITS_INT8, REPO, write_config
from tests.device.faults import make_frames, wait_until
from tests.helpers.broker import Mosquitto
from tests.helpers.subscriber import Subscriber

TOPIC = re.compile(r"^homeassistant/(sensor|binary_sensor)/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/config$")
DEVICE_CLASSES = {"sensor": {"temperature", "timestamp", "data_size", None},
                  "binary_sensor": {"problem", "heat", None}}
# units Home Assistant accepts for a device class (MB and MiB differ: RSS is counted in MiB)
UNITS = {"temperature": {"°C", "°F"}, "data_size": {"B", "kB", "KiB", "MB", "MiB", "GB", "GiB"}}
KNOWN_KEYS = {"name", "icon", "value_template", "unit_of_measurement", "state_class", "device_class", "unique_id",
              "state_topic", "availability_topic", "availability_template", "payload_available",
              "payload_not_available", "device", "entity_category", "origin", "expire_after"}


def check_discovery(topic: str, doc: dict) -> str:
    """The rules Home Assistant's MQTT discovery applies to a sensor / binary_sensor config; returns the
    component."""
    match = TOPIC.match(topic)
    assert match, topic
    component = match.group(1)
    assert set(doc) <= KNOWN_KEYS, set(doc) - KNOWN_KEYS
    assert isinstance(doc["state_topic"], str) and doc["state_topic"]  # required
    assert isinstance(doc["unique_id"], str) and doc["unique_id"]
    device = doc["device"]  # an entity with a unique_id belongs to a device with identifiers (a list)
    assert isinstance(device["identifiers"], list) and device["identifiers"] and device["name"]
    assert doc["payload_available"] == "online" and doc["payload_not_available"] == "offline"
    assert doc.get("entity_category") in (None, "diagnostic", "config")
    assert doc.get("device_class") in DEVICE_CLASSES[component]
    assert doc.get("state_class") in (None, "measurement", "total", "total_increasing")
    if doc.get("device_class") in UNITS:
        assert doc["unit_of_measurement"] in UNITS[doc["device_class"]]
    assert doc["origin"]["name"] == "edge-infer" and doc["origin"]["sw_version"]
    assert doc.get("expire_after") is None or (doc["state_topic"].endswith("/health") and doc["expire_after"] >= 1)
    return component


def render(template: str, payload: dict) -> str:
    env = SandboxedEnvironment()
    return env.from_string(template).render(value_json=payload).strip()


def test_discovery_makes_valid_entities_whose_templates_read_real_messages(tmp_path: Path,
                                                                           broker: Mosquitto) -> None:
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=broker.port)
    cfg.write_text(cfg.read_text() + "\n[homeassistant]\ndiscovery = true\n\n[health]\ninterval = 0.3\n")
    make_frames(tmp_path / "in", 5)
    sub = Subscriber(broker.port, "#")
    proc = subprocess.run([sys.executable, "-m", "edge_infer", "run", "--config", str(cfg), "--once"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert wait_until(lambda: sub.of_kind("health") and len(sub.of_kind("results")) >= 5, 20)
    later = Subscriber(broker.port, "homeassistant/#")  # Home Assistant starting after the device: retained
    assert wait_until(lambda: len(later.messages) >= 8, 10)
    configs = {m.topic: m for m in later.messages}
    assert all(m.retain for m in configs.values())
    assert set(configs) == {m.topic for m in sub.messages if m.topic.startswith("homeassistant/")}
    result, health = sub.of_kind("results")[-1].json(), sub.of_kind("health")[-1].json()
    status = next(m.json() for m in sub.messages if m.topic.endswith("/status"))
    unique_ids = set()
    for topic, message in configs.items():
        doc = json.loads(message.payload)
        component = check_discovery(topic, doc)
        unique_ids.add(doc["unique_id"])
        assert render(doc["availability_template"], status) == "online"
        payload = result if doc["state_topic"].endswith("/results") else health
        assert doc["state_topic"] == f"edge/test-pi/{'results' if payload is result else 'health'}"
        state = render(doc["value_template"], payload)
        if component == "binary_sensor":
            assert state in ("ON", "OFF"), (topic, state)
        elif doc.get("state_class") == "measurement" and state != "None":  # "None": the state is unknown
            float(state)  # (no thermal zone here); anything else must be a number, or Home Assistant rejects it
        else:
            assert state, topic
    assert len(unique_ids) == len(configs)
    memory = json.loads(configs["homeassistant/sensor/test-pi/memory/config"].payload)
    assert memory["unit_of_measurement"] == "MiB" and memory["expire_after"] == 1  # 3 × the 0.3 s interval
    assert float(render(memory["value_template"], health)) == round(health["rss_bytes"] / 2**20, 1)
    label = json.loads(configs["homeassistant/sensor/test-pi/label/config"].payload)
    assert render(label["value_template"], result) == result["result"]["label"]


@pytest.mark.parametrize("task", ["detection", "regression", "anomaly", "raw"])
def test_every_task_has_result_entities(task: str) -> None:
    from edge_infer.homeassistant import discovery_messages

    messages = discovery_messages("homeassistant", "edge", "pi", task, {"name": "m", "version": "1"})
    results = [json.loads(p) for t, p in messages if json.loads(p)["state_topic"].endswith("/results")]
    assert results
    for topic, payload in messages:
        check_discovery(topic, json.loads(payload))


def test_the_conditions_users_automate_on_have_their_own_entities(tmp_path: Path, broker: Mosquitto) -> None:
    """A snapshot camera that goes away and comes back, with the camera baseline on: discovery announces
    `Input lost`, `Camera view problem` and `Camera view`, read from the retained status; rendered against the
    real status messages, `Input lost` turns ON while the camera is down and OFF when it is back."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from edge_infer.app.daemon import Daemon
    from edge_infer.config import load_config
    from tests.device.test_source_reconnect import jpeg
    from tests.helpers.broker import free_port

    class Snapshot(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = jpeg(int(time.time() * 10))
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    port = free_port()

    def serve() -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", port), Snapshot)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    server = serve()
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path, state=tmp_path / "s",
                       port=broker.port)
    text = cfg.read_text()
    start, end = text.index("[source]"), text.index("[mqtt]")
    cfg.write_text(text[:start] + f'[source]\ntype = "http"\nname = "gate-cam"\nurl = "http://127.0.0.1:{port}/s.jpg"'
                   '\ninterval = 0.1\ntimeout = 1\n\n[gate]\nbaseline = true\nbaseline_warmup = 10\n\n'
                   '[homeassistant]\ndiscovery = true\n\n' + text[end:])
    sub = Subscriber(broker.port, "#")
    daemon = Daemon(load_config(cfg))
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()

    def statuses() -> list[dict]:
        return [m.json() for m in sub.messages if m.topic == "edge/test-pi/status"]

    def entity(object_id: str, component: str = "binary_sensor") -> dict:
        topic = f"homeassistant/{component}/test-pi/{object_id}/config"
        return json.loads(next(m.payload for m in sub.messages if m.topic == topic))

    try:
        assert wait_until(lambda: len(sub.of_kind("results")) >= 3, 60)
        lost, scene = entity("source_problem"), entity("scene_problem")
        view = entity("scene_condition", "sensor")
        check_discovery("homeassistant/binary_sensor/test-pi/source_problem/config", lost)
        check_discovery("homeassistant/binary_sensor/test-pi/scene_problem/config", scene)
        check_discovery("homeassistant/sensor/test-pi/scene_condition/config", view)
        assert {d["state_topic"] for d in (lost, scene, view)} == {"edge/test-pi/status"}
        now = statuses()[-1]
        assert (render(lost["value_template"], now), render(scene["value_template"], now),
                render(view["value_template"], now)) == ("OFF", "OFF", "ok")
        server.shutdown()
        server.server_close()
        assert wait_until(lambda: render(lost["value_template"], statuses()[-1]) == "ON", 30)
        assert any(p.startswith("source: gate-cam") for p in statuses()[-1]["problems"])
        server = serve()
        assert wait_until(lambda: render(lost["value_template"], statuses()[-1]) == "OFF", 30)
    finally:
        daemon.stop_event.set()
        runner.join(30)
        server.shutdown()
        server.server_close()
    fogged = {"problems": ["outbox: the disk is full", "scene: fogged, obstructed"]}
    assert render(scene["value_template"], fogged) == "ON" and render(view["value_template"], fogged) == \
        "fogged, obstructed"
    assert render(lost["value_template"], fogged) == "OFF"
