"""The outbox: seq strictly increasing and never reused, checkpoint and message in one transaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_infer.outbox import Outbox, OutboxError


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
