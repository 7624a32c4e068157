"""Home Assistant MQTT discovery: retained `homeassistant/<component>/<node>/<object>/config` messages that make
the device appear with its result sensors, availability from `status`, and diagnostics from `health`.

Published on every connect (retained, so Home Assistant finds them after its own restarts too).
"""

from __future__ import annotations

import json
import math
from typing import Any

from edge_infer import __version__
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


def discovery_messages(discovery_prefix: str, topic_prefix: str, device_id: str, task: str,
                       model: dict[str, str], conditions: tuple[str, ...] = (),
                       health_interval: float = 0.0) -> list[tuple[str, bytes]]:
    """(topic, payload) for every entity; publish retained. `conditions`: which of `CONDITIONS` this daemon
    can raise (a live source that reconnects, the camera baseline, an accelerator with a CPU fallback). The
    diagnostics expire (shown unavailable) after three missed `health` messages."""
    base = f"{topic_prefix}/{device_id}"
    node = "".join(c if c.isalnum() or c in "_-" else "_" for c in device_id)
    device = {"identifiers": [f"edge_infer_{node}"], "name": f"edge-infer {device_id}", "manufacturer": "edge-infer",
              "model": f"{model['name']} {model['version']}", "sw_version": __version__}
    availability = {"availability_topic": f"{base}/status", "availability_template": "{{ value_json.state }}",
                    "payload_available": "online", "payload_not_available": "offline"}
    out = []
    watched = [CONDITIONS[c] for c in conditions] + ([SCENE_CONDITION] if "scene" in conditions else [])
    for entities, state_topic, category in ((_result_entities(task), f"{base}/results", None),
                                            (DIAGNOSTICS, f"{base}/health", "diagnostic"),
                                            (watched, f"{base}/status", None)):
        for component, object_id, fields in entities:
            doc = {**fields, "unique_id": f"edge_infer_{node}_{object_id}",
                   "state_topic": state_topic, **availability, "device": device, "origin": ORIGIN}
            if category:
                doc["entity_category"] = category
            if state_topic.endswith("/health") and health_interval > 0:
                doc["expire_after"] = max(1, math.ceil(3 * health_interval))
            out.append((f"{discovery_prefix}/{component}/{node}/{object_id}/config",
                        json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()))
    return out
