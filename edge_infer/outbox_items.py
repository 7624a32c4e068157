"""What goes into and comes out of the outbox (`edge_infer.outbox`): its limits, a message waiting to be
committed, a stored row; and a count any thread may read."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Limits:
    max_rows: int = 100_000
    max_bytes: int = 64 * 1024 * 1024
    ttl_s: float = 7 * 24 * 3600.0
    policy: str = "drop-oldest"  # or "reject-new" (for data messages; events always drop oldest)
    max_event_rows: int = 10_000
    max_event_bytes: int | None = None  # None: max_bytes / 8, at least 256 KiB
    max_dead_letters: int = 1_000
    max_dead_letter_bytes: int | None = None  # None: max_bytes / 16, at least 256 KiB

    @property
    def event_bytes(self) -> int:
        return self.max_event_bytes if self.max_event_bytes is not None else max(self.max_bytes // 8, 256 * 1024)

    @property
    def dead_letter_bytes(self) -> int:
        return self.max_dead_letter_bytes if self.max_dead_letter_bytes is not None else \
            max(self.max_bytes // 16, 256 * 1024)


@dataclass(frozen=True)
class Row:
    seq: int
    kind: str
    msg_id: str
    payload: bytes


@dataclass(frozen=True)
class Pending:
    """A message waiting to be committed: its payload is built once its seq is known."""

    kind: str
    msg_id: str
    build: Callable[[int], bytes] | None  # None: record the checkpoint only (nothing to publish, no seq)
    checkpoint: tuple[str, str] | None = None
    after_commit: Callable[[], None] | None = None  # run by the writer once the transaction is durable
    forget_after: bool = False  # once `after_commit` succeeded the checkpoint is no longer needed (file moved)


def stored_count(path: Path | str) -> int:
    """Stored, unacknowledged messages, read on a short-lived read-only connection of its own (so any thread may
    ask); -1 when the outbox cannot be read. Closed at once: a lingering reader would keep the WAL from being
    checkpointed at exit."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)) as db:
            row = db.execute("SELECT COUNT(*) FROM messages").fetchone()
        return int(row[0]) if row else 0
    except sqlite3.Error:
        return -1
