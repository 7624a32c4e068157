"""The outbox: seq strictly increasing and never reused, checkpoint and message in one transaction."""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path

import pytest

from edge_infer.app import compose
from edge_infer.audit import Auditor
from edge_infer.config import load_config
from edge_infer.outbox import Limits, Outbox, OutboxError, Pending
from tests.conftest import DIGITS_INT8, write_config


def test_seq_increases_and_is_never_reused_across_reopen_and_deletes(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    seqs = [box.commit("results", f"m{i}", lambda s: b'{"seq":%d}' % s) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    box.delete(seqs)
    assert box.backlog() == 0
    box.close()
    box = Outbox(tmp_path / "o.db")
    assert box.commit("results", "m5", lambda s: b"x") == 6, "a restart never reuses a seq, even after deletes"
    assert [r.seq for r in box.pending(0, 10)] == [6]


def test_payload_is_built_with_its_seq(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.commit("results", "a", lambda s: f"seq={s}".encode())
    assert box.pending(0, 1)[0].payload == b"seq=1"


def test_checkpoint_commits_with_the_message_or_not_at_all(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.commit("results", "a", lambda s: b"ok", checkpoint=("dir", "a.png@1:1"))
    assert box.is_processed("dir", "a.png@1:1")

    def explode(_seq: int) -> bytes:
        raise RuntimeError("payload failed")

    with pytest.raises(RuntimeError):
        box.commit("results", "b", explode, checkpoint=("dir", "b.png@1:1"))
    assert not box.is_processed("dir", "b.png@1:1")
    assert box.backlog() == 1
    assert box.commit("results", "c", lambda s: b"c") == 2, "a rolled-back commit does not burn a seq"


def test_pending_pages_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    for i in range(10):
        box.commit("results" if i % 2 else "rejections", str(i), lambda s: b"p")
    first = box.pending(0, 4)
    assert [r.seq for r in first] == [1, 2, 3, 4]
    assert [r.seq for r in box.pending(first[-1].seq, 100)] == [5, 6, 7, 8, 9, 10]
    assert {r.kind for r in first} == {"results", "rejections"}


def test_dead_letter_keeps_the_message_out_of_the_queue(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.commit("results", "a", lambda s: b"a")
    box.commit("results", "b", lambda s: b"b")
    box.dead_letter(1, "Not authorized")
    assert [r.seq for r in box.pending(0, 10)] == [2]
    assert box.dead_letter_count() == 1


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxError, match="cannot open outbox database"):
        Outbox(path)


def _event_builder(seq: int, msg_id: str, name: str, details: dict) -> bytes:
    return json.dumps({"seq": seq, "msg_id": msg_id, "event": name, "details": details}).encode()


def _events(box: Outbox) -> list[dict]:
    return [json.loads(r.payload) for r in box.pending(0, 10_000) if r.kind == "events"]


def test_max_bytes_drops_exactly_the_oldest_needed(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", limits=Limits(max_bytes=1000), event_builder=_event_builder)
    for i in range(5):
        box.commit("results", str(i), lambda s: b"x" * 300)  # the 4th and 5th each push out one
    data = [r.seq for r in box.pending(0, 100) if r.kind == "results"]
    assert data == [3, 4, 6]  # seq 5 is the first drop event
    dropped = [e for e in _events(box) if e["event"] == "outbox_dropped"]
    assert [(e["details"]["reason"], e["details"]["seq_ranges"]) for e in dropped] == [
        ("max_bytes", [[1, 1]]), ("max_bytes", [[2, 2]])]
    assert box.stats()["dropped"]["max_bytes"] == 2


def test_reject_new_keeps_the_old_and_still_checkpoints_the_input(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", limits=Limits(max_rows=10, policy="reject-new"), event_builder=_event_builder)
    seqs = box.commit_batch([Pending("results", str(i), lambda s: b"r", ("dir", f"f{i}")) for i in range(12)])
    assert [r.seq for r in box.pending(0, 100) if r.kind == "results"] == seqs[:10]
    (event,) = _events(box)
    assert event["details"] == {"reason": "max_rows", "count": 2, "seq_ranges": [[11, 12]], "policy": "reject-new"}
    assert box.is_processed("dir", "f11"), "a dropped input is accounted for, not reprocessed forever"


def test_ttl_expiry_is_recorded(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", limits=Limits(ttl_s=0.05), event_builder=_event_builder)
    box.commit("results", "a", lambda s: b"a")
    time.sleep(0.1)
    assert box.expire() == 1
    (event,) = _events(box)
    assert event["details"]["reason"] == "ttl" and event["details"]["seq_ranges"] == [[1, 1]]


def test_purge_queue_is_recorded_and_dead_letters_purge(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", event_builder=_event_builder)
    for i in range(3):
        box.commit("results", str(i), lambda s: b"r")
    box.dead_letter(1, "Not authorized")
    assert box.purge("dead-letters") == 1 and box.dead_letter_count() == 1  # the count is history
    assert box.purge("queue") == 3  # two results and the dead_letter event
    assert [e["event"] for e in _events(box)] == ["outbox_dropped"]


def test_a_deleted_database_continues_above_every_reserved_seq(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path, primary=True)
    assert box.commit("results", "a", lambda s: b"a") == 1
    box.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    box = Outbox(path, primary=True)
    assert box.commit("results", "b", lambda s: b"b") > 1, "seq 1 is never issued twice"


def test_audit_explains_drops_and_finds_real_gaps() -> None:
    auditor = Auditor(validate=False)

    def send(seq: int, kind: str = "results", **extra) -> None:
        auditor.feed(f"edge/d/{kind}", json.dumps({"device_id": "d", "seq": seq, "msg_id": f"m{seq}", **extra}))

    for seq in (1, 2, 6, 9, 9):
        send(seq)
    send(7, "events", event="outbox_dropped", details={"seq_ranges": [[3, 5]]})
    report = auditor.report()["devices"]["d"]
    assert report["duplicates_dropped"] == 1 and report["explained_drops"] == 3
    assert report["unexplained_gaps"] == [[8, 8]] and report["missing"] == 1


def _counted_by_the_tables(path: Path) -> dict[str, int]:
    """The counters the meta table should hold, counted from the rows themselves (another connection)."""
    with sqlite3.connect(path) as db:
        data = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE kind != 'events'").fetchone()
        events = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE kind = 'events'").fetchone()
        dead = db.execute("SELECT COALESCE(SUM(length(payload)), 0) FROM dead_letters").fetchone()[0]
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    return {"counted": (*data, *events, dead), "meta": (meta["rows"], meta["bytes"], meta["event_rows"],
                                                      meta["event_bytes"], meta["dead_letter_bytes"])}


def test_counters_always_match_the_rows_across_connections_caps_and_failures(tmp_path: Path) -> None:
    """The row and byte counters the caps are decided on (kept in memory during a transaction, written once
    before its commit) equal what the tables hold after every operation: commits from the writer, deletes and
    dead letters from another connection, drops by every cap, expiry, purges and a batch that fails midway."""
    path = tmp_path / "o.db"
    limits = Limits(max_rows=12, max_bytes=4000, max_event_rows=5, max_event_bytes=2000,
                    max_dead_letters=3, max_dead_letter_bytes=700)
    writer = Outbox(path, limits=limits, event_builder=_event_builder, primary=True)
    publisher = Outbox(path, limits=limits, event_builder=_event_builder)
    rng = random.Random(7)

    def explode(_seq: int) -> bytes:
        raise RuntimeError("payload failed")

    for step in range(300):
        op = rng.choice(["batch", "batch", "batch", "delete", "dead", "event", "fail", "expire"])
        if op == "batch":
            sizes = [rng.randint(1, 700) for _ in range(rng.randint(1, 6))]
            writer.commit_batch([Pending(rng.choice(["results", "rejections"]), f"{step}-{i}",
                                         lambda s, n=n: b"x" * n, ("dir", f"{step}-{i}"))
                                 for i, n in enumerate(sizes)])
        elif op == "delete" and (rows := publisher.pending(0, 100)):
            publisher.delete(r.seq for r in rng.sample(rows, rng.randint(1, len(rows))))
        elif op == "dead" and (rows := publisher.pending(0, 100)):
            publisher.dead_letter(rng.choice(rows).seq, "Not authorized")
        elif op == "event":
            writer.add_event("thing", {"pad": "y" * rng.randint(1, 600)})
        elif op == "fail":
            with pytest.raises(RuntimeError):
                writer.commit_batch([Pending("results", f"{step}-ok", lambda s: b"ok"),
                                     Pending("results", f"{step}-bad", explode)])
        elif op == "expire":
            writer.expire()
        counts = _counted_by_the_tables(path)
        assert counts["meta"] == counts["counted"], f"step {step} ({op})"
        assert writer.backlog() == publisher.backlog() == counts["counted"][0] + counts["counted"][2]
    stats = writer.stats()
    assert stats["dropped"]["max_rows"] + stats["dropped"]["max_bytes"] > 0 and stats["dropped"]["events"] > 0
    assert stats["dead_letters_dropped"] > 0, "every cap was reached at least once"
    assert writer.purge("queue") > 0 and publisher.purge("dead-letters") > 0
    counts = _counted_by_the_tables(path)
    assert counts["meta"] == counts["counted"]
    seqs = [writer.commit("results", "after", lambda s: b"a") for _ in range(2)]
    assert seqs[1] == seqs[0] + 1 and seqs[0] > stats["last_seq"], "seqs still increase, none reused"


def test_only_the_sinks_connection_commits_without_waiting_for_the_disk(tmp_path: Path) -> None:
    """What the writer stores keeps `[outbox].durability` (full: FULL, 2); the sink's acknowledgements and dead
    letters are committed at NORMAL (1) — a power cut can only undo a delete (a message sent again)."""
    cfg = load_config(write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in",
                                   state=tmp_path / "s", port=1883))
    writer = compose.primary_outbox(cfg, _event_builder)
    sink = compose.outbox_opener(cfg, _event_builder, receipts=True)()
    reader = compose.outbox_opener(cfg)()
    levels = [box._db.execute("PRAGMA synchronous").fetchone()[0] for box in (writer, reader, sink)]
    assert levels == [2, 2, 1], levels
