"""Helpers for fault tests: many inputs, the daemon as a real background process, an audit of what arrived."""

from __future__ import annotations

import itertools
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from edge_infer.audit import Auditor
from tests.conftest import DIGITS_TEST, REPO
from tests.helpers.broker import Mosquitto
from tests.helpers.subscriber import Subscriber

DIGIT_FILES = sorted(DIGITS_TEST.glob("*/*.png"))


def make_frames(folder: Path, count: int, start: int = 0) -> list[str]:
    """`count` real digit images named frame-NNNNNN.png (written under a temp name, then renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, src in zip(range(start, start + count), itertools.cycle(DIGIT_FILES), strict=False):
        name = f"frame-{i:06d}.png"
        tmp = folder / f".{name}.tmp"
        shutil.copy(src, tmp)
        tmp.rename(folder / name)
        names.append(name)
    return names


class DaemonProcess:
    """`edge-infer run --config CFG` in the background, as systemd would run it."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge_infer", "run", "--config", str(self.config)],
                                         cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def outbox_count(db: Path, sql: str = "SELECT COUNT(*) FROM messages") -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute(sql).fetchone()  # None while the daemon is still creating the schema
            return int(row[0]) if row else 0
    except sqlite3.OperationalError:
        return 0


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def offline_broker_with_auditor(workdir: Path, topic: str = "edge/#") -> tuple[Mosquitto, Subscriber]:
    """A stopped, persistent broker that already holds an auditor's session: whatever devices publish once it
    is started again reaches the auditor, however fast they reconnect. The auditor subscribes at QoS 0: it
    then sends nothing back, so even a SIGKILLed broker's socket closes with FIN and what the broker already
    wrote still arrives (a QoS 1 subscriber's unread PUBACKs make the kernel answer with RST and drop data in
    flight: a message the broker acknowledged and then lost by crashing, which no publisher can prevent)."""
    broker = Mosquitto(workdir, persistent=True).start()
    sub = Subscriber(broker.port, topic, session="auditor", qos=0)
    time.sleep(1.5)  # the broker autosaves every second
    broker.stop()
    return broker, sub


def audit(*subscribers: Subscriber) -> dict:
    auditor = Auditor()
    for sub in subscribers:
        for msg in sub.all():
            auditor.feed(msg.topic, msg.payload)
    return auditor.report()


def input_ids(*subscribers: Subscriber) -> set[str]:
    return {m.json()["input"]["id"] for s in subscribers for m in s.all() if m.kind in ("results", "rejections")}
