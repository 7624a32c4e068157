"""A process killed by a fatal signal, for real: child processes die of SIGABRT and SIGSEGV with `faulthandler`
armed by `CrashRecord`, inside the real `accelerator_answer` frame (on the calling thread, or from a native thread
of the "driver's" own, as libedgetpu aborts) or elsewhere; the next `CrashRecord` reads how and where. End to end:
the probe delegate aborts the running service mid-run; the restarted service runs on the CPU instead of crash-looping,
says why, and loses no input."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from edge_infer.app.daemon import Daemon
from edge_infer.config import load_config
from edge_infer.crashes import REST_MAX_S, REST_S, CrashRecord
from edge_infer.sinks.memory import MemorySink
from tests.conftest import REPO
from tests.device.faults import DaemonProcess, outbox_count, wait_until
from tests.device.test_accelerator import DIGITS, config, feeder, library, probe_bundle, probe_log  # noqa: F401

CHILD = """
import ctypes, os, signal, sys, threading, time, types
from edge_infer.crashes import CrashRecord
from edge_infer.runtime import accelerator_answer
mode = sys.argv[2]

class Interpreter:  # stands in for the runtime's: its invoke() is where the driver fails
    def set_tensor(self, index, tensor): pass
    def invoke(self):
        if mode == "native":  # the driver's own thread aborts; this one waits for a transfer that never ends
            libc = ctypes.CDLL(None)
            libc.pthread_create(ctypes.byref(ctypes.c_ulong()), None, ctypes.cast(libc.abort, ctypes.c_void_p), None)
            time.sleep(60)
        elif mode == "here":
            os.abort()
        else:
            time.sleep(60)

def call():
    accelerator_answer(Interpreter(), [types.SimpleNamespace(index=0)], [], None)

CrashRecord(sys.argv[1]).arm()
if mode == "elsewhere":  # a call to the accelerator is under way while another thread dies of something else
    threading.Thread(target=call, daemon=True).start()
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGSEGV)
call()
"""


def die(state: Path, mode: str) -> int:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(state), mode], cwd=REPO, capture_output=True, timeout=60)
    return proc.returncode


@pytest.mark.parametrize(("mode", "signum", "error", "blamed"), [
    ("native", signal.SIGABRT, "Fatal Python error: Aborted", True),
    ("here", signal.SIGABRT, "Fatal Python error: Aborted", True),
    ("elsewhere", signal.SIGSEGV, "Fatal Python error: Segmentation fault", False),
])
def test_the_next_start_reads_how_and_where_the_last_run_died(tmp_path: Path, mode: str, signum: int, error: str,
                                                              blamed: bool) -> None:
    assert die(tmp_path, mode) == -signum
    crash = CrashRecord(tmp_path).previous
    assert crash is not None and crash.error == error
    assert crash.in_accelerator is blamed, crash
    assert crash.where.startswith("invoke (<string>:" if blamed else "<module> (<string>:"), crash.where
    assert not (tmp_path / "crash.txt").exists(), "read once"
    assert "in accelerator_answer" in (tmp_path / "crash-previous.txt").read_text(), "the whole dump is kept"
    assert CrashRecord(tmp_path).previous is None, "each crash is reported once"


# a dump seen in this suite: the abort came on the driver's thread, and faulthandler faulted reading the writer
# thread while it ran (so the process died of SIGSEGV, the dump cut short)
CUT_SHORT = """Fatal Python error: Aborted

Thread 0x00007f3a177fe6c0 (most recent call first):
  File "/venv/lib/python3.11/site-packages/ai_edge_litert/interpreter.py", line 1015 in invoke
  File "/venv/lib/python3.11/site-packages/edge_infer/runtime.py", line 270 in _answer
  File "/venv/lib/python3.11/site-packages/edge_infer/runtime.py", line 278 in accelerator_answer
  File "/venv/lib/python3.11/site-packages/edge_infer/deadline.py", line 75 in _serve

Thread 0x00007f3a17fff6c0 (most recent call first):
  File "/venv/lib/python3.11/site-packages/PIL/Image.py", line 2440 in resize

Thread 0x00007f3a1ddff6c0 (most recent call first):
  File "/usr/lib/python3.11/json/encoder.py", line 258 in iterencode
  File Fatal Python error: Segmentation fault


Extension modules: numpy._core._multiarray_umath, PIL._imaging (total: 2)
"""


def test_a_dump_cut_short_by_a_second_fault_still_names_the_first_and_the_accelerator(tmp_path: Path) -> None:
    (tmp_path / "crash.txt").write_text(CUT_SHORT)
    crash = CrashRecord(tmp_path).previous
    assert crash is not None and crash.to_dict() == {
        "error": "Fatal Python error: Aborted", "where": "invoke (interpreter.py:1015)", "in_accelerator": True}


ELSEWHERE = CUT_SHORT.replace("Thread 0x00007f3a17fff6c0", "Current thread 0x00007f3a17fff6c0")


@pytest.mark.parametrize("in_accelerator", [True, False])
def test_the_next_start_rests_the_accelerator_only_when_the_process_died_in_it(
        library: Path, tmp_path: Path, probe_bundle: Path, in_accelerator: bool) -> None:  # noqa: F811
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "crash.txt").write_text(CUT_SHORT if in_accelerator else ELSEWHERE)
    cfg = load_config(config(tmp_path, library, bundle=probe_bundle, claim="reshape"))
    daemon = Daemon(cfg, sink=MemorySink)
    health = daemon.health()["accelerator"]
    if in_accelerator:
        assert daemon.model.engine.ran_on == {"variant": "cpu", "delegate": "xnnpack"}
        assert health["lost"] is True and health["wanted"] == "external" and health["attempts"] == 0, health
        assert 290 <= health["next_try_s"] <= 300, health
    else:  # a crash in resize (the decode thread): not the accelerator's doing
        assert daemon.model.engine.ran_on == {"variant": "probe", "delegate": "external"}
        assert health["lost"] is False, health
    assert (tmp_path / "s" / "accelerator-crashes.json").exists() is in_accelerator


def test_a_run_that_ends_without_a_fatal_signal_leaves_nothing_to_report(tmp_path: Path) -> None:
    record = CrashRecord(tmp_path)
    record.arm()
    record.disarm()
    assert (tmp_path / "crash.txt").read_text() == "" and CrashRecord(tmp_path).previous is None
    (tmp_path / "crash.txt").write_text("not a faulthandler dump\n")
    assert CrashRecord(tmp_path).previous is None


def test_the_accelerators_rest_doubles_with_each_crash_in_a_day(tmp_path: Path) -> None:
    now = [1_000_000.0]
    record = CrashRecord(tmp_path, clock=lambda: now[0])
    rests = []
    for _ in range(9):
        rests.append(record.accelerator_rest())
        now[0] += 60
    assert rests == [min(REST_S * 2 ** i, REST_MAX_S) for i in range(9)]
    assert rests[0] == 300 and rests[-1] == 6 * 3600
    now[0] += 24 * 3600  # a day without one: back to the first rest
    assert record.accelerator_rest() == REST_S
    (tmp_path / "accelerator-crashes.json").write_text("{not json")
    assert record.accelerator_rest() == REST_S, "an unreadable history counts as none"


def stored(db: Path) -> list[tuple[int, str, dict]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [(seq, kind, json.loads(payload))
                for seq, kind, payload in conn.execute("SELECT seq, kind, payload FROM messages ORDER BY seq")]


def test_an_accelerator_that_aborts_the_service_rests_after_the_restart(library: Path, tmp_path: Path,  # noqa: F811
                                                                       probe_bundle: Path) -> None:  # noqa: F811
    """The delegate aborts the whole process on its 8th invoke, from a thread of its own (libedgetpu's "USB
    transfer error … Abort"). The trial at the restart passes (one inference), so without the record the service
    would load it again and die again; instead it runs on the CPU, says why, and every input gets one result."""
    (tmp_path / "in").mkdir()
    cfg = config(tmp_path, library, bundle=probe_bundle, claim="reshape", abort_after_invokes="8")
    db, log = tmp_path / "s" / "outbox.db", tmp_path / "daemon.log"
    feeder(tmp_path / "in")(DIGITS, 0)
    first = DaemonProcess(cfg, log).start()
    try:
        # SIGSEGV now and then: faulthandler, dumping from the driver's thread, can fault reading a Python thread
        # that runs meanwhile; the dump then ends early, after the newest threads (the accelerator's among them)
        assert first.proc is not None and first.proc.wait(120) in (-signal.SIGABRT, -signal.SIGSEGV), (
            log.read_text()[-2000:] + (tmp_path / "s" / "crash.txt").read_text())
    finally:
        first.kill()
    assert probe_log(tmp_path).count("abort") == 1
    before = max((seq for seq, _, _ in stored(db)), default=0)
    restarted = DaemonProcess(cfg, log).start()
    try:
        assert wait_until(lambda: outbox_count(db, "SELECT COUNT(*) FROM messages WHERE kind = 'results'")
                          >= len(DIGITS), 120), log.read_text()[-2000:]
        assert restarted.terminate() == 0
    finally:
        restarted.kill()
    rows = stored(db)
    results = [(seq, doc) for seq, kind, doc in rows if kind == "results"]
    assert sorted(doc["input"]["id"] for _, doc in results) == sorted(
        f"{i:03d}-{p.parent.name}.png" for i, p in enumerate(DIGITS)), "every input once, none lost in the crash"
    ran_on = {(seq > before, doc["ran_on"]["delegate"]) for seq, doc in results}
    assert ran_on <= {(False, "external"), (True, "xnnpack")}, ran_on  # after the restart: the CPU only
    events = {doc["event"]: doc["details"] for _, kind, doc in rows if kind == "events"}
    crashed, lost = events["service_crashed"], events["accelerator_lost"]
    assert crashed["error"] == "Fatal Python error: Aborted" and crashed["in_accelerator"] is True, crashed
    assert crashed["where"].startswith("invoke ("), crashed  # the runtime's invoke, called by accelerator_answer
    assert "died in the external delegate last time" in lost["error"] and "rests 300 s" in lost["error"], lost
    assert probe_log(tmp_path).count("abort") == 1, "not loaded for inference again: no second crash"
    assert (tmp_path / "s" / "crash.txt").read_text() == "", "the restarted run stopped cleanly"
