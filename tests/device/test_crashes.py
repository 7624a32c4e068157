"""A process killed by a fatal signal, for real: child processes die of SIGABRT and SIGSEGV with `faulthandler`
armed by `CrashRecord`, inside the real `accelerator_answer` frame (on the calling thread, or from a native thread
of the "driver's" own, as libedgetpu aborts) or elsewhere; the next `CrashRecord` reads how and where. End to end:
the probe delegate aborts the running service mid-run; the restarted service runs on the CPU instead of crash-looping,
says why, and loses no input. And an input file whose decoding crashes (or hangs until the watchdog's abort) the
service is rejected after its second time instead of being offered again for ever."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge_infer.app.daemon import Daemon
from edge_infer.config import load_config
from edge_infer.crashes import REST_MAX_S, REST_S, CrashRecord
from edge_infer.inflight import SLOT_BYTES, InFlight, slot_key
from edge_infer.sinks.memory import MemorySink
from tests.conftest import DIGITS_INT8, REPO, write_config
from tests.device.faults import DaemonProcess, outbox_count, wait_until
from tests.device.test_accelerator import DIGITS, config, feeder, library, probe_bundle, probe_log  # noqa: F401
from tests.device.test_service import NotifySocket
from tests.helpers.broker import free_port

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


# a decoder bug that one file hits: this child's Pillow faults for real (SIGSEGV) in `load` on a PNG carrying the
# marker, wherever it is decoded — or never returns from it
POISON_SITE = """
import ctypes, os, time
from PIL import ImageFile
_load = ImageFile.ImageFile.load
def load(self):
    if self.info.get("edge-infer-test") == "poison":
        if os.environ.get("POISON") == "hang":
            time.sleep(3600)
        ctypes.string_at(0)
    return _load(self)
ImageFile.ImageFile.load = load
"""


def systemd_restarts(cfg: Path, log: Path, notify: NotifySocket | None) -> int:
    """One run of the service into the poison, as systemd sees it: it dies, or (with the watchdog) stops petting
    and is sent SIGABRT, systemd's default WatchdogSignal. Returns how the process ended."""
    since = time.monotonic()
    proc = DaemonProcess(cfg, log).start()
    try:
        if notify is not None:
            assert wait_until(lambda: any(f["STATUS"].startswith("hung: decode")
                                          for f in notify.with_key("STATUS", since=since)), 60), log.read_text()[-2000:]
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGABRT)
        assert proc.proc is not None
        return proc.proc.wait(120)
    finally:
        proc.kill()


@pytest.mark.parametrize(("poison", "interpreters"), [("crash", "2"), ("crash", "1"), ("hang", "2")])
def test_an_input_that_kills_the_service_twice_is_rejected_not_crash_looped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, poison: str, interpreters: str) -> None:
    """A folder with one file that crashes (or hangs) the decoder: without the quarantine systemd would restart the
    service into the same file for ever, and nothing after it would ever be processed. Lanes, and one interpreter
    (a decode thread beside it)."""
    from PIL import Image, PngImagePlugin

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(POISON_SITE)
    monkeypatch.setenv("PYTHONPATH", f"{site}{os.pathsep}{REPO}")
    monkeypatch.setenv("POISON", poison)
    notify = None
    if poison == "hang":  # the test is systemd: the service pets its watchdog every 0.5 s
        notify = NotifySocket(tmp_path / "notify.sock")
        monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
        monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    inputs, state = tmp_path / "in", tmp_path / "s"
    inputs.mkdir()
    clean = DIGITS[:6]
    feeder(inputs)(clean, 0)
    marker = PngImagePlugin.PngInfo()
    marker.add_text("edge-infer-test", "poison")
    Image.open(DIGITS[6]).save(inputs / "003-poison.png", pnginfo=marker)
    cfg = write_config(tmp_path / "c.toml", bundle=DIGITS_INT8, source=inputs, state=state, port=free_port())
    cfg.write_text(cfg.read_text() + f"\n[pipeline]\ninterpreters = {interpreters}\n")
    db, log = state / "outbox.db", tmp_path / "daemon.log"
    signum = signal.SIGSEGV if poison == "crash" else signal.SIGABRT
    try:
        for _ in (1, 2):  # it dies on the file, is restarted into it, dies again
            assert systemd_restarts(cfg, log, notify) == -signum, log.read_text()[-2000:]
        restarted = DaemonProcess(cfg, log).start()
        try:
            def stored_all() -> bool:
                return outbox_count(db, "SELECT COUNT(*) FROM messages WHERE kind IN ('results', 'rejections')") \
                    >= len(clean) + 1
            assert wait_until(lambda: stored_all() or not restarted.alive(), 120) and restarted.alive(), \
                log.read_text()[-3000:]
            assert restarted.terminate() == 0, log.read_text()[-2000:]
        finally:
            restarted.kill()
    finally:
        if notify is not None:
            notify.close()
    rows = stored(db)
    results = sorted(doc["input"]["id"] for _, kind, doc in rows if kind == "results")
    assert results == sorted(f"{i:03d}-{p.parent.name}.png" for i, p in enumerate(clean)), "every other input once"
    [rejection] = [doc for _, kind, doc in rows if kind == "rejections"]
    assert rejection["input"]["id"] == "003-poison.png" and rejection["reason"] == "unreadable", rejection
    error = "Segmentation fault" if poison == "crash" else "Aborted"
    assert "killed the service 2 times" in rejection["detail"] and error in rejection["detail"], rejection
    crashes = [doc["details"] for _, kind, doc in rows if kind == "events" and doc["event"] == "service_crashed"]
    assert [(c["input"].split("@")[0], c["input_crashes"], c["quarantined"]) for c in crashes] == [
        ("003-poison.png", 1, False), ("003-poison.png", 2, True)], crashes
    where = "string_at (" if poison == "crash" else "load (sitecustomize.py:"  # the hung thread's, not the main one
    assert all(c["where"].startswith(where) and not c["in_accelerator"] for c in crashes), crashes
    assert (state / "crash.txt").read_text() == "" and not (state / "in-flight").exists(), "a clean stop"


def test_each_thread_marks_its_own_input_and_a_clean_stop_leaves_none(tmp_path: Path) -> None:
    record = InFlight(tmp_path / "in-flight")
    assert record.previous == {}
    record.open()
    long_key = "x" * 600 + "@123"
    marked = threading.Barrier(3)
    idents: dict[str, int] = {}

    def work(key: str | None) -> None:
        record.mark("first")
        record.mark(key)  # the slot is the thread's own: the newer mark replaces the older one
        idents[str(key)] = threading.get_ident()
        marked.wait()
        marked.wait()  # held until the file was read

    threads = [threading.Thread(target=work, args=(key,)) for key in ("a.jpg@1", long_key)]
    for thread in threads:
        thread.start()
    marked.wait()
    seen = InFlight(tmp_path / "in-flight").previous  # what a next start would read after a crash now
    marked.wait()
    for thread in threads:
        thread.join()
    assert seen == {idents["a.jpg@1"]: "a.jpg@1", idents[long_key]: slot_key(long_key)}, seen
    assert slot_key(long_key).startswith("sha256:") and slot_key("a.jpg@1") == "a.jpg@1"
    record.mark(None)
    record.close()
    assert not (tmp_path / "in-flight").exists() and InFlight(tmp_path / "in-flight").previous == {}
    record.mark("after the close")  # ignored, no error


@pytest.mark.parametrize("content", ['{"inputs": {"a@1": {"crashes": "2"}}}', '{"inputs": []}', "[1, 2]",
                                     "not json", '{"inputs": {"a@1": {"crashes": 2}}}'])
def test_a_damaged_crashed_inputs_file_quarantines_nothing_it_does_not_say(tmp_path: Path, content: str) -> None:
    (tmp_path / "crashed-inputs.json").write_text(content)
    quarantined = CrashRecord(tmp_path).quarantined
    assert list(quarantined) == (["a@1"] if content.endswith("{\"crashes\": 2}}}") else []), quarantined


def crashed_with(state: Path, key: str, thread: int = 0x7F00AA) -> CrashRecord:
    """The state folder as a run leaves it that died of SIGSEGV on `thread` while it had `key` in hand (the slot
    written here by the file's layout, not by `InFlight`)."""
    (state / "crash.txt").write_text(f"Fatal Python error: Segmentation fault\n\nCurrent thread 0x{thread:016x} "
                                     f"(most recent call first):\n  File \"/x/PIL/ImageFile.py\", line 1 in load\n")
    raw = key.encode()
    (state / "in-flight").write_bytes(bytes(SLOT_BYTES) + struct.pack("<QH", thread, len(raw)) + raw)  # slot 1
    return CrashRecord(state)


def test_crashes_count_per_input_and_only_the_newest_inputs_are_kept(tmp_path: Path) -> None:
    for i in range(60):
        record = crashed_with(tmp_path, f"{i}.png@1")
        assert record.input == f"{i}.png@1" and record.strike() == 1
    kept = json.loads((tmp_path / "crashed-inputs.json").read_text())["inputs"]
    assert list(kept) == [f"{i}.png@1" for i in range(10, 60)]
    assert crashed_with(tmp_path, "59.png@1").strike() == 2
    record = CrashRecord(tmp_path)
    assert record.previous is None and record.input is None
    assert list(record.quarantined) == ["59.png@1"] and "killed the service 2 times" in record.quarantined["59.png@1"]
    (tmp_path / "crash.txt").write_text((tmp_path / "crash-previous.txt").read_text().replace("7f00aa", "7f00bb"))
    record = CrashRecord(tmp_path)  # it died on thread …bb; the input in the file was …aa's
    assert record.previous is not None and record.previous.thread == 0x7F00BB and record.input is None


def test_after_the_watchdogs_abort_the_hung_thread_is_blamed_not_the_one_the_signal_came_on(tmp_path: Path) -> None:
    (tmp_path / "crash.txt").write_text(
        "Fatal Python error: Aborted\n\nThread 0x00000000007f00bb (most recent call first):\n"
        '  File "/x/PIL/ImageFile.py", line 9 in load\n  File "/x/edge_infer/pipeline.py", line 3 in measure\n\n'
        "Current thread 0x00000000007f00aa (most recent call first):\n"
        '  File "/usr/lib/python3.11/threading.py", line 1 in join\n')
    slot = struct.Struct("<QH")
    (tmp_path / "in-flight").write_bytes(slot.pack(0x7F00BB, 0).ljust(SLOT_BYTES, b"\0")  # the hung thread
                                         + slot.pack(0x7F00BB, 7) + b"b.png@1")
    record = CrashRecord(tmp_path)
    assert record.previous is not None and record.previous.thread == 0x7F00BB, record.previous
    assert record.previous.where == "load (ImageFile.py:9)" and record.input == "b.png@1"
