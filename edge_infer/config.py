"""The device config (TOML). Validated on load: every error names the file, the key and what was expected.

Relative paths are resolved against the config file's folder, so a config and its bundle travel together.
"""

from __future__ import annotations

import difflib
import importlib
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_infer.delegates import DEFAULT as DEFAULT_DELEGATE
from edge_infer.delegates import NAMES as DELEGATES
from edge_infer.options import Check, Field
from edge_infer.options import between as _between
from edge_infer.sinks import TYPES as SINK_TYPES
from edge_infer.sources import TYPES as SOURCE_TYPES
from edge_infer.tasks.names import NAMES as TASK_NAMES


class ConfigError(Exception):
    """One line: `<file>: <key>: <problem>`."""


def plugin_options(family: str, kind: str) -> dict[str, Field]:
    """The keys a plug-in declares next to its code: `OPTIONS` in `edge_infer.<family>.<kind>` (only that
    module is imported)."""
    return importlib.import_module(f"edge_infer.{family}.{kind}").OPTIONS


def _topic_segment(v: str) -> str | None:
    if not v or any(c in v for c in "+#\0") or v.startswith("/") or v.endswith("/"):
        return f"'{v}' is not a valid MQTT topic segment (no wildcards, no leading/trailing '/')"
    return None


def _device_id(v: str) -> str | None:
    if not v or any(c in v for c in "/+#\0 "):
        return f"'{v}' is not a valid device id (letters, digits, '-', '_', '.'; no '/', '+', '#', spaces)"
    return None


def _limit(hi: float) -> Check:
    return lambda v: None if v < 0 or v <= hi else f"expected a value from 0 to {hi} (or -1 to turn the check off)"


def _per_channel(v: Any) -> str | None:
    values = v if isinstance(v, list) else [v]
    if not values or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in values):
        return f"expected a number (every channel) or a list of numbers (one per channel), got {v!r}"
    return None


def _roi(v: list[Any]) -> str | None:
    ok = len(v) == 4 and all(isinstance(x, int | float) and not isinstance(x, bool) and 0 <= x <= 1 for x in v)
    if not ok or not (v[0] < v[2] and v[1] < v[3]):
        return f"expected [x0, y0, x1, y1] as fractions of the frame (0–1, x0 < x1, y0 < y1), got {v!r}"
    return None


def _zones(v: list[Any]) -> str | None:
    for zone in v:
        poly = zone.get("polygon") if isinstance(zone, dict) else None
        ok = isinstance(poly, list) and len(poly) >= 3 and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(c, int | float) and 0 <= c <= 1 for c in p)
            for p in poly)
        if not ok or not isinstance(zone.get("name"), str) or not zone["name"] or set(zone) - {"name", "polygon"}:
            return ("expected zones as [{ name = \"door\", polygon = [[x, y], ...] }] with at least 3 points, "
                    f"as fractions of the frame (0–1); got {zone!r}")
    return None


def _debounce(v: list[Any]) -> str | None:
    ok = len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in v) and 1 <= v[0] <= v[1] <= 1000
    return None if ok else (f"expected [N, M]: a state changes when N of the last M frames agree "
                            f"(1 ≤ N ≤ M ≤ 1000), got {v!r}")


def _host_list(v: list[Any]) -> str | None:
    for item in v:
        host, _, port = str(item).rpartition(":")
        if not isinstance(item, str) or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            return f"expected a list of \"host:port\" strings, got {item!r}"
    return None



SCHEMA: dict[str, dict[str, Field]] = {
    "device": {
        "id": Field(str, default=None, check=_device_id),
        "state_dir": Field(str, default="/var/lib/edge-infer", is_path=True),
    },
    "model": {
        "bundle": Field(str, required=True, is_path=True),
        "threads": Field(int, default=1, check=_between(1, 64)),
        "runtime": Field(str, default="auto", choices=("auto", "ai_edge_litert", "tflite_runtime", "tensorflow")),
        # how the interpreter runs the model: kernels or an accelerator (edge_infer/delegates/, one module each)
        "delegate": Field(str, default=DEFAULT_DELEGATE, choices=DELEGATES),
        "delegate_options": Field(dict, default={}),
        "top_k": Field(int, default=3, check=_between(1, 1000)),
        "threshold": Field((int, float), default=None, check=_between(0.0, 1e12)),
        "thresholds": Field(dict, default={}),
        "task": Field(str, default=None, choices=TASK_NAMES),
        "input": Field(dict, default=None),
        "output": Field(dict, default=None),
        "labels": Field(list, default=None, check=lambda v: None if v and all(isinstance(x, str) and x for x in v)
                        else "expected a list of label names, in output order"),
        "zones": Field(list, default=[], check=_zones),
    },
    "decide": {
        "fallback": Field(str, default="publish", choices=("publish", "suppress", "defer", "escalate")),
        "escalate_to": Field(str, default=None, is_path=True),
        "escalate_fallback": Field(str, default="publish", choices=("publish", "suppress", "defer")),
        "escalate_threshold": Field((int, float), default=None, check=_between(0.0, 1.0)),
        "debounce": Field(list, default=None, check=_debounce),
        "keep_uncertain": Field(int, default=None, check=_between(0, 10_000_000)),
        "keep_uncertain_bytes": Field(int, default=64 * 1024 * 1024, check=_between(1, 2**40)),
        "uncertain_dir": Field(str, default=None, is_path=True),
        "upload": Field(bool, default=False),
        "upload_max_bytes": Field(int, default=256 * 1024, check=_between(1, 64 * 1024 * 1024)),
        "upload_chunk_bytes": Field(int, default=64 * 1024, check=_between(1024, 16 * 1024 * 1024)),
    },
    "drift": {
        "enabled": Field(bool, default=True),
        "window": Field(int, default=500, check=_between(20, 1_000_000)),
        "every": Field(int, default=50, check=_between(1, 1_000_000)),
        "alarm": Field((int, float), default=0.25, check=_between(0.0, 100.0)),
        "clear": Field((int, float), default=0.1, check=_between(0.0, 100.0)),
    },
    "source": {
        "type": Field(str, required=True, choices=SOURCE_TYPES),
        "name": Field(str, default=None),
        "max_fps": Field((int, float), default=0.0, check=_between(0, 10_000)),
    },
    "pipeline": {
        "mode": Field(str, default="pipelined", choices=("pipelined", "sequential")),
        "queue_size": Field(int, default=4, check=_between(1, 1024)),
    },
    "gate": {
        "max_pixels": Field(int, default=40_000_000, check=_between(1, 2**40)),
        "min_side": Field(int, default=8, check=_between(1, 100_000)),
        "quality": Field(bool, default=True),
        "min_brightness": Field((int, float), default=None, check=_limit(255)),
        "max_brightness": Field((int, float), default=None, check=_limit(255)),
        "max_dark_fraction": Field((int, float), default=None, check=_limit(1)),
        "max_bright_fraction": Field((int, float), default=None, check=_limit(1)),
        "min_contrast": Field((int, float), default=None, check=_limit(255)),
        "min_sharpness": Field((int, float), default=None, check=_limit(1e9)),
        "max_noise": Field((int, float), default=None, check=_limit(255)),
        "roi": Field(list, default=None, check=_roi),
        "range_low": Field((int, float, list), default=None, check=_per_channel),
        "range_high": Field((int, float, list), default=None, check=_per_channel),
        "min_std": Field((int, float, list), default=None, check=_per_channel),
        "max_step": Field((int, float, list), default=None, check=_per_channel),
        "max_gap_factor": Field((int, float), default=None, check=_between(0, 1e6)),
        "frozen_frames": Field(int, default=0, check=_between(0, 100_000)),
        "frozen_max_diff": Field((int, float), default=0.5, check=_between(0.0, 255.0)),
        "publish_rejections": Field(bool, default=True),
        "keep_rejected": Field(int, default=0, check=_between(0, 10_000_000)),
        "keep_rejected_bytes": Field(int, default=64 * 1024 * 1024, check=_between(1, 2**40)),
        "rejected_dir": Field(str, default=None, is_path=True),
    },
    "service": {
        "user": Field(str, default="edge-infer", check=lambda v: None if v and v.replace("-", "").replace(
            "_", "").isalnum() else "expected a plain user name (letters, digits, '-', '_')"),
        "groups": Field(list, default=[], check=lambda v: None if all(isinstance(g, str) and g for g in v)
                        else "expected a list of group names"),
        "watchdog_sec": Field(int, default=30, check=_between(2, 3600)),
        "stop_timeout": Field(int, default=45, check=_between(5, 3600)),
        "memory_max": Field(str, default="300M"),
        "cpu_quota": Field(str, default=""),
        "start_limit_interval": Field(int, default=300, check=_between(1, 86400)),
        "start_limit_burst": Field(int, default=5, check=_between(1, 1000)),
    },
    "metrics": {
        "port": Field(int, default=0, check=_between(0, 65535)),
        "bind": Field(str, default="127.0.0.1"),
    },
    "thermal": {
        "zone": Field(str, default="/sys/class/thermal/thermal_zone0/temp"),
        "throttled": Field(str, default="/sys/devices/platform/soc/soc:firmware/get_throttled"),
        "max_temp": Field((int, float), default=80.0, check=_between(20, 120)),
        "resume_temp": Field((int, float), default=70.0, check=_between(0, 120)),
        "check_interval": Field((int, float), default=5.0, check=_between(0.05, 3600)),
    },
    "homeassistant": {
        "discovery": Field(bool, default=False),
        "prefix": Field(str, default="homeassistant", check=_topic_segment),
    },
    "health": {
        "interval": Field((int, float), default=60.0, check=_between(0, 86400)),
    },
    "mqtt": {
        "host": Field(str, default="127.0.0.1"),
        "port": Field(int, default=1883, check=_between(1, 65535)),
        "topic_prefix": Field(str, default="edge", check=_topic_segment),
        "client_id": Field(str, default=None),
        "keepalive": Field(int, default=30, check=_between(5, 3600)),
        "qos": Field(int, default=1, choices=(0, 1)),
        "protocol": Field(str, default="5", choices=("5", "3.1.1")),
        "max_inflight": Field(int, default=32, check=_between(1, 1000)),
        "max_publish_rate": Field((int, float), default=0, check=_between(0, 1_000_000)),
        "drain_timeout": Field((int, float), default=30.0, check=_between(0.0, 86400)),
        "reconnect_max": Field((int, float), default=30.0, check=_between(0.5, 3600)),
        "hosts": Field(list, default=[], check=_host_list),
        "username": Field(str, default=None),
        "password_file": Field(str, default=None, is_path=True),
        "tls": Field(bool, default=False),
        "ca_file": Field(str, default=None, is_path=True),
        "cert_file": Field(str, default=None, is_path=True),
        "key_file": Field(str, default=None, is_path=True),
        "tls_insecure": Field(bool, default=False),
    },
    "sink": {
        "type": Field(str, default="mqtt", choices=SINK_TYPES),  # where stored messages go; its keys: its module
    },
    "outbox": {
        "path": Field(str, default=None, is_path=True),
        "durability": Field(str, default="full", choices=("full", "normal")),
        "max_rows": Field(int, default=100_000, check=_between(10, 100_000_000)),
        "max_bytes": Field(int, default=64 * 1024 * 1024, check=_between(64 * 1024, 2**40)),
        "ttl": Field((int, float), default=7 * 24 * 3600, check=_between(1, 10 * 365 * 24 * 3600)),
        "policy": Field(str, default="drop-oldest", choices=("drop-oldest", "reject-new")),
        "commit_window_ms": Field((int, float), default=20, check=_between(0, 10_000)),
        "max_batch": Field(int, default=256, check=_between(1, 100_000)),
    },
    "fleet": {
        # public keys (PEM files, or base64 of the 32 raw bytes) whose signatures this device accepts
        "keys": Field(list, default=[], check=lambda v: None if all(isinstance(k, str) and k for k in v)
                      else "expected a list of public key files (or base64 keys)"),
    },
    "update": {
        "enabled": Field(bool, default=False),
        "incoming_dir": Field(str, default=None, is_path=True),
        "slots_dir": Field(str, default=None, is_path=True),
        "max_bundle_bytes": Field(int, default=64 * 1024 * 1024, check=_between(1024, 2**34)),
        "min_agreement": Field((int, float), default=None, check=_between(0.0, 1.0)),
        "max_latency_ms": Field((int, float), default=None, check=_between(0.0, 1e6)),
        "max_latency_ratio": Field((int, float), default=2.0, check=_between(1.0, 1000.0)),
        "shadow": Field(int, default=0, check=_between(0, 1_000_000)),
        "shadow_min_agreement": Field((int, float), default=0.9, check=_between(0.0, 1.0)),
        "watch": Field(int, default=200, check=_between(0, 10_000_000)),
        "max_uncertain_increase": Field((int, float), default=0.15, check=_between(0.0, 1.0)),
        "watch_latency_ratio": Field((int, float), default=2.0, check=_between(1.0, 1000.0)),
    },
    "commands": {
        "enabled": Field(bool, default=False),
        "auth": Field(str, default="signed", choices=("signed", "acl")),
        "max_age": Field(int, default=600, check=_between(1, 10 * 365 * 24 * 3600)),
        # the largest inbound message taken (MQTT v5 Maximum Packet Size); update chunks must fit
        "max_message_bytes": Field(int, default=256 * 1024, check=_between(1024, 64 * 1024 * 1024)),
    },
    "log": {
        "level": Field(str, default="info", choices=("debug", "info", "warning", "error")),
        "format": Field(str, default="kv", choices=("kv", "json")),
    },
}
REQUIRED_SECTIONS = ("model", "source")
PLUGGED = {"source": ("sources", SOURCE_TYPES), "sink": ("sinks", SINK_TYPES)}  # section → (package, types)


@dataclass(frozen=True)
class Config:
    path: Path
    device: dict[str, Any]
    model: dict[str, Any]
    source: dict[str, Any]
    pipeline: dict[str, Any]
    gate: dict[str, Any]
    decide: dict[str, Any]
    drift: dict[str, Any]
    service: dict[str, Any]
    metrics: dict[str, Any]
    thermal: dict[str, Any]
    homeassistant: dict[str, Any]
    health: dict[str, Any]
    mqtt: dict[str, Any]
    sink: dict[str, Any]
    outbox: dict[str, Any]
    fleet: dict[str, Any]
    update: dict[str, Any]
    commands: dict[str, Any]
    log: dict[str, Any]


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", dict: "a table", bool: "true or false",
             list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if kinds == (int, float):
        return "a number"
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _unknown(path: Path, where: str, key: str, known: list[str]) -> ConfigError:
    hint = difflib.get_close_matches(key, known, n=1)
    suggestion = f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(known)})"
    return ConfigError(f"{path}: {where}: unknown key{suggestion}")


def _validate_section(path: Path, name: str, table: Any) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{name}]: expected a table, got {type(table).__name__}")
    fields = SCHEMA[name]
    if name in PLUGGED and table:  # a plug-in's module is imported only when its section is written
        family, types = PLUGGED[name]
        kind = table.get("type", fields["type"].default)
        if kind is not None and kind not in types:
            choices = ", ".join(repr(c) for c in types)
            raise ConfigError(f"{path}: [{name}].type: expected one of {choices}, got {kind!r}")
        fields = {**fields, **(plugin_options(family, kind) if kind is not None else {})}
    for key in table:
        if name == "mqtt" and key == "password":
            raise ConfigError(
                f"{path}: [mqtt].password: passwords are never read from the config file; use password_file, "
                "the EDGE_INFER_MQTT_PASSWORD environment variable or a systemd credential named mqtt_password"
            )
        if key not in fields:
            if name in PLUGGED and (owners := [k for k in PLUGGED[name][1] if key in plugin_options(
                    PLUGGED[name][0], k)]):
                raise ConfigError(f"{path}: [{name}].{key}: not a key of type {table.get('type')!r} {name}s "
                                  f"(it belongs to: {', '.join(owners)})")
            raise _unknown(path, f"[{name}].{key}", key, list(fields))
    out: dict[str, Any] = {}
    for key, spec in fields.items():
        where = f"[{name}].{key}"
        if key not in table:
            if spec.required:
                raise ConfigError(f"{path}: {where}: missing (required)")
            out[key] = spec.default
            continue
        value = table[key]
        kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise ConfigError(f"{path}: {where}: expected {_type_name(spec.kind)}, got {value!r}")
        if spec.choices and value not in spec.choices:
            choices = ", ".join(repr(c) for c in spec.choices)
            raise ConfigError(f"{path}: {where}: expected one of {choices}, got {value!r}")
        if spec.check and (problem := spec.check(value)):
            raise ConfigError(f"{path}: {where}: {problem}")
        if spec.is_path:
            value = str((path.parent / Path(value).expanduser()).resolve())
        out[key] = value
    return out


def _validate_thresholds(path: Path, thresholds: dict[str, Any]) -> dict[str, float]:
    out = {}
    for label, value in thresholds.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{path}: [model.thresholds].{label}: expected a number from 0 to 1, got {value!r}")
        out[label] = float(value)
    return out


def _check_delegate(path: Path, model: dict[str, Any]) -> None:
    """`[model].delegate` and its options, checked by the delegate's own module (imported only here)."""
    from edge_infer.delegates import DelegateError, check_options

    try:
        check_options(model["delegate"], model["delegate_options"])
    except DelegateError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_config(doc: dict[str, Any], path: Path) -> Config:
    """Validate a decoded TOML document, fill defaults and resolve paths."""
    for section in doc:
        if section not in SCHEMA:
            raise _unknown(path, f"[{section}]", section, list(SCHEMA))
    for section in REQUIRED_SECTIONS:
        if section not in doc:
            raise ConfigError(f"{path}: [{section}]: missing section (required)")
    sections = {name: _validate_section(path, name, doc.get(name, {})) for name in SCHEMA}
    device = sections["device"]
    if device["id"] is None:
        device["id"] = socket.gethostname().split(".")[0] or "edge-device"
    sections["model"]["thresholds"] = _validate_thresholds(path, sections["model"]["thresholds"])
    _check_delegate(path, sections["model"])
    if sections["outbox"]["path"] is None:
        sections["outbox"]["path"] = str(Path(device["state_dir"]) / "outbox.db")
    if sections["mqtt"]["client_id"] is None:
        sections["mqtt"]["client_id"] = f"edge-infer-{device['id']}"
    mqtt = sections["mqtt"]
    if not mqtt["hosts"]:
        mqtt["hosts"] = [f"{mqtt['host']}:{mqtt['port']}"]
    if (mqtt["cert_file"] is None) != (mqtt["key_file"] is None):
        raise ConfigError(f"{path}: [mqtt].cert_file/key_file: give both (client certificate and its key) or neither")
    if (mqtt["ca_file"] or mqtt["cert_file"] or mqtt["tls_insecure"]) and not mqtt["tls"]:
        raise ConfigError(f"{path}: [mqtt].tls: set tls = true to use ca_file, cert_file/key_file or tls_insecure")
    if sections["gate"]["rejected_dir"] is None:
        sections["gate"]["rejected_dir"] = str(Path(device["state_dir"]) / "rejected")
    decide = sections["decide"]
    if decide["fallback"] == "escalate" and decide["escalate_to"] is None:
        raise ConfigError(f"{path}: [decide].escalate_to: fallback = \"escalate\" needs the bundle of a second model")
    if decide["keep_uncertain"] is None:
        decide["keep_uncertain"] = 1000 if "defer" in (decide["fallback"], decide["escalate_fallback"]) else 0
    if decide["uncertain_dir"] is None:
        decide["uncertain_dir"] = str(Path(device["state_dir"]) / "uncertain")
    if sections["thermal"]["resume_temp"] >= sections["thermal"]["max_temp"]:
        raise ConfigError(f"{path}: [thermal].resume_temp: must be below [thermal].max_temp (hysteresis)")
    if sections["drift"]["clear"] > sections["drift"]["alarm"]:
        raise ConfigError(f"{path}: [drift].clear: must not be above [drift].alarm (hysteresis)")
    update = sections["update"]
    for key, folder in (("incoming_dir", "incoming"), ("slots_dir", "models")):
        if update[key] is None:
            update[key] = str(Path(device["state_dir"]) / folder)
    fleet_keys = sections["fleet"]["keys"]
    sections["fleet"]["keys"] = [str((path.parent / k).resolve()) if (path.parent / k).exists() else k
                                 for k in fleet_keys]
    if update["enabled"] and not fleet_keys:
        raise ConfigError(f"{path}: [update].enabled: model updates must be signed: list the fleet's public keys in "
                          "[fleet].keys (edge-infer keygen makes a pair)")
    if sections["commands"]["enabled"] and sections["commands"]["auth"] == "signed" and not fleet_keys:
        raise ConfigError(f"{path}: [commands].auth = \"signed\": list the fleet's public keys in [fleet].keys, or "
                          "set auth = \"acl\" and restrict the cmd topics on the broker (docs/operations.md)")
    if sections["source"]["name"] is None:
        sections["source"]["name"] = sections["source"]["type"]
    _check_sink(path, sections)
    return Config(path=path, **sections)


def _check_sink(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    """A webhook sink needs its URL; what only MQTT carries (commands, uploads, discovery) needs the MQTT sink."""
    if sections["sink"]["type"] != "webhook":
        return
    for where, on in (("[commands].enabled", sections["commands"]["enabled"]),
                      ("[decide].upload", sections["decide"]["upload"]),
                      ("[homeassistant].discovery", sections["homeassistant"]["discovery"])):
        if on:
            raise ConfigError(f"{path}: {where}: needs MQTT, but [sink].type = \"webhook\" (use the mqtt sink, "
                              "or turn it off)")


def load_config(path: Path | str) -> Config:
    """Read and validate a config file; raises `ConfigError` with a one-line message."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_config(doc, path.resolve())
