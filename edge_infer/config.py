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

from edge_infer.options import EXAMPLES, build, fields_of, quantity
from edge_infer.sections import (
    CommandsConfig,
    DecideConfig,
    DeviceConfig,
    DriftConfig,
    FleetConfig,
    GateConfig,
    HealthConfig,
    HomeAssistantConfig,
    LogConfig,
    MetricsConfig,
    ModelConfig,
    MqttConfig,
    OutboxConfig,
    PipelineConfig,
    ServiceConfig,
    ThermalConfig,
    UpdateConfig,
    WebConfig,
)
from edge_infer.sinks import TYPES as SINK_TYPES
from edge_infer.sinks import SinkConfig
from edge_infer.sources import TYPES as SOURCE_TYPES
from edge_infer.sources import SourceConfig


class ConfigError(Exception):
    """One line: `<file>: <key>: <problem>`."""


def plugin_options(family: str, kind: str) -> type:
    """The table a plug-in declares next to its code: `Options` in `edge_infer.<family>.<kind>` (only that module
    is imported)."""
    return importlib.import_module(f"edge_infer.{family}.{kind}").Options


SECTIONS: dict[str, type] = {  # [table] → its keys; [source] and [sink] grow by their plug-in's `Options`
    "device": DeviceConfig, "model": ModelConfig, "decide": DecideConfig, "drift": DriftConfig,
    "source": SourceConfig, "pipeline": PipelineConfig, "gate": GateConfig, "service": ServiceConfig,
    "metrics": MetricsConfig, "web": WebConfig, "thermal": ThermalConfig, "homeassistant": HomeAssistantConfig,
    "health": HealthConfig, "mqtt": MqttConfig, "sink": SinkConfig, "outbox": OutboxConfig, "fleet": FleetConfig,
    "update": UpdateConfig, "commands": CommandsConfig, "log": LogConfig,
}
REQUIRED_SECTIONS = ("model", "source")
PLUGGED = {"source": ("sources", SOURCE_TYPES), "sink": ("sinks", SINK_TYPES)}  # section → (package, types)


@dataclass(frozen=True)
class Config:
    """A validated device config: one frozen table per section (see `edge_infer.sections`). A reload builds a new
    one; nothing changes a running one."""

    path: Path
    device: DeviceConfig
    model: ModelConfig
    source: SourceConfig  # the type's own `Options`, a subclass
    pipeline: PipelineConfig
    gate: GateConfig
    decide: DecideConfig
    drift: DriftConfig
    service: ServiceConfig
    metrics: MetricsConfig
    web: WebConfig
    thermal: ThermalConfig
    homeassistant: HomeAssistantConfig
    health: HealthConfig
    mqtt: MqttConfig
    sink: SinkConfig  # the type's own `Options`, a subclass
    outbox: OutboxConfig
    fleet: FleetConfig
    update: UpdateConfig
    commands: CommandsConfig
    log: LogConfig


def _type_name(kind: type | tuple[type, ...], unit: str | None = None) -> str:
    names = {str: "a string", int: "an integer", float: "a number", dict: "a table", bool: "true or false",
             list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if unit:
        return EXAMPLES[unit].replace(" (or ", ", or ").rstrip(")")
    if kinds == (int, float):
        return "a number"
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _unknown(path: Path, where: str, key: str, known: list[str]) -> ConfigError:
    hint = difflib.get_close_matches(key, known, n=1)
    suggestion = f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(known)})"
    return ConfigError(f"{path}: {where}: unknown key{suggestion}")


def _validate_section(path: Path, name: str, table: Any) -> tuple[type, dict[str, Any]]:
    """(the table's class, its values: defaults filled, paths resolved) — not yet frozen: `parse_config` fills
    what depends on other sections first."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{name}]: expected a table, got {type(table).__name__}")
    cls = SECTIONS[name]
    if name in PLUGGED and table:  # a plug-in's module is imported only when its section is written
        family, types = PLUGGED[name]
        kind = table.get("type", fields_of(cls)["type"].default)
        if kind is not None and kind not in types:
            choices = ", ".join(repr(c) for c in types)
            raise ConfigError(f"{path}: [{name}].type: expected one of {choices}, got {kind!r}")
        cls = plugin_options(family, kind) if kind is not None else cls
    fields = fields_of(cls)
    for key in table:
        if name == "mqtt" and key == "password":
            raise ConfigError(
                f"{path}: [mqtt].password: passwords are never read from the config file; use password_file, "
                "the EDGE_INFER_MQTT_PASSWORD environment variable or a systemd credential named mqtt_password"
            )
        if key not in fields:
            if name in PLUGGED and (owners := [k for k in PLUGGED[name][1] if key in fields_of(plugin_options(
                    PLUGGED[name][0], k))]):
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
            raise ConfigError(f"{path}: {where}: expected {_type_name(spec.kind, spec.unit)}, got {value!r}")
        if spec.unit and isinstance(value, str):
            try:
                value = quantity(value, spec.unit, whole=float not in kinds)
            except ValueError as exc:
                raise ConfigError(f"{path}: {where}: {exc}") from None
        if spec.choices and value not in spec.choices:
            choices = ", ".join(repr(c) for c in spec.choices)
            raise ConfigError(f"{path}: {where}: expected one of {choices}, got {value!r}")
        if spec.check and (problem := spec.check(value)):
            raise ConfigError(f"{path}: {where}: {problem}")
        if spec.is_path and isinstance(value, str):
            value = str((path.parent / Path(value).expanduser()).resolve())
        out[key] = value
    return cls, out


def _validate_thresholds(path: Path, thresholds: dict[str, Any]) -> dict[str, float]:
    out = {}
    for label, value in thresholds.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{path}: [model.thresholds].{label}: expected a number from 0 to 1, got {value!r}")
        out[label] = float(value)
    return out


def _check_delegate(path: Path, model: dict[str, Any], watchdog_sec: int) -> None:
    """`[model].delegate` and its options, checked by the delegate's own module (imported only here); an
    accelerator's deadline leaves the CPU time to answer before systemd's watchdog gives up on a busy stage."""
    from edge_infer.delegates import CPU, DelegateError, check_options

    try:
        check_options(model["delegate"], model["delegate_options"])
    except DelegateError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if model["delegate"] not in CPU and model["accelerator_timeout"] > watchdog_sec / 2:
        raise ConfigError(f"{path}: [model].accelerator_timeout = {model['accelerator_timeout']:g}: at most half of "
                          f"[service].watchdog_sec ({watchdog_sec} s), or the watchdog restarts the service before "
                          "the CPU takes over from a locked-up accelerator")


def _delegate_path(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """`[model] delegate = "/path/to/libdelegate.so"`: shorthand for `delegate = "external"` with that `library`,
    `[model.delegate_options]` then being the library's own options (strings). A library path with a `/` in it is
    relative to the config file, like every path here; a bare file name is the dynamic loader's to find."""
    model = doc.get("model")
    name = model.get("delegate") if isinstance(model, dict) else None
    if not isinstance(name, str):
        return doc
    options = model.get("delegate_options", {})
    if "/" in name or name.endswith(".so"):
        model = {**model, "delegate": "external"}
        options = {"library": name, "options": options} if isinstance(options, dict) else options
    library = options.get("library") if isinstance(options, dict) else None
    if isinstance(library, str) and "/" in library:
        where = Path(library).expanduser()
        options = {**options, "library": str(where if where.is_absolute() else (path.parent / where).resolve())}
    return {**doc, "model": {**model, "delegate_options": options}}


def parse_config(doc: dict[str, Any], path: Path) -> Config:
    """Validate a decoded TOML document, fill defaults and resolve paths."""
    doc = _delegate_path(doc, path)
    for section in doc:
        if section not in SECTIONS:
            raise _unknown(path, f"[{section}]", section, list(SECTIONS))
    for section in REQUIRED_SECTIONS:
        if section not in doc:
            raise ConfigError(f"{path}: [{section}]: missing section (required)")
    classes: dict[str, type] = {}
    sections: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        classes[name], sections[name] = _validate_section(path, name, doc.get(name, {}))
    device = sections["device"]
    if device["id"] is None:
        device["id"] = socket.gethostname().split(".")[0] or "edge-device"
    sections["model"]["thresholds"] = _validate_thresholds(path, sections["model"]["thresholds"])
    _check_delegate(path, sections["model"], sections["service"]["watchdog_sec"])
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
    return Config(path, **{name: build(classes[name], values) for name, values in sections.items()})


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
