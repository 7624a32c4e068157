"""The core sections of the device config, each a frozen dataclass: one attribute per key, declared with
`edge_infer.options.opt` (default, choices, check, path). `edge_infer.config` validates a TOML file against them;
`[source]` and `[sink]` are declared by their plug-ins (`SourceConfig`, `SinkConfig` and each module's `Options`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_infer.crop import crop_problem
from edge_infer.delegates import DEFAULT as DEFAULT_DELEGATE
from edge_infer.delegates import NAMES as DELEGATES
from edge_infer.hosts import host_port
from edge_infer.options import Check, opt
from edge_infer.options import between as _between
from edge_infer.tasks.names import NAMES as TASK_NAMES


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


def _labels(v: list[str] | str) -> str | None:
    """A list of label names in output order, or a labels file (one per line, or a `0 name` labelmap)."""
    if isinstance(v, str):
        return None if v else "expected a labels file path, or a list of label names in output order"
    return None if v and all(isinstance(x, str) and x for x in v) else \
        "expected a list of label names in output order, or a labels file path"


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
        if not isinstance(item, str) or host_port(item) is None:
            return f"expected a list of \"host:port\" strings, got {item!r}"
    return None



@dataclass(frozen=True, kw_only=True)
class DeviceConfig:
    """`[device]`: who this device is and where it keeps its state."""

    id: str | None = opt(None, check=_device_id)
    state_dir: str = opt("/var/lib/edge-infer", is_path=True)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """`[model]`: the bundle, how it runs (threads, runtime, delegate) and the rules on its outputs."""

    bundle: str = opt(required=True, is_path=True)
    threads: int = opt(1, check=_between(1, 64))
    runtime: str = opt("auto", choices=("auto", "ai_edge_litert", "tflite_runtime", "tensorflow"))
    delegate: str = opt(DEFAULT_DELEGATE, check=lambda v: None if v in DELEGATES else (  # a path: see config.py
        f"expected one of {', '.join(map(repr, DELEGATES))} or the path to a TFLite delegate library (.so), got {v!r}"))
    delegate_options: Mapping[str, Any] = opt({})
    # an accelerator delegate that cannot load or take the model: run on the CPU and retry it with back-off
    delegate_fallback: bool = opt(True)
    # an accelerator's inference that takes longer has locked up: the CPU answers instead (and the accelerator
    # is retried with back-off); 0 waits forever. At most half of [service].watchdog_sec.
    accelerator_timeout: float = opt(10.0, check=_between(0.0, 3600.0), unit="s")
    top_k: int = opt(3, check=_between(1, 1000))
    threshold: float | None = opt(None, check=_between(0.0, 1e12))
    thresholds: Mapping[str, float] = opt({})
    task: str | None = opt(None, choices=TASK_NAMES)
    input: Mapping[str, Any] | None = opt(None)
    output: Mapping[str, Any] | None = opt(None)
    labels: tuple[str, ...] | str | None = opt(None, check=_labels, is_path=True)
    zones: tuple[Mapping[str, Any], ...] = opt([], check=_zones)
    # the region of the frame the model works on, cut before the gate and preprocessing: [x0, y0, x1, y1] as
    # fractions (0.0–1.0) or pixels (whole numbers); the bundle's own `input.crop` when not set
    crop: tuple[float, float, float, float] | None = opt(None, check=crop_problem)


@dataclass(frozen=True, kw_only=True)
class DecideConfig:
    """`[decide]`: what happens to uncertain results (fallbacks, escalation, debounce, review folders)."""

    fallback: str = opt("publish", choices=("publish", "suppress", "defer", "escalate"))
    escalate_to: str | None = opt(None, is_path=True)
    escalate_fallback: str = opt("publish", choices=("publish", "suppress", "defer"))
    escalate_threshold: float | None = opt(None, check=_between(0.0, 1.0))
    debounce: tuple[int, int] | None = opt(None, check=_debounce)
    keep_uncertain: int | None = opt(None, check=_between(0, 10_000_000))
    keep_uncertain_bytes: int = opt(64 * 1024 * 1024, check=_between(1, 2**40), unit="bytes")
    uncertain_dir: str | None = opt(None, is_path=True)
    upload: bool = opt(False)
    upload_max_bytes: int = opt(256 * 1024, check=_between(1, 64 * 1024 * 1024), unit="bytes")
    upload_chunk_bytes: int = opt(64 * 1024, check=_between(1024, 16 * 1024 * 1024), unit="bytes")


@dataclass(frozen=True, kw_only=True)
class DriftConfig:
    """`[drift]`: the drift monitor's window and alarm levels."""

    enabled: bool = opt(True)
    window: int = opt(500, check=_between(20, 1_000_000))
    every: int = opt(50, check=_between(1, 1_000_000))
    alarm: float = opt(0.25, check=_between(0.0, 100.0))
    clear: float = opt(0.1, check=_between(0.0, 100.0))


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """`[pipeline]`: pipelined (decode and inference in parallel, on several interpreters) or sequential."""

    mode: str = opt("pipelined", choices=("pipelined", "sequential"))
    queue_size: int = opt(4, check=_between(1, 1024))
    # pipelined: interpreters working on consecutive inputs at once, results committed in input order
    interpreters: int | str = opt("auto", check=lambda v: None if v == "auto" or (
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 16) else 'expected "auto" or 1 to 16')


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    """`[gate]`: input limits and quality checks; -1 turns a check off, None takes the bundle's reference."""

    max_pixels: int = opt(40_000_000, check=_between(1, 2**40))
    min_side: int = opt(8, check=_between(1, 100_000))
    quality: bool = opt(True)
    min_brightness: float | None = opt(None, check=_limit(255))
    max_brightness: float | None = opt(None, check=_limit(255))
    max_dark_fraction: float | None = opt(None, check=_limit(1))
    max_bright_fraction: float | None = opt(None, check=_limit(1))
    min_contrast: float | None = opt(None, check=_limit(255))
    min_sharpness: float | None = opt(None, check=_limit(1e9))
    min_focus: float | None = opt(None, check=_limit(10))
    max_noise: float | None = opt(None, check=_limit(255))
    roi: tuple[float, float, float, float] | None = opt(None, check=_roi)
    range_low: float | tuple[float, ...] | None = opt(None, check=_per_channel)
    range_high: float | tuple[float, ...] | None = opt(None, check=_per_channel)
    min_std: float | tuple[float, ...] | None = opt(None, check=_per_channel)
    max_step: float | tuple[float, ...] | None = opt(None, check=_per_channel)
    max_gap_factor: float | None = opt(None, check=_between(0, 1e6))
    frozen_frames: int = opt(0, check=_between(0, 100_000))
    frozen_max_diff: float = opt(0.5, check=_between(0.0, 255.0))
    publish_rejections: bool = opt(True)
    # a fixed camera's own normal: defocused, fogged, obstructed, scene_changed (edge_infer/gates/baseline.py)
    baseline: bool = opt(False)
    baseline_warmup: int = opt(100, check=_between(10, 1_000_000))
    keep_rejected: int = opt(0, check=_between(0, 10_000_000))
    keep_rejected_bytes: int = opt(64 * 1024 * 1024, check=_between(1, 2**40), unit="bytes")
    rejected_dir: str | None = opt(None, is_path=True)


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """`[service]`: the systemd unit `edge-infer install-service` writes."""

    user: str = opt("edge-infer", check=lambda v: None if v and v.replace("-", "").replace("_", "").isalnum()
                    else "expected a plain user name (letters, digits, '-', '_')")
    groups: tuple[str, ...] = opt([], check=lambda v: None if all(isinstance(g, str) and g for g in v)
                                  else "expected a list of group names")
    watchdog_sec: int = opt(30, check=_between(2, 3600), unit="s")
    stop_timeout: int = opt(45, check=_between(5, 3600), unit="s")
    memory_max: int = opt(300 * 1024**2, check=_between(16 * 1024**2, 2**40), unit="bytes")  # "300M", "1GiB"
    cpu_quota: str = opt("")
    # 0: restart for as long as it takes (a broker, camera or disk that comes back later); N: give up after
    # start_limit_burst failed starts within N seconds
    start_limit_interval: int = opt(0, check=_between(0, 86400), unit="s")
    start_limit_burst: int = opt(5, check=_between(1, 1000))


@dataclass(frozen=True, kw_only=True)
class WebConfig:
    """`[web]`: the live view — the latest frame, results, rejections, health (off by default)."""

    enabled: bool = opt(False)
    bind: str = opt("127.0.0.1")  # any other address needs a token (EDGE_INFER_WEB_TOKEN, web_token, token_file)
    port: int = opt(8080, check=_between(0, 65535))
    token_file: str | None = opt(None, is_path=True)


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """`[metrics]`: the HTTP metrics and health endpoint (port 0: off)."""

    port: int = opt(0, check=_between(0, 65535))
    bind: str = opt("127.0.0.1")


@dataclass(frozen=True, kw_only=True)
class ThermalConfig:
    """`[thermal]`: pause inference above `max_temp`, resume below `resume_temp`."""

    zone: str = opt("/sys/class/thermal/thermal_zone0/temp")
    throttled: str = opt("/sys/devices/platform/soc/soc:firmware/get_throttled")
    max_temp: float = opt(80.0, check=_between(20, 120))
    resume_temp: float = opt(70.0, check=_between(0, 120))
    check_interval: float = opt(5.0, check=_between(0.05, 3600), unit="s")


@dataclass(frozen=True, kw_only=True)
class HomeAssistantConfig:
    """`[homeassistant]`: MQTT discovery."""

    discovery: bool = opt(False)
    prefix: str = opt("homeassistant", check=_topic_segment)


@dataclass(frozen=True, kw_only=True)
class HealthConfig:
    """`[health]`: how often a health message is published."""

    interval: float = opt(60.0, check=_between(0, 86400), unit="s")


@dataclass(frozen=True, kw_only=True)
class MqttConfig:
    """`[mqtt]`: the broker(s), credentials files and TLS."""

    host: str = opt("127.0.0.1")
    port: int = opt(1883, check=_between(1, 65535))
    topic_prefix: str = opt("edge", check=_topic_segment)
    client_id: str | None = opt(None)
    keepalive: int = opt(30, check=_between(5, 3600), unit="s")
    qos: int = opt(1, choices=(0, 1))
    protocol: str = opt("5", choices=("5", "3.1.1"))
    max_inflight: int = opt(32, check=_between(1, 1000))
    max_publish_rate: float = opt(0, check=_between(0, 1_000_000))
    drain_timeout: float = opt(30.0, check=_between(0.0, 86400), unit="s")
    reconnect_max: float = opt(30.0, check=_between(0.5, 3600), unit="s")
    hosts: tuple[str, ...] = opt([], check=_host_list)
    username: str | None = opt(None)
    password_file: str | None = opt(None, is_path=True)
    tls: bool = opt(False)
    ca_file: str | None = opt(None, is_path=True)
    cert_file: str | None = opt(None, is_path=True)
    key_file: str | None = opt(None, is_path=True)
    tls_insecure: bool = opt(False)
    # the latest annotated frame as a raw JPEG on `image` (retained; Home Assistant's image entity): every
    # `image_interval` (0: never) and, with `image_on_change`, whenever the debounced state changes
    image_interval: float = opt(0.0, check=_between(0, 86400), unit="s")
    image_on_change: bool = opt(False)
    image_max_bytes: int = opt(150 * 1024, check=_between(4096, 4 * 1024 * 1024), unit="bytes")


@dataclass(frozen=True, kw_only=True)
class OutboxConfig:
    """`[outbox]`: the durable store of messages not yet delivered."""

    path: str | None = opt(None, is_path=True)
    durability: str = opt("full", choices=("full", "normal"))
    max_rows: int = opt(100_000, check=_between(10, 100_000_000))
    max_bytes: int = opt(64 * 1024 * 1024, check=_between(64 * 1024, 2**40), unit="bytes")
    ttl: float = opt(7 * 24 * 3600, check=_between(1, 10 * 365 * 24 * 3600), unit="s")
    policy: str = opt("drop-oldest", choices=("drop-oldest", "reject-new"))
    commit_window_ms: float = opt(20, check=_between(0, 10_000), unit="ms")
    max_batch: int = opt(256, check=_between(1, 100_000))


@dataclass(frozen=True, kw_only=True)
class FleetConfig:
    """`[fleet]`: public keys whose signatures this device accepts."""

    keys: tuple[str, ...] = opt([], check=lambda v: None if all(isinstance(k, str) and k for k in v)
                                else "expected a list of public key files (or base64 keys)")


@dataclass(frozen=True, kw_only=True)
class UpdateConfig:
    """`[update]`: signed model updates, canary and shadow checks, automatic rollback."""

    enabled: bool = opt(False)
    incoming_dir: str | None = opt(None, is_path=True)
    slots_dir: str | None = opt(None, is_path=True)
    max_bundle_bytes: int = opt(64 * 1024 * 1024, check=_between(1024, 2**34), unit="bytes")
    min_agreement: float | None = opt(None, check=_between(0.0, 1.0))
    max_latency_ms: float | None = opt(None, check=_between(0.0, 1e6), unit="ms")
    max_latency_ratio: float = opt(2.0, check=_between(1.0, 1000.0))
    shadow: int = opt(0, check=_between(0, 1_000_000))
    shadow_min_agreement: float = opt(0.9, check=_between(0.0, 1.0))
    watch: int = opt(200, check=_between(0, 10_000_000))
    max_uncertain_increase: float = opt(0.15, check=_between(0.0, 1.0))
    watch_latency_ratio: float = opt(2.0, check=_between(1.0, 1000.0))


@dataclass(frozen=True, kw_only=True)
class CommandsConfig:
    """`[commands]`: remote commands over MQTT."""

    enabled: bool = opt(False)
    auth: str = opt("signed", choices=("signed", "acl"))
    max_age: int = opt(600, check=_between(1, 10 * 365 * 24 * 3600), unit="s")
    max_message_bytes: int = opt(256 * 1024, check=_between(1024, 64 * 1024 * 1024), unit="bytes")


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    """`[log]`: level and format of the log lines."""

    level: str = opt("info", choices=("debug", "info", "warning", "error"))
    format: str = opt("kv", choices=("kv", "json"))
