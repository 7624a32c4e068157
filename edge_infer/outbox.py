"""The durable outbox: every message is committed here before anything is handed to MQTT, and deleted only
once the broker acknowledged it. Source checkpoints are written in the same transaction as the message they
produced, so a crash can never lose an input nor publish it without recording it.

- `seq` is allocated inside the committing transaction (any connection), strictly increasing, never reused —
  not even after a corrupt database is replaced: a small sidecar file (`<db>.seq`) keeps a reserved floor.
- Bounds (`max_rows`, `max_bytes`, `ttl`) apply to data messages (results, rejections); when one is crossed the
  oldest are dropped (`drop-oldest`) or the new one is (`reject-new`). Every drop is counted persistently and
  recorded as an `outbox_dropped` event naming the dropped seq ranges, so a subscriber can tell a gap that was
  explained from one that was not. Events (the alerts) are dropped last, and only by their own cap.
- Events and dead letters have row and byte caps of their own, so the size on disk is bounded whatever arrives
  (docs/security.md). Only inputs that can be offered again (files) are checkpointed.
- One `Outbox` per thread (SQLite connections are not shared); WAL lets the publisher read while the writer
  commits. The primary (the daemon's writer) checks integrity on open and holds an exclusive lock file.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edge_infer.outbox_items import SCHEMA, SCHEMA_VERSION, Limits, Pending, Row

__all__ = ["EVENTS", "Limits", "Outbox", "OutboxError", "OutboxFull", "Pending", "Row"]
WAL_LIMIT_BYTES = 4 * 1024 * 1024  # the WAL is truncated to this after a checkpoint
CACHE_KIB = 512  # page cache per connection (SQLite's default is 2 MiB): appends and head reads need little
DURABILITY = {"full": "FULL", "normal": "NORMAL"}
EVENTS = "events"
SEQ_RESERVE = 10_000
# Builds an event payload: (seq, msg_id, event name, details) → bytes. The daemon supplies it (it knows the
# envelope); see `edge_infer.messages.event_payload`.
EventBuilder = Callable[[int, str, str, dict[str, Any]], bytes]


class OutboxError(Exception):
    """The outbox cannot be opened or used; the message names the file. `transient`: the disk may come back
    (a directory or database that cannot be opened or created) — a restart may succeed."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class OutboxFull(OutboxError):
    """The disk (or the database's page limit) is full: the commit was rolled back, nothing was lost."""


def _ranges(seqs: list[int]) -> list[list[int]]:
    """[1,2,3,7,8] → [[1,3],[7,8]]"""
    out: list[list[int]] = []
    for s in sorted(seqs):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def _is_full(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "full" in text or "no space" in text or getattr(exc, "sqlite_errorcode", 0) == 13  # SQLITE_FULL


class Outbox:
    def __init__(
        self,
        path: Path | str,
        durability: str = "full",
        limits: Limits | None = None,
        event_builder: EventBuilder | None = None,
        primary: bool = False,
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.limits = limits or Limits()
        self.event_builder = event_builder
        self.replaced: dict[str, Any] | None = None  # set when a corrupt database was moved aside
        self._lock_fd: int | None = None
        self._counts: dict[str, int] | None = None  # the meta counters inside a transaction (see `_transaction`)
        self._changed: set[str] = set()
        self._seq_file = self.path.with_name(self.path.name + ".seq")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"{self.path.parent}: cannot create outbox directory: {exc.strerror}",
                              transient=True) from None
        if primary:
            self._take_lock()
        try:
            self._db = self._connect(durability, busy_timeout_s, check=primary)
        except sqlite3.DatabaseError as exc:
            if not primary:
                raise OutboxError(f"{self.path}: cannot open outbox database: {exc}", transient=True) from None
            self._db = self._replace_corrupt(str(exc), durability, busy_timeout_s)
        version = self._meta("schema_version")
        if version > SCHEMA_VERSION:
            raise OutboxError(f"{self.path}: outbox schema {version} is newer than this edge-infer supports")
        if primary:
            self._apply_seq_floor()

    # ---- opening ----------------------------------------------------------------------------------------
    def _take_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutboxError(
                f"{self.path}: outbox is in use by another edge-infer process (pid {holder}); "
                "two daemons cannot share one state_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _connect(self, durability: str, busy_timeout_s: float, check: bool) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        try:
            if check:
                result = db.execute("PRAGMA quick_check").fetchone()[0]
                if result != "ok":
                    raise sqlite3.DatabaseError(f"quick_check: {result}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={DURABILITY[durability]}")
            db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _replace_corrupt(self, why: str, durability: str, busy_timeout_s: float) -> sqlite3.Connection:
        """Move a corrupt database aside (kept for inspection) and start a fresh one."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        kept = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(kept) + suffix))
        self.replaced = {"reason": why[:300], "kept_as": str(kept)}
        try:
            return self._connect(durability, busy_timeout_s, check=False)
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"{self.path}: cannot create a fresh outbox database: {exc}", transient=True) from None

    def _apply_seq_floor(self) -> None:
        """A fresh database (first start, deleted, or a corrupt one moved aside) continues above every seq
        ever reserved, so a seq is never reused. A healthy database keeps its own count."""
        try:
            floor = int(self._seq_file.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            floor = 0
        last = self._meta("last_seq")
        if last == 0 and floor > 0:
            self._set("last_seq", floor)
            if self.replaced is not None:
                self.replaced["seq_resumes_after"] = floor
            last = floor
        self._reserved = last

    def _reserve(self, upto: int) -> None:
        if upto <= getattr(self, "_reserved", 0):
            return
        bound = upto + SEQ_RESERVE
        tmp = self._seq_file.with_name(self._seq_file.name + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(f"{bound}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._seq_file)
        self._reserved = bound

    def close(self) -> None:
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- helpers ------------------------------------------------------------------------------------------
    def _meta(self, key: str) -> int:
        if self._counts is not None:  # inside a transaction: the counter as this transaction left it
            return self._counts[key]
        return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def _set(self, key: str, value: int) -> None:
        """Inside a transaction a counter changes in memory and is written once, just before the commit."""
        if self._counts is None:
            self._db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
        else:
            self._counts[key] = value
            self._changed.add(key)

    def _bump(self, key: str, by: int) -> None:
        """Add `by` to a counter (inside a transaction: every caller runs in one)."""
        if by:
            self._set(key, self._meta(key) + by)

    def _next_seqs(self, n: int) -> list[int]:
        """`n` fresh seqs (inside a transaction: allocated by its commit)."""
        last = self._meta("last_seq") + n
        self._set("last_seq", last)
        self._reserve(last)
        return list(range(last - n + 1, last + 1))

    def _insert(self, seq: int, kind: str, msg_id: str, payload: bytes, now: float) -> None:
        """Insert one message; `rows`/`bytes` count data messages (what the caps limit), `event_rows` events."""
        self._db.execute(
            "INSERT INTO messages (seq, kind, msg_id, created, size, payload) VALUES (?, ?, ?, ?, ?, ?)",
            (seq, kind, msg_id, now, len(payload), payload),
        )
        if kind == EVENTS:
            self._bump("event_rows", 1)
            self._bump("event_bytes", len(payload))
        else:
            self._bump("rows", 1)
            self._bump("bytes", len(payload))

    def _delete_rows(self, where: str, params: Iterable[Any]) -> list[int]:
        rows = self._db.execute(
            f"DELETE FROM messages WHERE {where} RETURNING seq, size, kind", tuple(params)
        ).fetchall()
        data = [(seq, size) for seq, size, kind in rows if kind != EVENTS]
        self._bump("rows", -len(data))
        self._bump("bytes", -sum(size for _, size in data))
        self._bump("event_rows", -(len(rows) - len(data)))
        self._bump("event_bytes", -sum(size for _, size, kind in rows if kind == EVENTS))
        return [seq for seq, _, _ in rows]

    def _oldest(self, sql: str, params: tuple[Any, ...], rows: int, size: int) -> tuple[list[int], int]:
        """The oldest (seq, size) rows `sql` yields until at least `rows` rows and `size` bytes are covered:
        their seqs and their total size."""
        victims: list[int] = []
        freed = 0
        for seq, nbytes in self._db.execute(sql, params):
            if len(victims) >= rows and freed >= size:
                break
            victims.append(seq)
            freed += nbytes
        return victims, freed

    def _transaction(self, work: Callable[[], Any]) -> Any:
        """Run `work` in one write transaction. The meta counters are read once at its start (the write lock is
        held: no other connection changes them meanwhile), kept in memory and the changed ones written back just
        before the commit: two statements per transaction instead of four per message."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _is_full(exc):
                raise OutboxFull(f"{self.path}: disk full: {exc}") from None
            raise
        try:
            self._counts, self._changed = dict(self._db.execute("SELECT key, value FROM meta").fetchall()), set()
            result = work()
            if self._changed:
                self._db.executemany("UPDATE meta SET value = ? WHERE key = ?",
                                     [(self._counts[key], key) for key in sorted(self._changed)])
            self._db.execute("COMMIT")
            return result
        except BaseException as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error) and _is_full(exc):
                raise OutboxFull(f"{self.path}: disk full: {exc}") from None
            raise
        finally:
            self._counts = None

    # ---- writing ------------------------------------------------------------------------------------------
    def commit(self, kind: str, msg_id: str, build: Callable[[int], bytes],
               checkpoint: tuple[str, str] | None = None) -> int:
        """Commit one message (and its checkpoint); returns its seq."""
        return self.commit_batch([Pending(kind, msg_id, build, checkpoint)])[0]

    def commit_batch(self, items: list[Pending]) -> list[int]:
        """Commit many messages in one transaction (one fsync): group commit. Returns their seqs."""
        return self._transaction(lambda: self._commit_batch(items))

    def _commit_batch(self, items: list[Pending]) -> list[int]:
        now = time.time()
        fresh = iter(self._next_seqs(sum(item.build is not None for item in items)))
        seqs = [0 if item.build is None else next(fresh) for item in items]
        dropped: dict[str, list[int]] = {}
        for seq, item in zip(seqs, items, strict=True):
            payload = item.build(seq) if item.build is not None else None
            if payload is None:
                pass
            elif item.kind == EVENTS or self._make_room(len(payload), dropped):
                self._insert(seq, item.kind, item.msg_id, payload, now)
            else:
                over_rows = self._meta("rows") + 1 > self.limits.max_rows
                dropped.setdefault("max_rows" if over_rows else "max_bytes", []).append(seq)
            if item.checkpoint is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO processed (source, input_key, seq, at) VALUES (?, ?, ?, ?)",
                    (item.checkpoint[0], item.checkpoint[1], seq, now),
                )
        self._record_drops(dropped, now)
        return seqs

    def _make_room(self, incoming: int, dropped: dict[str, list[int]]) -> bool:
        """Apply the caps for one incoming data message, dropping exactly as many of the oldest data messages
        as needed (drop-oldest). False: the new message is dropped instead (reject-new, or no room possible)."""
        limits = self.limits
        need_rows = self._meta("rows") + 1 - limits.max_rows
        need_bytes = self._meta("bytes") + incoming - limits.max_bytes
        if need_rows <= 0 and need_bytes <= 0:
            return True
        if limits.policy == "reject-new" or incoming > limits.max_bytes:
            return False
        victims, freed_bytes = self._oldest("SELECT seq, size FROM messages WHERE kind != ? ORDER BY seq", (EVENTS,),
                                            need_rows, need_bytes)
        if len(victims) < need_rows or freed_bytes < need_bytes:
            return False
        self._delete_rows(f"seq IN ({','.join('?' * len(victims))})", victims)
        dropped.setdefault("max_rows" if need_rows > 0 else "max_bytes", []).extend(victims)
        return True

    def expire(self) -> int:
        """Drop data messages older than the TTL (recorded like any other drop). Returns how many."""
        cutoff = time.time() - self.limits.ttl_s

        def work() -> int:
            victims = self._delete_rows("created < ? AND kind != ?", (cutoff, EVENTS))
            if victims:
                self._record_drops({"ttl": victims}, time.time())
            return len(victims)

        return self._transaction(work)

    def _record_drops(self, dropped: dict[str, list[int]], now: float) -> None:
        for reason, seqs in dropped.items():
            self._bump(f"dropped_{reason}", len(seqs))
            self._add_event("outbox_dropped", {"reason": reason, "count": len(seqs), "seq_ranges": _ranges(seqs),
                                               "policy": self.limits.policy}, now)
        self._cap_events()

    def _cap_events(self) -> None:
        """Events beyond their row or byte cap: the oldest go (counted in `dropped_events`)."""
        limits = self.limits
        over_rows = self._meta("event_rows") - limits.max_event_rows
        over_bytes = self._meta("event_bytes") - limits.event_bytes
        if over_rows <= 0 and over_bytes <= 0:
            return
        victims, _ = self._oldest("SELECT seq, size FROM messages WHERE kind = ? ORDER BY seq", (EVENTS,),
                                  over_rows, over_bytes)
        self._delete_rows(f"seq IN ({','.join('?' * len(victims))})", victims)
        self._bump("dropped_events", len(victims))

    def _add_event(self, name: str, details: dict[str, Any], now: float) -> int | None:
        if self.event_builder is None:
            return None
        seq, msg_id = self._next_seqs(1)[0], uuid.uuid4().hex
        self._insert(seq, EVENTS, msg_id, self.event_builder(seq, msg_id, name, details), now)
        return seq

    def add_event(self, name: str, details: dict[str, Any]) -> int | None:
        """Commit an event message (e.g. the outbox was replaced, a message was dead-lettered)."""

        def work() -> int | None:
            seq = self._add_event(name, details, time.time())
            self._cap_events()
            return seq

        return self._transaction(work)

    def forget(self, checkpoints: list[tuple[str, str]]) -> None:
        """Drop checkpoints that are no longer needed (their file was moved or deleted after the commit)."""
        if checkpoints:
            self._transaction(lambda: self._db.executemany(
                "DELETE FROM processed WHERE source = ? AND input_key = ?", checkpoints))

    # ---- reading and acknowledging ------------------------------------------------------------------------
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
        batch = list(seqs)
        if batch:
            self._transaction(lambda: self._delete_rows(f"seq IN ({','.join('?' * len(batch))})", batch))

    def dead_letter(self, seq: int, reason: str) -> None:
        """Move a message the broker refused out of the queue, keep it for inspection, say so in an event."""
        reason = reason[:300]

        def work() -> None:
            row = self._db.execute("SELECT kind, msg_id FROM messages WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return
            self._db.execute(
                "INSERT OR REPLACE INTO dead_letters (seq, kind, msg_id, created, payload, reason, failed_at) "
                "SELECT seq, kind, msg_id, created, payload, ?, ? FROM messages WHERE seq = ?",
                (reason, time.time(), seq),
            )
            self._delete_rows("seq = ?", (seq,))
            self._bump("dead_letters", 1)
            self._bump("dead_letter_bytes", self._db.execute(
                "SELECT length(payload) FROM dead_letters WHERE seq = ?", (seq,)).fetchone()[0])
            self._cap_dead_letters()
            self._add_event("dead_letter", {"seq": seq, "msg_id": row[1], "kind": row[0], "reason": reason},
                            time.time())
            self._cap_events()

        self._transaction(work)

    def _cap_dead_letters(self) -> None:
        """Dead letters beyond their row or byte cap: the oldest go (counted in `dead_letters_dropped`)."""
        limits = self.limits
        over_rows = self._db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] - limits.max_dead_letters
        over_bytes = self._meta("dead_letter_bytes") - limits.dead_letter_bytes
        if over_rows <= 0 and over_bytes <= 0:
            return
        victims, freed = self._oldest("SELECT seq, length(payload) FROM dead_letters ORDER BY seq", (),
                                      over_rows, over_bytes)
        self._db.execute(f"DELETE FROM dead_letters WHERE seq IN ({','.join('?' * len(victims))})", victims)
        self._bump("dead_letter_bytes", -freed)
        self._bump("dead_letters_dropped", len(victims))

    def purge(self, what: str) -> int:
        """Operator action: delete all queued messages (`queue`) or all dead letters (`dead-letters`)."""
        if what == "dead-letters":
            def clear() -> int:
                self._set("dead_letter_bytes", 0)
                return self._db.execute("DELETE FROM dead_letters").rowcount
            return self._transaction(clear)

        def work() -> int:
            victims = self._delete_rows("1", ())
            if victims:
                self._record_drops({"purged": victims}, time.time())
            return len(victims)

        return self._transaction(work)

    def backlog(self) -> int:
        """Messages waiting to be published: data and events."""
        return self._meta("rows") + self._meta("event_rows")

    def stats(self) -> dict[str, Any]:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        oldest = self._db.execute("SELECT MIN(created) FROM messages").fetchone()[0]
        by_kind = dict(self._db.execute("SELECT kind, COUNT(*) FROM messages GROUP BY kind").fetchall())
        return {
            "path": str(self.path),
            "queued": meta["rows"] + meta["event_rows"],
            "queued_data_bytes": meta["bytes"],
            "queued_by_kind": by_kind,
            "oldest_age_s": round(time.time() - oldest, 1) if oldest else None,
            "last_seq": meta["last_seq"],
            "dropped": {k.removeprefix("dropped_"): v for k, v in meta.items() if k.startswith("dropped_")},
            "dead_letters": self._db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0],
            "dead_letters_dropped": meta.get("dead_letters_dropped", 0),
            "processed_inputs": self._db.execute("SELECT COUNT(*) FROM processed").fetchone()[0],
            "limits": {"max_rows": self.limits.max_rows, "max_bytes": self.limits.max_bytes,
                       "ttl_s": self.limits.ttl_s, "policy": self.limits.policy},
        }

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT seq, kind, msg_id, reason, failed_at, length(payload) FROM dead_letters ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()
        keys = ("seq", "kind", "msg_id", "reason", "failed_at", "bytes")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def dead_letter_count(self) -> int:
        return self._meta("dead_letters")
