"""Home Assistant MQTT discovery: retained `homeassistant/<component>/<node>/<object>/config` messages that make
the device appear with its result sensors, availability from `status`, and diagnostics from `health`.

Published on every connect (retained, so Home Assistant finds them after its own restarts too).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from edge_infer import __version__
from edge_infer.messages import state_kind
from edge_infer.tasks import task_for


def _result_entities(task: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(component, object id, fields) of the entities that show results: the task says which."""
    return task_for(task).entities()


DIAGNOSTICS: list[tuple[str, str, dict[str, Any]]] = [
    ("sensor", "uncertain_rate", {"name": "Uncertain rate", "unit_of_measurement": "%", "state_class": "measurement",
                                  "value_template": "{{ (value_json.uncertain_rate * 100) | round(1) }}"}),
    ("sensor", "results_per_s", {"name": "Results per second", "state_class": "measurement",
                                 "value_template": "{{ value_json.results_per_s }}"}),
    ("sensor", "outbox_backlog", {"name": "Outbox backlog", "state_class": "measurement",
                                  "value_template": "{{ value_json.backlog }}"}),
    ("sensor", "temperature", {"name": "SoC temperature", "device_class": "temperature", "unit_of_measurement": "°C",
                               "state_class": "measurement",
                               "value_template": "{{ value_json.thermal.temperature_c }}"}),
    ("sensor", "memory", {"name": "Memory (RSS)", "device_class": "data_size", "unit_of_measurement": "MiB",
                          "state_class": "measurement",
                          "value_template": "{{ (value_json.rss_bytes / 1048576) | round(1) }}"}),
    ("binary_sensor", "drift", {"name": "Input drift", "device_class": "problem",
                                "value_template": "{{ 'ON' if value_json.drift.state == 'drift' else 'OFF' }}"}),
    ("binary_sensor", "thermal_backoff", {"name": "Thermal back-off", "device_class": "heat",
                                          "value_template": "{{ 'ON' if value_json.thermal.level > 0 "
                                                            "else 'OFF' }}"}),
]


def _problem(name: str) -> str:
    """A template: ON while the retained status lists a `name: …` problem (plain Jinja: no HA-only tests)."""
    return ("{% for p in value_json.problems | default([]) if p.startswith('" + name + ": ') %}ON{% else %}OFF"
            "{% endfor %}")


# what users automate on: a condition the daemon raises in the retained status, changed the moment it changes
CONDITIONS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "source": ("binary_sensor", "source_problem", {"name": "Input lost", "device_class": "problem",
                                                   "value_template": _problem("source")}),
    "scene": ("binary_sensor", "scene_problem", {"name": "Camera view problem", "device_class": "problem",
                                                 "value_template": _problem("scene")}),
    "accelerator": ("binary_sensor", "accelerator_problem", {"name": "Accelerator lost", "device_class": "problem",
                                                             "value_template": _problem("accelerator")}),
}
SCENE_CONDITION = ("sensor", "scene_condition", {
    "name": "Camera view", "icon": "mdi:cctv",
    "value_template": "{% for p in value_json.problems | default([]) if p.startswith('scene: ') %}{{ p[7:] }}"
                      "{% else %}ok{% endfor %}"})


ORIGIN = {"name": "edge-infer", "sw_version": __version__}
BUTTONS = {"reload": ("Reload config", "config"), "snapshot": ("Publish a snapshot", None)}


@dataclass(frozen=True)
class Announce:
    """What a device has beyond its results and diagnostics: the conditions it can raise (`CONDITIONS`), the
    labels whose debounced state it publishes (`state/<label>`), the picture (`image`), the commands a button may
    send unsigned (`[commands] auth = "acl"`), and its health interval (diagnostics expire after three)."""

    conditions: tuple[str, ...] = ()
    state_labels: tuple[str, ...] = ()
    image: bool = False
    buttons: tuple[str, ...] = ()
    health_interval: float = 0.0


def _extras(base: str, announce: Announce) -> list[tuple[str, str, dict[str, Any]]]:
    """The entities without a JSON state: per-label states, the picture, the command buttons."""
    out: list[tuple[str, str, dict[str, Any]]] = [
        ("binary_sensor", f"state_{state_kind(label)[6:]}", {
            "name": label, "state_topic": f"{base}/{state_kind(label)}", "payload_on": "ON", "payload_off": "OFF"})
        for label in announce.state_labels]
    if announce.image:
        out.append(("image", "image", {"name": "Latest frame", "image_topic": f"{base}/image",
                                       "content_type": "image/jpeg"}))
    for command in announce.buttons:
        name, category = BUTTONS[command]
        out.append(("button", f"cmd_{command}", {"name": name, "command_topic": f"{base}/cmd/{command}",
                                                  "payload_press": '{"args": {}}',
                                                  **({"entity_category": category} if category else {})}))
    return out


def discovery_messages(discovery_prefix: str, topic_prefix: str, device_id: str, task: str,
                       model: dict[str, str], announce: Announce = Announce()) -> list[tuple[str, bytes]]:
    """(topic, payload) for every entity; publish retained."""
    base = f"{topic_prefix}/{device_id}"
    node = "".join(c if c.isalnum() or c in "_-" else "_" for c in device_id)
    device = {"identifiers": [f"edge_infer_{node}"], "name": f"edge-infer {device_id}", "manufacturer": "edge-infer",
              "model": f"{model['name']} {model['version']}", "sw_version": __version__}
    availability = {"availability_topic": f"{base}/status", "availability_template": "{{ value_json.state }}",
                    "payload_available": "online", "payload_not_available": "offline"}
    out = []
    conditions = announce.conditions
    watched = [CONDITIONS[c] for c in conditions] + ([SCENE_CONDITION] if "scene" in conditions else [])
    for entities, state_topic, category in ((_result_entities(task), f"{base}/results", None),
                                            (DIAGNOSTICS, f"{base}/health", "diagnostic"),
                                            (watched, f"{base}/status", None),
                                            (_extras(base, announce), None, None)):
        for component, object_id, fields in entities:
            doc = {**fields, "unique_id": f"edge_infer_{node}_{object_id}", **availability, "device": device,
                   "origin": ORIGIN}
            if state_topic:
                doc["state_topic"] = state_topic
            if category:
                doc["entity_category"] = category
            if state_topic and state_topic.endswith("/health") and announce.health_interval > 0:
                doc["expire_after"] = max(1, math.ceil(3 * announce.health_interval))
            out.append((f"{discovery_prefix}/{component}/{node}/{object_id}/config",
                        json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()))
    return out
