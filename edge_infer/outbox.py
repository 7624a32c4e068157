"""The durable outbox: every message is committed here before anything is handed to MQTT, and deleted only
once the broker acknowledged it. Source checkpoints are written in the same transaction as the message they
produced, so a crash can never lose an input nor publish it without recording it.

One `Outbox` object per thread (SQLite connections are not shared); WAL lets the publisher read while the
pipeline writes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
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
    payload BLOB NOT NULL
);
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
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', 1), ('last_seq', 0);
"""
DURABILITY = {"full": "FULL", "normal": "NORMAL"}


class OutboxError(Exception):
    """The outbox database cannot be opened or used; the message names the file."""


@dataclass(frozen=True)
class Row:
    seq: int
    kind: str
    msg_id: str
    payload: bytes


class Outbox:
    def __init__(self, path: Path | str, durability: str = "full", busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={DURABILITY[durability]}")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"{self.path}: cannot open outbox database: {exc}") from None
        except OSError as exc:
            raise OutboxError(f"{self.path}: cannot create outbox directory: {exc.strerror}") from None
        version = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise OutboxError(f"{self.path}: outbox schema {version} is newer than this edge-infer supports")

    def close(self) -> None:
        self._db.close()

    def commit(
        self,
        kind: str,
        msg_id: str,
        build_payload: Callable[[int], bytes],
        checkpoint: tuple[str, str] | None = None,
    ) -> int:
        """Allocate the next seq, store `build_payload(seq)` and the source checkpoint atomically."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            seq = db.execute(
                "UPDATE meta SET value = value + 1 WHERE key = 'last_seq' RETURNING value"
            ).fetchone()[0]
            now = time.time()
            db.execute(
                "INSERT INTO messages (seq, kind, msg_id, created, payload) VALUES (?, ?, ?, ?, ?)",
                (seq, kind, msg_id, now, build_payload(seq)),
            )
            if checkpoint is not None:
                db.execute(
                    "INSERT OR REPLACE INTO processed (source, input_key, seq, at) VALUES (?, ?, ?, ?)",
                    (checkpoint[0], checkpoint[1], seq, now),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return seq

    def is_processed(self, source: str, input_key: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM processed WHERE source = ? AND input_key = ?", (source, input_key)
        ).fetchone()
        return row is not None

    def pending(self, after_seq: int, limit: int) -> list[Row]:
        """Queued messages in seq order, after `after_seq`."""
        rows = self._db.execute(
            "SELECT seq, kind, msg_id, payload FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [Row(seq, kind, msg_id, bytes(payload)) for seq, kind, msg_id, payload in rows]

    def delete(self, seqs: Iterable[int]) -> None:
        """Forget acknowledged messages."""
        batch = [(s,) for s in seqs]
        if batch:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM messages WHERE seq = ?", batch)
            self._db.execute("COMMIT")

    def dead_letter(self, seq: int, reason: str) -> None:
        """Move a message the broker refused out of the queue, keeping it for inspection."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT OR REPLACE INTO dead_letters (seq, kind, msg_id, created, payload, reason, failed_at) "
            "SELECT seq, kind, msg_id, created, payload, ?, ? FROM messages WHERE seq = ?",
            (reason, time.time(), seq),
        )
        db.execute("DELETE FROM messages WHERE seq = ?", (seq,))
        db.execute("COMMIT")

    def backlog(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def last_seq(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0])

    def dead_letter_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])
