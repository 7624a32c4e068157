"""For subscribers: check an edge-infer stream is complete.

Feed it every message received on `{prefix}/#`; it validates payloads against the shipped JSON Schema (when
`jsonschema` is installed), drops duplicates by `msg_id`, and reports, per device, the gaps in `seq` that no
`outbox_dropped` or `dead_letter` event explains. A gap nobody explains is a lost message.

    from edge_infer.audit import Auditor
    auditor = Auditor()
    auditor.feed(msg.topic, msg.payload)     # in your on_message
    auditor.report()                          # {"devices": {...}, "complete": True}
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

KINDS = {"results": "result", "rejections": "rejection", "events": "event", "status": "status"}
Validator = Callable[[str, dict[str, Any]], str | None]


@cache
def schema_validator() -> Validator | None:
    """A validator for the shipped schema, or None when jsonschema is not installed."""
    try:
        from jsonschema import Draft202012Validator
    except ImportError:
        return None
    doc = json.loads(resources.files("edge_infer").joinpath("schemas/messages.schema.json").read_text())
    validators = {
        kind: Draft202012Validator({"$ref": f"#/$defs/{name}", "$defs": doc["$defs"]}) for kind, name in KINDS.items()
    }

    def validate(kind: str, payload: dict[str, Any]) -> str | None:
        error = next(iter(validators[kind].iter_errors(payload)), None)
        return None if error is None else f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"

    return validate


def subtract(gap: tuple[int, int], covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of the inclusive range `gap` not covered by any of `covered`."""
    pieces = [gap]
    for lo, hi in covered:
        nxt = []
        for a, b in pieces:
            if hi < a or lo > b:
                nxt.append((a, b))
                continue
            if a < lo:
                nxt.append((a, lo - 1))
            if hi < b:
                nxt.append((hi + 1, b))
        pieces = nxt
    return pieces


@dataclass
class DeviceStream:
    seqs: set[int] = field(default_factory=set)
    msg_ids: set[str] = field(default_factory=set)
    duplicates: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    explained: list[tuple[int, int]] = field(default_factory=list)
    dropped: int = 0
    dead_letters: int = 0

    def gaps(self) -> list[tuple[int, int]]:
        ordered = sorted(self.seqs)
        missing: list[tuple[int, int]] = []
        for before, after in itertools.pairwise(ordered):
            if after > before + 1:
                missing.extend(subtract((before + 1, after - 1), self.explained))
        return missing


class Auditor:
    def __init__(self, validate: bool = True) -> None:
        self.validator = schema_validator() if validate else None
        self.devices: dict[str, DeviceStream] = {}
        self.invalid: list[str] = []
        self.messages = 0

    def feed(self, topic: str, payload: bytes) -> None:
        """Account for one received message."""
        self.messages += 1
        kind = topic.rsplit("/", 1)[-1]
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.invalid.append(f"{topic}: not JSON: {exc}")
            return
        if kind not in KINDS or not isinstance(doc, dict):
            return  # cmd/, health, ... : not part of the sequenced stream
        if self.validator is not None and (problem := self.validator(kind, doc)):
            self.invalid.append(f"{topic} seq={doc.get('seq')}: {problem}")
        if kind == "status":
            return
        device = self.devices.setdefault(str(doc.get("device_id")), DeviceStream())
        msg_id = doc.get("msg_id")
        if msg_id in device.msg_ids:
            device.duplicates += 1
            return
        device.msg_ids.add(msg_id)
        device.seqs.add(int(doc.get("seq", 0)))
        device.by_kind[kind] = device.by_kind.get(kind, 0) + 1
        if kind == "events":
            details = doc.get("details", {})
            if doc.get("event") == "outbox_dropped":
                ranges = [(int(a), int(b)) for a, b in details.get("seq_ranges", [])]
                device.explained.extend(ranges)
                device.dropped += sum(b - a + 1 for a, b in ranges)
            elif doc.get("event") == "outbox_replaced" and "seq_resumes_after" in details:
                device.explained.append((1, int(details["seq_resumes_after"])))  # lost with the corrupt file
            elif doc.get("event") == "dead_letter":
                device.explained.append((int(details["seq"]), int(details["seq"])))
                device.dead_letters += 1

    def report(self) -> dict[str, Any]:
        devices = {}
        for device_id, stream in sorted(self.devices.items()):
            gaps = stream.gaps()
            devices[device_id] = {
                "received": len(stream.seqs),
                "by_kind": stream.by_kind,
                "seq_first": min(stream.seqs) if stream.seqs else None,
                "seq_last": max(stream.seqs) if stream.seqs else None,
                "duplicates_dropped": stream.duplicates,
                "explained_drops": stream.dropped,
                "dead_letters": stream.dead_letters,
                "unexplained_gaps": [list(g) for g in gaps],
                "missing": sum(b - a + 1 for a, b in gaps),
            }
        return {
            "messages": self.messages,
            "schema_validation": self.validator is not None,
            "invalid": self.invalid[:100],
            "invalid_count": len(self.invalid),
            "devices": devices,
            "complete": not self.invalid and all(d["missing"] == 0 for d in devices.values()),
        }
