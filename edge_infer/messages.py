"""MQTT payloads. Every message carries the envelope of DESIGN.md; the JSON Schemas in `schemas/` describe
them and the tests validate real messages against those schemas."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from edge_infer.clock import rfc3339, time_synced
from edge_infer.decide import DebouncedState, Decision
from edge_infer.gates import Verdict
from edge_infer.sources import Sample
from edge_infer.tasks import TaskResult

PAYLOAD_VERSION = 1


@dataclass(frozen=True)
class Identity:
    """Who is speaking: the device, this run of the daemon, and the model it runs."""

    device_id: str
    boot_id: str
    model: dict[str, str]  # name, version, sha256


def state_kind(label: str) -> str:
    """The topic kind of a label's debounced state: `state/<label>` with what MQTT topics must not hold (`/`,
    `+`, `#`, spaces, control characters) replaced by `_` (the daemon and Home Assistant discovery agree)."""
    return "state/" + "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:64]


def message_id(sample: Sample, model_sha256: str) -> str:
    """Stable across restarts: the same input through the same model always yields the same msg_id."""
    h = hashlib.sha256()
    for part in (sample.source, sample.input_id, sample.fingerprint, model_sha256):
        try:
            h.update(part.encode("utf-8", "surrogateescape"))  # file names with undecodable bytes
        except UnicodeEncodeError:
            h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:32]


MAX_EVENT_BYTES = 8 * 1024  # one event's payload; longer details are shortened (see `bounded_details`)
MAX_TEXT = 300  # characters kept of one string in shortened event details


def _encode(doc: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON that never raises: a string that cannot be UTF-8 (a lone surrogate from an escaped
    JSON string, undecodable file-name bytes) has those characters replaced by U+FFFD."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8", "replace")


def clean_text(value: object, limit: int = MAX_TEXT) -> str:
    """`value` as text fit to echo: at most `limit` characters (an ellipsis and the original length mark a cut),
    control characters and unencodable surrogates replaced."""
    text = value if isinstance(value, str) else repr(value)
    cut = len(text) > limit
    text = text[:limit]
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = "".join(c if c.isprintable() else "\ufffd" for c in text)
    return f"{text}… ({len(value) if isinstance(value, str) else 'long'} chars)" if cut else text


def bounded_details(details: dict[str, Any], limit: int = MAX_EVENT_BYTES) -> dict[str, Any]:
    """Event details that encode to at most about `limit` bytes: long strings are shortened first; if that is
    not enough, only the keys are kept."""
    if len(_encode(details)) <= limit:
        return details

    def shorten(value: Any, depth: int = 0) -> Any:
        if isinstance(value, str):
            return clean_text(value)
        if depth < 4 and isinstance(value, dict):
            return {clean_text(k, 64): shorten(v, depth + 1) for k, v in list(value.items())[:50]}
        if depth < 4 and isinstance(value, list):
            return [shorten(v, depth + 1) for v in value[:50]]
        return value if isinstance(value, int | float | bool) or value is None else clean_text(value)

    short = shorten(details)
    if len(_encode(short)) <= limit:
        return short
    return {"truncated": True, "keys": [clean_text(k, 64) for k in list(details)[:50]]}


def _base(identity: Identity, seq: int, msg_id: str) -> dict[str, Any]:
    return {
        "v": PAYLOAD_VERSION,
        "device_id": identity.device_id,
        "boot_id": identity.boot_id,
        "seq": seq,
        "msg_id": msg_id,
        "ts": rfc3339(time.time()),
        "time_synced": time_synced(),
        "model": identity.model,
    }


def _envelope(identity: Identity, seq: int, msg_id: str, sample: Sample) -> dict[str, Any]:
    doc = _base(identity, seq, msg_id)
    doc["input"] = {"source": sample.source, "id": sample.input_id, "captured_at": rfc3339(sample.ts)}
    return doc


def result_payload(
    identity: Identity,
    seq: int,
    msg_id: str,
    sample: Sample,
    result: TaskResult,
    decision: Decision,
    latency_ms: float,
    state: DebouncedState | None = None,
    decided_by: dict[str, str] | None = None,
    ran_on: dict[str, str] | None = None,
) -> bytes:
    """`results`: the task's result, its status, which model produced it (`path`, and `decided_by` when a
    second model did), the model variant and delegate that ran it (`ran_on`) and, with debouncing, the stable
    state."""
    doc = _envelope(identity, seq, msg_id, sample)
    doc.update(task=result.task, result=result.to_dict(), **decision.to_dict(), latency_ms=round(latency_ms, 3))
    if decided_by is not None:
        doc["decided_by"] = decided_by
    if ran_on is not None:
        doc["ran_on"] = ran_on
    if state is not None:
        doc["state"] = state.to_dict()
    return _encode(doc)


def snapshot_payload(identity: Identity, sample: Sample, result: TaskResult, decision: Decision,
                     picture: dict[str, Any]) -> bytes:
    """`snapshot` (QoS 0, not stored; on the `snapshot` command): the latest result and its input, annotated."""
    doc = _base(identity, 0, "")
    del doc["seq"], doc["msg_id"]
    doc["input"] = {"source": sample.source, "id": sample.input_id, "captured_at": rfc3339(sample.ts)}
    doc.update(task=result.task, result=result.to_dict(), **decision.to_dict(), **picture)
    return _encode(doc)


def rejection_payload(identity: Identity, seq: int, msg_id: str, sample: Sample, verdict: Verdict) -> bytes:
    doc = _envelope(identity, seq, msg_id, sample)
    doc.update(reason=verdict.reason, detail=verdict.detail, metrics=verdict.metrics)
    return _encode(doc)


EVENT_SEVERITY = {
    "outbox_dropped": "warning",
    "dead_letter": "error",
    "outbox_replaced": "error",
    "outbox_recovered": "warning",
    "drift_detected": "warning",
    "thermal_backoff": "warning",
    "config_reload_failed": "error",
    "command_failed": "warning",
    "update_refused": "warning",
    "canary_failed": "warning",
    "shadow_failed": "warning",
    "model_promoted": "warning",
    "model_rolled_back": "error",
    "model_slot_unusable": "error",
    "model_slots_reset": "warning",
    "message_refused": "error",
    "commands_refused": "warning",
    "source_lost": "error",
    "accelerator_lost": "warning",
    "scene_problem": "warning",
}


def event_payload(identity: Identity, seq: int, msg_id: str, name: str, details: dict[str, Any]) -> bytes:
    """`events`: something happened to the device or its data that a person should know about."""
    doc = _base(identity, seq, msg_id)
    doc.update(event=name, severity=EVENT_SEVERITY.get(name, "info"), details=bounded_details(details))
    return _encode(doc)


def health_payload(identity: Identity, health: dict[str, Any]) -> bytes:
    """`health` (QoS 0, not stored): counters, rates and drift state, every `[health].interval` seconds."""
    doc: dict[str, Any] = {
        "v": PAYLOAD_VERSION,
        "device_id": identity.device_id,
        "boot_id": identity.boot_id,
        "ts": rfc3339(time.time()),
        "time_synced": time_synced(),
        "model": identity.model,
    }
    doc.update(health)
    return _encode(doc)


def status_payload(identity: Identity, state: str, **fields: Any) -> bytes:
    """Retained `status`: `online` (birth, with version/runtime/model) or `offline` (LWT, clean stop)."""
    doc: dict[str, Any] = {
        "v": PAYLOAD_VERSION,
        "device_id": identity.device_id,
        "boot_id": identity.boot_id,
        "state": state,
        "ts": rfc3339(time.time()),
        "time_synced": time_synced(),
        "model": identity.model,
    }
    doc.update(fields)
    return _encode(doc)
