"""What goes into and comes out of the outbox (`edge_infer.outbox`): its tables, its limits, a message waiting
to be committed, a stored row; and a count any thread may read."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_created ON messages (created);
CREATE TABLE IF NOT EXISTS processed (
    source TEXT NOT NULL,
    input_key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (source, input_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    created REAL NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    failed_at REAL NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES
    ('schema_version', 1), ('last_seq', 0), ('rows', 0), ('bytes', 0), ('event_rows', 0),
    ('dropped_max_rows', 0), ('dropped_max_bytes', 0), ('dropped_ttl', 0), ('dropped_purged', 0),
    ('dropped_events', 0),
    ('dead_letters', 0), ('dead_letters_dropped', 0);
-- added later: counted from what is there when an older database is opened
INSERT OR IGNORE INTO meta (key, value)
    SELECT 'event_bytes', COALESCE(SUM(size), 0) FROM messages WHERE kind = 'events';
INSERT OR IGNORE INTO meta (key, value)
    SELECT 'dead_letter_bytes', COALESCE(SUM(length(payload)), 0) FROM dead_letters;
"""


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
