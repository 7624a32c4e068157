"""Running under systemd: sd_notify on a real UNIX datagram socket (READY, STATUS, WATCHDOG, STOPPING), the
watchdog withheld while inference hangs, SIGTERM under load losing nothing, SIGHUP applying a new threshold."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from edge_infer.app.daemon import Daemon
from edge_infer.config import load_config
from edge_infer.service import Notifier, Progress
from tests.conftest import DIGITS_INT8, REPO, write_config
from tests.device.faults import make_frames, wait_until
from tests.helpers.broker import Mosquitto
from tests.helpers.subscriber import Subscriber


class NotifySocket:
    """What systemd listens on: a datagram socket; collects every message the service sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str, since: float = 0.0) -> list[dict[str, str]]:
        return [f for t, f in list(self.messages) if key in f and t >= since]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _config(tmp_path: Path, broker: Mosquitto, extra: str = "") -> Path:
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=tmp_path / "in", state=tmp_path / "s",
                       port=broker.port)
    cfg.write_text(cfg.read_text() + extra)
    (tmp_path / "in").mkdir(exist_ok=True)
    return cfg


def test_ready_status_watchdog_and_stopping_under_load_lose_nothing(tmp_path: Path, broker: Mosquitto) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    cfg = _config(tmp_path, broker)
    sub = Subscriber(broker.port, "edge/test-pi/results")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen([sys.executable, "-m", "edge_infer", "run", "--config", str(cfg)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: notify.with_key("READY"), 30), proc.stderr
        assert wait_until(lambda: len(notify.with_key("WATCHDOG")) >= 3, 10), "pets every WatchdogSec / 2"
        names = make_frames(tmp_path / "in", 300)
        assert wait_until(lambda: len(sub.of_kind("results")) >= 50, 60)
        proc.send_signal(signal.SIGTERM)  # under load: most of the 300 are still to do
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert wait_until(lambda: notify.with_key("STOPPING"), 10)
    assert any("results" in f["STATUS"] for f in notify.with_key("STATUS"))
    notify.close()
    # nothing lost: what the first run did not finish, the next run does; every frame ends as one result
    rest = subprocess.run([sys.executable, "-m", "edge_infer", "run", "--config", str(cfg), "--once"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert rest.returncode == 0, rest.stderr
    assert wait_until(lambda: len({m.json()["input"]["id"] for m in sub.of_kind("results")}) >= 300, 30)
    assert {m.json()["input"]["id"] for m in sub.of_kind("results")} == set(names)


def test_the_watchdog_is_withheld_while_inference_hangs_and_resumes_after(tmp_path: Path,
                                                                         broker: Mosquitto) -> None:
    """Fault injection: the real interpreter's run is held on an event for one input."""
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = Daemon(load_config(_config(tmp_path, broker)))
    daemon.notifier = Notifier({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "300000"})
    release, hanging = threading.Event(), threading.Event()
    real_run = daemon.model.engine.run

    def hang_once(tensor):  # type: ignore[no-untyped-def]
        if not release.is_set():
            hanging.set()
            release.wait(30)
        return real_run(tensor)

    daemon.model.engine.run = hang_once  # type: ignore[method-assign]
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: len(notify.with_key("WATCHDOG")) >= 2, 10), "pets while idle"
        make_frames(tmp_path / "in", 3)
        assert hanging.wait(10)
        # the witness that the stage counts as hung: the watchdog says so once, then withholds pet after pet
        assert wait_until(lambda: any(f["STATUS"].startswith("hung: inference")
                                      for f in notify.with_key("STATUS")), 10)
        quiet_from = time.monotonic()
        assert daemon.watchdog is not None
        withheld = daemon.watchdog.withheld
        assert wait_until(lambda: daemon.watchdog.withheld >= withheld + 3, 10)  # three more turns, no pet
        assert not notify.with_key("WATCHDOG", since=quiet_from), "no pets while inference hangs"
        release.set()
        resumed = time.monotonic()
        assert wait_until(lambda: notify.with_key("WATCHDOG", since=resumed), 5), "pets again once it moves"
        assert wait_until(lambda: daemon.summary.results == 3, 10)
    finally:
        release.set()
        daemon.stop_event.set()
        runner.join(30)
        notify.close()


def test_progress_names_the_stage_that_hangs() -> None:
    now = [0.0]
    progress = Progress(clock=lambda: now[0])
    progress.start("decode")
    progress.start("inference")
    now[0] = 1.0
    progress.done("decode")
    assert progress.stuck(2.0) is None
    now[0] = 3.5
    assert progress.stuck(2.0) == ("inference", 3.5, threading.get_ident())
    progress.done("inference")
    assert progress.stuck(2.0) is None


def test_sighup_applies_a_changed_threshold_and_names_what_needs_a_restart(tmp_path: Path,
                                                                            broker: Mosquitto) -> None:
    cfg = _config(tmp_path, broker)
    sub = Subscriber(broker.port, "edge/test-pi/#")
    proc = subprocess.Popen([sys.executable, "-m", "edge_infer", "run", "--config", str(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        make_frames(tmp_path / "in", 5)
        assert wait_until(lambda: len(sub.of_kind("results")) >= 5, 60)
        assert all(m.json()["threshold"] < 0.99 for m in sub.of_kind("results"))
        strict = "\n".join(f'"{d}" = 0.999' for d in range(10))
        text = cfg.read_text().replace("poll_interval = 0.05", "poll_interval = 0.07")
        text = text.replace("[model]\n", "[model]\nthreshold = 0.999\n", 1)
        cfg.write_text(text + f"\n[model.thresholds]\n{strict}\n")
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: sub.of_kind("events"), 30)
        event = sub.of_kind("events")[0].json()
        assert event["event"] == "config_reloaded"
        assert {"model.threshold", "model.thresholds"} <= set(event["details"]["applied"])
        assert event["details"]["needs_restart"] == ["source.poll_interval"]
        make_frames(tmp_path / "in", 5, start=5)
        assert wait_until(lambda: len(sub.of_kind("results")) >= 10, 60)
        later = [m.json() for m in sub.of_kind("results")][5:]
        assert all(d["threshold"] == 0.999 and d["status"] == "uncertain" for d in later)
        cfg.write_text("[model\nbroken")  # a bad edit: refused, the running config stays
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: len(sub.of_kind("events")) >= 2, 30)
        assert sub.of_kind("events")[1].json()["event"] == "config_reload_failed"
        make_frames(tmp_path / "in", 2, start=10)
        assert wait_until(lambda: len(sub.of_kind("results")) >= 12, 60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_json_logs_one_object_per_line_with_the_event_fields_and_no_secrets(tmp_path: Path,
                                                                          broker: Mosquitto) -> None:
    import json

    secret = tmp_path / "password"
    secret.write_text("hunter2-very-secret\n")
    cfg = _config(tmp_path, broker, '\n[log]\nformat = "json"\n')
    text = cfg.read_text().replace("[mqtt]\n", f'[mqtt]\nusername = "pi"\npassword_file = "{secret}"\n', 1)
    cfg.write_text(text)
    make_frames(tmp_path / "in", 3)
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    log = tmp_path / "journal"  # stands in for journald's stream: JOURNAL_STREAM names this very file
    with log.open("w") as err:
        st = os.fstat(err.fileno())
        proc = subprocess.run([sys.executable, "-m", "edge_infer", "run", "--config", str(cfg), "--once"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True, timeout=120,
                              env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    stderr = log.read_text()
    assert proc.returncode == 0, stderr
    raw = [line for line in stderr.splitlines() if line.strip()]
    assert all(re.match(r"^<[2-7]>\{", line) for line in raw), "every line: a journal priority, then JSON"
    lines = [json.loads(line[3:]) for line in raw]
    priority = {"debug": "<7>", "info": "<6>", "warning": "<4>", "error": "<3>"}
    assert all(line.startswith(priority[doc["level"]]) for line, doc in zip(raw, lines, strict=True))
    events = {doc.get("event") for doc in lines}
    assert {"start", "rejected", "stop", "stderr"} <= events  # "stderr": the runtime's own notice, captured
    native = next(doc for doc in lines if doc.get("event") == "stderr")
    assert native["logger"] == "native" and "XNNPACK" in native["text"] and native["level"] == "info"
    rejected = next(doc for doc in lines if doc.get("event") == "rejected")
    assert rejected["reason"] == "empty_file" and rejected["input"] == "empty.png"
    assert all("ts" not in doc for doc in lines), "under systemd, journald stamps the time"
    proc = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, stderr)
    assert "hunter2" not in proc.stderr


def test_key_value_logs_are_logfmt_with_ts_and_lower_case_levels(tmp_path: Path, broker: Mosquitto) -> None:
    """Outside the journal every stderr line is `ts=… level=… logger=…` — the runtime's own C++ notice too."""
    cfg = _config(tmp_path, broker, "")
    make_frames(tmp_path / "in", 3)
    proc = subprocess.run([sys.executable, "-m", "edge_infer", "run", "--config", str(cfg), "--once"], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"})
    assert proc.returncode == 0, proc.stderr
    logfmt = re.compile(r"^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=(debug|info|warning|error) logger=\S+ \S")
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("edge-infer: ")]
    assert lines and [line for line in lines if not logfmt.match(line)] == []
    assert any(" event=stop " in line for line in lines)
