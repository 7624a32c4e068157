"""Remote commands on `{prefix}/{device_id}/cmd/<name>`: reload, snapshot, set-threshold, update-model.

Authentication (`[commands].auth`):
- `signed`: the payload is `{"body": "<JSON>", "key_id": …, "signature": …}` (see `edge_infer.signing`), the body
  `{"command", "device" (this id or "*"), "id", "issued" (unix seconds), "args"}`. The command must match the
  topic, the id must be new (replays are refused) and, once the clock is synced, `issued` within `max_age`.
  `update-model` chunks are not signed one by one: the bundle they assemble must carry a valid signature.
- `acl`: plain `{"id", "args"}`; the broker's ACL decides who may publish to the cmd topics (docs/operations.md).

Every command is answered on `events`: `command_done` (with what it did) or `command_failed` (with a reason).
The publisher thread only queues what arrives; commands run on the daemon's control thread.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_infer.clock import time_synced
from edge_infer.signing import SignatureError, verify_command
from edge_infer.updates import Transfer

if TYPE_CHECKING:
    from edge_infer.daemon import Daemon

log = logging.getLogger(__name__)
COMMANDS = ("reload", "snapshot", "set-threshold", "update-model")
TRANSFER_TIMEOUT_S = 300.0


class CommandError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Command:
    name: str
    id: str
    args: dict[str, Any] = field(default_factory=dict)


def _claimed_id(payload: bytes) -> str:
    """The id a message says it has (before any check), so that even a refusal answers the sender's id."""
    try:
        doc = json.loads(payload)
        if isinstance(doc, dict) and "body" in doc:
            doc = json.loads(doc["body"])
        return str(doc.get("id", "")) if isinstance(doc, dict) else ""
    except (ValueError, TypeError):
        return ""


class Commands:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        cfg = daemon.cfg
        self.auth = cfg.commands["auth"]
        self.max_age = cfg.commands["max_age"]
        self.keys = daemon.fleet_keys
        self.device_id = cfg.device["id"]
        self.prefix = f"{cfg.mqtt['topic_prefix']}/{self.device_id}/cmd/"
        self.seen: deque[str] = deque(maxlen=1000)
        self.transfer: Transfer | None = None

    def handle(self, topic: str, payload: bytes) -> None:
        """One inbound message: parse, authenticate, run, answer."""
        name = topic[len(self.prefix):] if topic.startswith(self.prefix) else topic
        command = Command(name, _claimed_id(payload))  # what a refusal is answered with
        try:
            if name == "update-model":  # chunks: the bundle's own signature is what is checked
                self._chunk(payload)
                return
            command = self.parse(name, payload)
            details = self.run(command)
        except CommandError as exc:
            self.answer(command, ok=False, reason=exc.reason, detail=exc.detail)
            return
        except Exception as exc:  # a command must never take the daemon down
            log.exception("event=command_error command=%s", name)
            self.answer(command, ok=False, reason="error", detail=f"{type(exc).__name__}: {exc}")
            return
        self.answer(command, ok=True, **details)

    def answer(self, command: Command, ok: bool, **details: Any) -> None:
        doc = {"command": command.name, "id": command.id, **details}
        if ok:
            log.info("event=command_done command=%s id=%s", command.name, command.id)
        else:
            log.warning("event=command_failed command=%s id=%s reason=%s detail=%r", command.name, command.id,
                        details.get("reason"), details.get("detail"))
        self.daemon.add_event("command_done" if ok else "command_failed", doc)

    def _decode(self, payload: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(payload or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CommandError("malformed", f"payload is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise CommandError("malformed", "payload is not a JSON object")
        return doc

    def parse(self, name: str, payload: bytes) -> Command:
        """Authenticate and decode a command (raises `CommandError`)."""
        doc = self._decode(payload)
        if self.auth == "signed":
            try:
                body = verify_command(doc, self.keys)
            except SignatureError as exc:
                raise CommandError(exc.reason, exc.detail) from None
            command = Command(name, str(body.get("id", "")), body.get("args") or {})
            if body.get("command") != name:
                raise CommandError("wrong_topic", f"signed for {body.get('command')!r}, sent to cmd/{name}")
            if body.get("device") not in (self.device_id, "*"):
                raise CommandError("wrong_device", f"signed for device {body.get('device')!r}")
            if not command.id:
                raise CommandError("malformed", "a signed command needs an id")
            if command.id in self.seen:
                raise CommandError("replayed", f"command id {command.id} was already run")
            issued = body.get("issued")
            if time_synced() and isinstance(issued, int | float) and abs(time.time() - issued) > self.max_age:
                raise CommandError("expired", f"issued {time.time() - issued:.0f} s ago (max_age {self.max_age} s)")
        else:
            command = Command(name, str(doc.get("id") or uuid.uuid4().hex[:12]), doc.get("args") or {})
        if not isinstance(command.args, dict):
            raise CommandError("malformed", "args must be a JSON object")
        self.seen.append(command.id)
        if name not in COMMANDS:
            raise CommandError("unknown_command", f"cmd/{name}: known commands are {', '.join(COMMANDS)}")
        return command

    def run(self, command: Command) -> dict[str, Any]:
        d = self.daemon
        if command.name == "reload":
            result = d.reload()
            if "error" in result:
                raise CommandError("config_invalid", str(result["error"]))
            return dict(result)
        if command.name == "snapshot":
            return d.snapshot()
        if command.name == "set-threshold":
            try:
                return d.set_threshold(command.args)
            except ValueError as exc:
                raise CommandError("invalid_args", str(exc)) from None
        raise CommandError("unknown_command", command.name)

    # ---- update-model over MQTT ------------------------------------------------------------------------------
    def _chunk(self, payload: bytes) -> None:
        doc = self._decode(payload)
        limit = self.daemon.cfg.update["max_bundle_bytes"]
        command = Command("update-model", str(doc.get("transfer", "")))
        if not self.daemon.cfg.update["enabled"] or self.daemon.updater is None:
            if doc.get("index") == 0:  # answered once per transfer
                self.answer(command, ok=False, reason="updates_disabled", detail="[update].enabled is false here")
            return
        try:
            if self.transfer is None or self.transfer.transfer != command.id:
                if self.transfer is not None:
                    self.answer(Command("update-model", self.transfer.transfer), ok=False, reason="superseded",
                                detail=f"a new transfer ({command.id}) began before this one was complete")
                self.transfer = Transfer.begin(doc, Path(self.daemon.cfg.update["slots_dir"]), limit, command.id)
            if not self.transfer.add(doc, limit):
                return
            transfer, self.transfer = self.transfer, None
            path = transfer.finish(Path(self.daemon.cfg.update["incoming_dir"]))
        except (KeyError, TypeError, ValueError) as exc:
            self.transfer = None
            self.answer(command, ok=False, reason="bad_transfer", detail=str(exc)[:300])
            return
        outcome = self.daemon.updater.offer(path, "mqtt")
        if outcome.get("ok"):
            self.answer(command, ok=True, step=outcome["step"], model=outcome["model"], canary=outcome["canary"])
        else:
            self.answer(command, ok=False, reason=outcome["reason"], detail=outcome["detail"])

    def tick(self) -> None:
        """An unfinished transfer that went quiet is given up (control thread, every loop)."""
        t = self.transfer
        if t is not None and time.monotonic() - t.started > TRANSFER_TIMEOUT_S:
            self.transfer = None
            t.path.unlink(missing_ok=True)
            self.answer(Command("update-model", t.transfer), ok=False, reason="incomplete",
                        detail=f"{len(t.received)} of {t.count} chunks arrived in {TRANSFER_TIMEOUT_S:.0f} s")
