"""Sinks: where stored messages go. Each is one module holding its settings and its thread.

A sink drains the transport-neutral outbox (`edge_infer.outbox`): it reads rows in seq order, deletes a row only
once its receiver took it, dead-letters a row the receiver refuses for what it is, and keeps everything while
the receiver is away. `[sink].type` picks one: `mqtt` (`edge_infer.sinks.mqtt`, the default: results, retained
status, Home Assistant discovery, kept-input uploads, and the command topics into the inbox) or `webhook`
(`edge_infer.sinks.webhook`: an HTTP POST per message).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from edge_infer.options import opt

TYPES = ("mqtt", "webhook")  # `[sink].type`: one module each, by name (memory.py is for programs, not configs)


@dataclass(frozen=True, kw_only=True)
class SinkConfig:
    """`[sink]`: the keys every sink has. A sink module's `Options` subclasses it with its own keys."""

    type: str = opt("mqtt", choices=TYPES)


class Sink(Protocol):
    """What the daemon needs of a sink. It runs as its own thread (`start`, `is_alive`, `stop`)."""

    name: str
    published: int  # messages the receiver took
    dead_lettered: int  # messages the receiver refused for good (kept in the dead-letter table)

    def start(self) -> None: ...

    def is_alive(self) -> bool: ...

    def stop(self, timeout: float = 10.0) -> None:
        """Send what can be sent quickly (a goodbye where the transport has one) and end the thread."""

    def notify(self) -> None:
        """New rows were committed (called by the writer's thread)."""

    def offer(self, kind: str, payload: bytes) -> None:
        """A snapshot (`health`, `snapshot`): sent once when possible, never stored; a newer one replaces it."""

    def retain(self, kind: str, payload: bytes) -> None:
        """The latest value of a state-like topic (`image`, `state/<label>`): shown where the transport keeps
        latest values (MQTT: retained, sent again on every connect); never stored in the outbox."""

    def set_problem(self, name: str, text: str | None) -> None:
        """Raise (text) or clear (None) a condition the sink shows where its transport can (MQTT: the retained
        status)."""

    def problems(self) -> list[str]:
        """The conditions raised and not cleared, as `name: text` lines (`health` lists them)."""

    def refresh(self, discovery: list[tuple[str, bytes]]) -> None:
        """The served model changed: announce it again where the transport announces anything."""

    def unreachable(self) -> bool:
        """True while the receiver cannot be reached (a draining `--once` run stops waiting)."""

    def uploading(self) -> bool:
        """Kept inputs are still being uploaded."""
