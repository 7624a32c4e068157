"""The webhook sink against a real local HTTP server that goes down, fails and comes back: every result
arrives (at least once, deduplicated by `Idempotency-Key` = `msg_id`), in seq order with no unexplained gap;
a message the receiver refuses for what it is goes to the dead-letter table and the queue moves on; a receiver
that refuses everything (wrong token) loses nothing."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from pathlib import Path

import pytest

from edge_infer.app.daemon import Daemon
from edge_infer.audit import Auditor
from edge_infer.config import ConfigError, load_config
from tests.conftest import DIGITS_INT8, write_config
from tests.device.faults import DaemonProcess, make_frames, outbox_count, wait_until
from tests.helpers.broker import free_port
from tests.helpers.webhook import Post, Receiver


def webhook_config(tmp_path: Path, url: str, extra: str = "", frames: int = 0) -> Path:
    if frames:
        make_frames(tmp_path / "in", frames)
    else:
        (tmp_path / "in").mkdir(exist_ok=True)
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=free_port())
    cfg.write_text(cfg.read_text() + f'\n[sink]\ntype = "webhook"\nurl = "{url}"\n'
                                     f'reconnect_max = 0.5\n{extra}\n')
    return cfg


def audited(posts: list[Post]) -> dict:
    """The subscriber's audit (`edge-infer audit`'s logic) over what the receiver took."""
    auditor = Auditor()
    for post in posts:
        auditor.feed(f"edge/test-pi/{post.kind}", post.body)
    return auditor.report()


def running(daemon: Daemon) -> threading.Thread:
    thread = threading.Thread(target=daemon.run, name="daemon", daemon=True)
    thread.start()
    return thread


def test_results_survive_an_outage_of_the_receiver(tmp_path: Path) -> None:
    """Down at start, then 503 for a while, then up: all 120 results arrive, each POST carries its msg_id as the
    idempotency key, and the audit finds no gap."""
    failing = {"left": 5}

    def answer(_post: Post) -> int:
        if failing["left"] > 0:
            failing["left"] -= 1
            return 503
        return 200

    receiver = Receiver(answer)  # not started: connection refused
    daemon = Daemon(load_config(webhook_config(tmp_path, receiver.url, frames=120)))
    thread = running(daemon)
    try:
        assert wait_until(lambda: daemon.summary.results == 120, 60), daemon.summary
        assert wait_until(daemon.sink.unreachable, 10)
        assert receiver.posts == []
        receiver.start()
        assert wait_until(lambda: len({p.json()["input"]["id"] for p in receiver.of_kind("results")}) == 120, 60)
        assert wait_until(lambda: outbox_count(tmp_path / "s" / "outbox.db") == 0, 30)
    finally:
        daemon.stop_event.set()
        thread.join(30)
        receiver.stop()
    assert failing["left"] == 0 and len(receiver.posts) > len(receiver.taken)  # the 503s really happened
    results = receiver.of_kind("results")
    assert all(p.headers["idempotency-key"] == p.json()["msg_id"] for p in results)
    assert all(p.headers["content-type"] == "application/json" and p.headers["x-edge-infer-device"] == "test-pi"
               for p in results)
    seqs = [p.json()["seq"] for p in receiver.taken if "x-edge-infer-seq" in p.headers]
    assert seqs == sorted(seqs)  # in order, also across the retries
    report = audited(receiver.taken)
    assert report["complete"] and report["invalid_count"] == 0, report
    assert report["devices"]["test-pi"]["by_kind"]["results"] == 120


def test_a_refused_message_is_dead_lettered_and_the_rest_flow(tmp_path: Path) -> None:
    """The receiver answers 422 to one input's result: that message goes to the dead-letter table, a
    `dead_letter` event says so (and arrives itself), and every other result arrives."""
    victim = "frame-000007.png"

    def answer(post: Post) -> int:
        doc = post.json()
        return 422 if doc.get("input", {}).get("id") == victim and post.kind == "results" else 200

    receiver = Receiver(answer).start()
    daemon = Daemon(load_config(webhook_config(tmp_path, receiver.url, frames=30)))
    thread = running(daemon)
    try:
        assert wait_until(lambda: any(p.json()["event"] == "dead_letter" for p in receiver.of_kind("events")), 60)
        assert wait_until(lambda: len(receiver.of_kind("results")) == 29, 30)
    finally:
        daemon.stop_event.set()
        thread.join(30)
        receiver.stop()
    event = next(p.json() for p in receiver.of_kind("events") if p.json()["event"] == "dead_letter")
    assert "422" in event["details"]["reason"]
    with sqlite3.connect(tmp_path / "s" / "outbox.db") as db:
        kept = [json.loads(p) for (p,) in db.execute("SELECT payload FROM dead_letters")]
    assert [d["input"]["id"] for d in kept] == [victim]
    assert victim not in {p.json()["input"]["id"] for p in receiver.of_kind("results")}
    assert daemon.summary.dead_letters == 1


def test_a_receiver_that_refuses_everything_loses_nothing(tmp_path: Path) -> None:
    """A wrong token (401 to everything) is a configuration problem: nothing is dead-lettered, the sink says
    what is wrong, and once the token is right everything arrives."""
    (tmp_path / "token").write_text("wrong\n")

    def answer(post: Post) -> int:
        return 200 if post.headers.get("authorization") == "Bearer right" else 401

    receiver = Receiver(answer).start()
    cfg = webhook_config(tmp_path, receiver.url, extra=f'token_file = "{tmp_path / "token"}"', frames=20)
    daemon = Daemon(load_config(cfg))
    thread = running(daemon)
    try:
        assert wait_until(lambda: len(receiver.posts) >= 3 and daemon.summary.results == 20, 60)
        assert any("401" in p for p in daemon.sink.problems())
        assert receiver.taken == []
    finally:
        daemon.stop_event.set()
        thread.join(30)
    with sqlite3.connect(tmp_path / "s" / "outbox.db") as db:
        assert db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == 0
    (tmp_path / "token").write_text("right\n")
    daemon = Daemon(load_config(cfg))  # the owner fixed the token and restarted the service
    thread = running(daemon)
    try:
        assert wait_until(lambda: len({p.json()["input"]["id"] for p in receiver.of_kind("results")}) == 20, 60)
    finally:
        daemon.stop_event.set()
        thread.join(30)
        receiver.stop()


@pytest.mark.system
def test_nothing_is_lost_across_kill_9_during_an_outage(tmp_path: Path) -> None:
    """A real daemon process, the receiver down, SIGKILL after some results are stored; restarted, the receiver
    back: every input's result arrives."""
    receiver = Receiver()
    cfg = webhook_config(tmp_path, receiver.url, frames=200)
    first = DaemonProcess(cfg, tmp_path / "daemon.log").start()
    try:
        assert wait_until(lambda: outbox_count(tmp_path / "s" / "outbox.db") >= 50, 60), \
            (tmp_path / "daemon.log").read_text()[-2000:]
    finally:
        first.kill()
    receiver.start()
    second = DaemonProcess(cfg, tmp_path / "daemon.log").start()
    try:
        assert wait_until(lambda: len({p.json()["input"]["id"] for p in receiver.of_kind("results")}) == 200, 120), \
            (tmp_path / "daemon.log").read_text()[-2000:]
        assert second.terminate() == 0
    finally:
        second.kill()
        receiver.stop()
    report = audited(receiver.taken)
    assert report["complete"] and report["devices"]["test-pi"]["by_kind"]["results"] == 200, report


@pytest.mark.parametrize(("extra", "problem"), [
    ("", "[sink].url: missing"),
    ('url = "ftp://example.com/x"', "[sink].url: expected an http:// or https:// URL"),
    ('uri = "http://x/"', "[sink].uri: unknown key (did you mean 'url'?)"),
    ('port = 1883', "[sink].port: unknown key"),
])
def test_webhook_config_errors_are_one_line(tmp_path: Path, extra: str, problem: str) -> None:
    (tmp_path / "in").mkdir()
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=free_port())
    cfg.write_text(cfg.read_text() + f'\n[sink]\ntype = "webhook"\n{extra}\n')
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config(cfg)


def test_commands_need_the_mqtt_sink(tmp_path: Path) -> None:
    cfg = webhook_config(tmp_path, "http://127.0.0.1:9/hook", extra='\n[commands]\nenabled = true\nauth = "acl"')
    with pytest.raises(ConfigError, match=r"\[commands\]\.enabled: .*MQTT"):
        load_config(cfg)
