"""Remote commands on `{prefix}/{device_id}/cmd/<name>`: reload, snapshot, set-threshold, update-model.

Authentication (`[commands].auth`):
- `signed`: the payload is `{"body": "<JSON>", "key_id": …, "signature": …}` (see `edge_infer.signing`), the body
  `{"command", "device" (this id or "*"), "id", "issued" (unix seconds), "args"}`. The command must match the
  topic and pass the replay checks of `edge_infer.control.replay` (new id, `issued` required and recent), which persist
  across restarts.
- `acl`: plain `{"id", "args"}`; the broker's ACL decides who may publish to the cmd topics (docs/security.md).
`update-model` is always signed, whatever `auth` says: a signed transfer header, then chunks it vouches for
(`edge_infer.control.transfer`).

Everything that arrives is hostile until authenticated: it is bounded in size before it is read (the inbox),
and nothing of it is echoed unchecked — a refusal names the sender's id only if it is a plain id, and details are
shortened. Every command is answered on `events` (`command_done` / `command_failed`); refusals of messages that
were never authenticated are answered individually up to `ANSWERED_PER_WINDOW` a minute and then counted into
one `commands_refused` event per minute, so a flood cannot flood the outbox, the log or the broker.
The sink only queues what arrives (the inbox); commands run on the daemon's control thread. What a command does
is a handler from the table the app gives (`reload`, `snapshot`, `set-threshold`); `update-model` is handed to
the `Updater`.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_infer.config import Config
from edge_infer.control import AddEvent
from edge_infer.control.replay import Refused, ReplayGuard
from edge_infer.control.transfer import Header, Transfer, TransferError
from edge_infer.control.updates import Updater
from edge_infer.inbox import Inbox
from edge_infer.messages import clean_text
from edge_infer.signing import SignatureError, verify_command

log = logging.getLogger(__name__)
COMMANDS = ("reload", "snapshot", "set-threshold", "update-model")
TRANSFER_TIMEOUT_S = 300.0  # an unfinished transfer silent this long is given up
PLAIN_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
REFUSAL_WINDOW_S = 60.0
ANSWERED_PER_WINDOW = 10
MAX_JSON_DEPTH = 32


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


def plain_id(value: Any) -> str:
    """`value` if it is a plain id (letters, digits, `_.:-`, at most 64), else "" — safe to echo."""
    return value if isinstance(value, str) and PLAIN_ID.fullmatch(value) else ""


def decode_json(payload: bytes) -> dict[str, Any]:
    """A JSON object from an unauthenticated payload (raises `CommandError("malformed", …)`); nesting deeper than
    `MAX_JSON_DEPTH` is refused before parsing, so no payload can exhaust the parser's recursion."""
    depth = deepest = 0
    shallow = payload.count(b"[") + payload.count(b"{") <= MAX_JSON_DEPTH  # cannot nest deeper: skip the scan
    for byte in b"" if shallow else payload:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    if deepest > MAX_JSON_DEPTH:
        raise CommandError("malformed", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        doc = json.loads(payload or b"{}")
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CommandError("malformed", f"payload is not JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise CommandError("malformed", "payload is not a JSON object")
    return doc


def _claimed_id(payload: bytes) -> str:
    """The id a message says it has (before any check), if it is a plain id: a refusal answers it."""
    try:
        doc = decode_json(payload)
        if "body" in doc and isinstance(doc["body"], str):
            doc = decode_json(doc["body"].encode("utf-8", "replace"))
    except CommandError:
        return ""
    return plain_id(doc.get("id")) or plain_id(doc.get("transfer"))


Handler = Callable[[dict[str, Any]], dict[str, Any]]  # args → answer details; raises CommandError or ValueError


class Commands:
    """Parses, authenticates and runs what arrives on the cmd topics; answers every command on `events`."""

    def __init__(self, cfg: Config, keys: list, add_event: AddEvent, inbox: Inbox | None,
                 handlers: dict[str, Handler], updater: Updater | None = None) -> None:
        self.cfg = cfg
        self.add_event = add_event
        self.inbox = inbox
        self.handlers = handlers
        self.updater = updater
        self.auth = cfg.commands.auth
        self.keys = keys
        self.device_id = cfg.device.id
        self.prefix = f"{cfg.mqtt.topic_prefix}/{self.device_id}/cmd/"
        self.guard = ReplayGuard(Path(cfg.device.state_dir) / "commands.json", cfg.commands.max_age)
        self.transfer: Transfer | None = None
        self._window_start = time.monotonic()
        self._answered = 0
        self._counted: Counter[str] = Counter()

    def handle(self, topic: str, payload: bytes) -> None:
        """One inbound message: parse, authenticate, run, answer. Never raises."""
        name = topic[len(self.prefix):] if topic.startswith(self.prefix) else topic
        shown = name if name in COMMANDS else clean_text(name, 40)
        command = Command(shown, _claimed_id(payload))  # what a refusal is answered with
        try:
            if name == "update-model":
                self._update(payload)
                return
            command = self.parse(name, payload)
        except CommandError as exc:
            self.refuse(command, exc.reason, exc.detail)
            return
        except Exception as exc:  # a message must never take the control thread down
            log.exception("event=command_error command=%s", shown)
            self.refuse(command, "error", type(exc).__name__)
            return
        try:
            details = self.run(command)
        except CommandError as exc:
            self.answer(command, ok=False, reason=exc.reason, detail=exc.detail)
            return
        except Exception as exc:
            log.exception("event=command_error command=%s", shown)
            self.answer(command, ok=False, reason="error", detail=f"{type(exc).__name__}: {exc}")
            return
        self.answer(command, ok=True, **details)

    def answer(self, command: Command, ok: bool, **details: Any) -> None:
        doc = {"command": command.name, "id": command.id, **details}
        if "detail" in doc:
            doc["detail"] = clean_text(doc["detail"])
        if ok:
            log.info("event=command_done command=%s id=%s", command.name, command.id)
        else:
            log.warning("event=command_failed command=%s id=%s reason=%s detail=%r", command.name, command.id,
                        details.get("reason"), doc.get("detail"))
        self.add_event("command_done" if ok else "command_failed", doc)

    def refuse(self, command: Command, reason: str, detail: str) -> None:
        """A message that was never authenticated is refused: answered while under the per-minute allowance,
        counted into the next `commands_refused` event after that."""
        self.tick()
        if self._answered < ANSWERED_PER_WINDOW:
            self._answered += 1
            self.answer(command, ok=False, reason=reason, detail=detail)
        else:
            self._counted[reason] += 1

    def _report_refusals(self) -> None:
        if self.inbox is not None:
            self._counted.update(self.inbox.take_turned_away())
        if self._counted:
            total = sum(self._counted.values())
            reasons = dict(self._counted.most_common())
            log.warning("event=commands_refused count=%d window_s=%.0f reasons=%s", total, REFUSAL_WINDOW_S,
                        ",".join(f"{k}:{v}" for k, v in reasons.items()))
            self.add_event("commands_refused", {"count": total, "window_s": REFUSAL_WINDOW_S,
                                                       "reasons": reasons})
        self._counted = Counter()

    def parse(self, name: str, payload: bytes) -> Command:
        """Authenticate and decode a command (raises `CommandError`)."""
        doc = decode_json(payload)
        if name not in COMMANDS:
            raise CommandError("unknown_command", f"known commands are {', '.join(COMMANDS)}")
        if self.auth == "signed":
            body = self._verified(doc, name)
            command = Command(name, plain_id(body.get("id")), body.get("args") or {})
        else:
            given = doc.get("id")
            if given is not None and not plain_id(given):
                raise CommandError("malformed", "id: expected 1-64 letters, digits, '_', '.', ':' or '-'")
            command = Command(name, plain_id(given) or uuid.uuid4().hex[:12], doc.get("args") or {})
        if not isinstance(command.args, dict):
            raise CommandError("malformed", "args must be a JSON object")
        return command

    def _verified(self, doc: dict[str, Any], name: str) -> dict[str, Any]:
        """A signed body for `name` addressed to this device, admitted by the replay guard."""
        try:
            body, signer = verify_command(doc, self.keys)
        except SignatureError as exc:
            raise CommandError(exc.reason, exc.detail) from None
        if body.get("command") != name:
            raise CommandError("wrong_topic", f"signed for another command, sent to cmd/{name}")
        if body.get("device") not in (self.device_id, "*"):
            raise CommandError("wrong_device", "signed for another device")
        if not plain_id(body.get("id")):
            raise CommandError("malformed", "a signed command needs a plain id (1-64 letters, digits, '_.:-')")
        try:
            self.guard.admit(signer, body["id"], body.get("issued"))
        except Refused as exc:
            raise CommandError(exc.reason, exc.detail) from None
        return body

    def run(self, command: Command) -> dict[str, Any]:
        """The handler's answer (raises `CommandError`; a handler's ValueError is `invalid_args`)."""
        handler = self.handlers.get(command.name)
        if handler is None:
            raise CommandError("unknown_command", command.name)
        try:
            return handler(command.args)
        except ValueError as exc:
            raise CommandError("invalid_args", str(exc)) from None

    # ---- update-model over MQTT ------------------------------------------------------------------------------
    def _update(self, payload: bytes) -> None:
        """A signed transfer header, or a chunk of the transfer it opened (raises `CommandError` to refuse)."""
        update = self.cfg.update
        if not update.enabled or self.updater is None:
            raise CommandError("updates_disabled", "[update].enabled is false here")
        doc = decode_json(payload)
        if "signature" in doc or "body" in doc:
            self._begin(doc, update)
            return
        if self.transfer is None or doc.get("transfer") != self.transfer.id:
            raise CommandError("no_transfer", "a chunk for a transfer no signed header opened")
        try:
            complete = self.transfer.add(doc)
        except TransferError as exc:
            raise CommandError("bad_chunk", str(exc)) from None
        if complete:
            self._complete()

    def _begin(self, doc: dict[str, Any], update: dict[str, Any]) -> None:
        body, signer = self._signed_header(doc)
        limit = self.cfg.commands.max_message_bytes // 2  # base64 and JSON around the raw bytes
        try:
            header = Header.parse(body.get("args"), body.get("issued"), update.max_bundle_bytes, limit)
        except TransferError as exc:
            raise CommandError("bad_transfer", str(exc)) from None
        current = self.transfer
        if current is not None and header.issued <= current.header.issued:
            raise CommandError("busy", "a transfer issued later is in progress")
        try:
            self.guard.admit(signer, f"transfer:{header.transfer}", header.issued)
        except Refused as exc:
            raise CommandError(exc.reason, exc.detail) from None
        if current is not None:
            current.abandon()
            self.answer(Command("update-model", current.id), ok=False, reason="superseded",
                        detail=f"a newer signed transfer ({header.transfer}) began before this one was complete")
        self.transfer = Transfer.begin(header, Path(update.slots_dir))
        log.info("event=update_transfer_started transfer=%s bytes=%d chunks=%d signed_by=%s", header.transfer,
                 header.size, len(header.chunks), signer)

    def _signed_header(self, doc: dict[str, Any]) -> tuple[dict[str, Any], str]:
        try:
            body, signer = verify_command(doc, self.keys)
        except SignatureError as exc:
            raise CommandError(exc.reason, exc.detail) from None
        if body.get("command") != "update-model":
            raise CommandError("wrong_topic", "signed for another command, sent to cmd/update-model")
        if body.get("device") not in (self.device_id, "*"):
            raise CommandError("wrong_device", "signed for another device")
        return body, signer

    def _complete(self) -> None:
        transfer, self.transfer = self.transfer, None
        assert transfer is not None and self.updater is not None
        command = Command("update-model", transfer.id)
        try:
            path = transfer.finish(Path(self.cfg.update.incoming_dir))
        except TransferError as exc:
            self.answer(command, ok=False, reason="bad_transfer", detail=str(exc))
            return
        outcome = self.updater.take(path, "mqtt")
        if outcome.get("ok"):
            self.answer(command, ok=True, step=outcome["step"], model=outcome["model"], canary=outcome["canary"])
        else:
            self.answer(command, ok=False, reason=outcome["reason"], detail=outcome["detail"])

    def tick(self) -> None:
        """Control thread, every loop: give up a transfer that went quiet; report refusals once a minute."""
        t = self.transfer
        if t is not None and time.monotonic() - t.last_chunk > TRANSFER_TIMEOUT_S:
            self.transfer = None
            t.abandon()
            self.answer(Command("update-model", t.id), ok=False, reason="incomplete",
                        detail=f"{len(t.received)} of {len(t.header.chunks)} chunks arrived; none for "
                               f"{TRANSFER_TIMEOUT_S:.0f} s")
        if time.monotonic() - self._window_start >= REFUSAL_WINDOW_S:
            self._report_refusals()
            self._window_start = time.monotonic()
            self._answered = 0
