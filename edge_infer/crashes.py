"""How the last run died, read at the next start — and an accelerator that keeps killing the service rests.

A fatal signal (SIGSEGV, SIGABRT, SIGBUS, SIGILL, SIGFPE) ends the process before Python can log a word. While the
daemon runs, the standard library's `faulthandler` writes every thread's stack to `<state_dir>/crash.txt` as the
process dies (`CrashRecord.arm`); the next start reads it (`CrashRecord.previous`), logs it and says so in a
`service_crashed` event (the whole dump is kept as `crash-previous.txt`).

What this exists for: an accelerator's driver that aborts the whole process mid-run — libedgetpu's "USB transfer
error … Abort" on a Coral with too little power is the best-known case. systemd restarts the service, the trial at
start (`edge_infer.trial`) passes, the accelerator is loaded again and the process dies again minutes later: a crash
loop that never falls back to the CPU. So when the process died while one of its threads was inside a call to the
accelerator (a frame of `ACCELERATOR_FRAMES` on its stack: the invoke, or loading the delegate), the next start
gives the accelerator up at once (the CPU runs the model) and retries it only after a rest that doubles with each
such crash in the last day: 5 min, 10, 20, … at most 6 h (`CrashRecord.accelerator_rest`, kept in
`<state_dir>/accelerator-crashes.json`). When the signal came on a thread of the driver's own (no Python thread is
the "current" one), any thread inside an accelerator call counts; when it came on a Python thread, only that one.
A `kill -9`, the OOM killer or a power cut leave no stack: they are not counted.

An input that kills the process wherever it runs — a decoder's bug hit by one file, a kernel that faults on one
tensor, or one that hangs it until systemd's watchdog kills it (SIGABRT) — would be offered again after every
restart: a source that re-reads what has no checkpoint (a folder) would crash-loop on it for ever. So each thread
marks the input it decodes or runs (`edge_infer.inflight`; the watchdog marks the thread it found hung), and a crash
on a Python thread (or while one was hung) that had an input in hand counts against that input
(`CrashRecord.strike`, kept in `<state_dir>/crashed-inputs.json`); after `QUARANTINE_AFTER` crashes it is no longer
decoded: `screen` hands it on unreadable, so it gets its rejection — reason `unreadable`, the crashes in the detail —
and its checkpoint like any other bad input. A crash in the accelerator is the accelerator's (it is rested), not
the input's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from edge_infer.delegates import load_library
from edge_infer.inflight import InFlight, slot_key
from edge_infer.runtime import accelerator_answer

if TYPE_CHECKING:
    from edge_infer.sources import Sample

log = logging.getLogger(__name__)
CRASH_FILE = "crash.txt"
KEPT_FILE = "crash-previous.txt"  # the last crash's whole dump, for a bug report
HISTORY_FILE = "accelerator-crashes.json"
IN_FLIGHT_FILE = "in-flight"
INPUTS_FILE = "crashed-inputs.json"
QUARANTINE_AFTER = 2  # crashes with the same input in hand; one could be a coincidence (a cosmic ray, a bad fan)
KEPT_INPUTS = 50
MAX_READ = 256 * 1024  # a dump of every thread's stack is a few KiB; more than this is not ours
REST_S, REST_MAX_S, DAY_S = 300.0, 6 * 3600.0, 24 * 3600.0
_FRAME = re.compile(r'^\s*File "(?P<file>.*)", line (?P<line>\d+) in (?P<func>.+)$')


def _file_id(filename: str) -> str:
    """A source file's last two path parts: what identifies it across installs (`edge_infer/runtime.py`)."""
    path = Path(filename)
    return f"{path.parent.name}/{path.name}"


ACCELERATOR_FRAMES = frozenset((_file_id(f.__code__.co_filename), f.__code__.co_name)
                               for f in (accelerator_answer, load_library))


@dataclass(frozen=True)
class Crash:
    """The previous run's death: `error` (faulthandler's first line, e.g. "Fatal Python error: Aborted"), `where`
    (the innermost frame of the thread it is blamed on) and whether that thread was in an accelerator call."""

    error: str
    where: str
    in_accelerator: bool
    thread: int | None = None  # the thread blamed (the signal's, or a hung one); None: not a Python thread

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.error, "where": self.where, "in_accelerator": self.in_accelerator}


_Frames = list[tuple[str, str, str]]  # (file, line, function), innermost first
_THREAD = re.compile(r"^(?:Current thread|Thread) 0x(?P<ident>[0-9a-fA-F]+)")


def _threads(text: str) -> list[tuple[int, bool, _Frames]]:
    """faulthandler's dump → [(thread id, is the current thread, its frames)]."""
    threads: list[tuple[int, bool, _Frames]] = []
    for line in text.splitlines():
        if head := _THREAD.match(line):
            threads.append((int(head["ident"], 16), line.startswith("Current"), []))
        elif threads and (m := _FRAME.match(line)):
            threads[-1][2].append((m["file"], m["line"], m["func"]))
    return threads


def _quarantine_detail(entry: dict[str, Any]) -> str:
    return (f"this input killed the service {entry['crashes']} times ({entry.get('error', '?')}, in "
            f"{entry.get('where', '?')}): it is not decoded again")


def _in_accelerator(frames: _Frames) -> bool:
    return any((_file_id(file), func) in ACCELERATOR_FRAMES for file, _, func in frames)


def parse(text: str, hung: int | None = None) -> Crash | None:
    """The crash a faulthandler dump describes; None for an empty or unrecognised file. `hung`: the thread the
    watchdog found stuck before the process was killed (systemd's watchdog sends SIGABRT to the process, which
    any thread may take): that one is blamed, not the thread the signal came on."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("Fatal Python error"):
        return None
    threads = _threads(text)
    current = [(ident, frames) for ident, is_current, frames in threads if is_current]
    if hung is not None and (stuck := [(ident, frames) for ident, _, frames in threads if ident == hung]):
        current = stuck
    suspects = current or [(ident, frames) for ident, _, frames in threads]  # on a thread Python does not know
    blamed = next((frames for _, frames in suspects if _in_accelerator(frames)), None)
    shown = blamed or (current[0][1] if current else None)
    where = f"{shown[0][2]} ({Path(shown[0][0]).name}:{shown[0][1]})" if shown else "a thread of no Python code"
    return Crash(lines[0].strip()[:200], where[:200], blamed is not None, current[0][0] if current else None)


class CrashRecord:
    """`previous`: how the last run in `state_dir` died (None: it stopped cleanly, or left no stack), and `input`:
    the checkpoint key (`inflight.slot_key`) of the input the thread it died on (or the watchdog found hung) had in
    hand (None: none, or the accelerator's crash). `arm` once the daemon's threads run, `disarm` after they stopped;
    meanwhile `mark` and `hung`."""

    def __init__(self, state_dir: Path | str, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(state_dir) / CRASH_FILE
        self.kept = Path(state_dir) / KEPT_FILE
        self.history = Path(state_dir) / HISTORY_FILE
        self.inputs = Path(state_dir) / INPUTS_FILE
        self.in_flight = InFlight(Path(state_dir) / IN_FLIGHT_FILE)
        self.mark, self.hung = self.in_flight.mark, self.in_flight.hung
        self._clock = clock
        self._file: IO[str] | None = None
        self._was_enabled = False
        try:
            with open(self.path, errors="replace") as fh:
                self.previous = parse(fh.read(MAX_READ), self.in_flight.previous_hung)
            if self.previous is not None:
                self.path.replace(self.kept)  # read once: the next start does not report it again
        except OSError:
            self.previous = None
        crash = self.previous
        self.input = self.in_flight.previous.get(crash.thread) \
            if crash is not None and crash.thread is not None and not crash.in_accelerator else None
        self._inputs = self._crashed_inputs()  # read once: `strike` updates it and writes it back
        self.quarantined = {key: _quarantine_detail(entry) for key, entry in self._inputs.items()
                            if entry["crashes"] >= QUARANTINE_AFTER}

    def arm(self) -> None:
        """From now on a fatal signal writes every thread's stack to `crash.txt` (emptied: this run's own)."""
        self._was_enabled = faulthandler.is_enabled()
        self._file = open(self.path, "w")  # noqa: SIM115 - faulthandler writes to it until `disarm`
        faulthandler.enable(file=self._file, all_threads=True)
        try:
            self.in_flight.open()
        except OSError as exc:  # the crash record still works; only a poison input is not recognised
            log.warning("event=in_flight_unwritable path=%s error=%r", self.in_flight.path, exc.strerror)

    def disarm(self) -> None:
        """The run ended without a fatal signal: `crash.txt` stays empty."""
        if self._file is None:
            return
        faulthandler.disable()
        if self._was_enabled:  # whoever had it before (`python -X faulthandler`, pytest) gets it back on stderr
            with contextlib.suppress(OSError, ValueError, AttributeError):  # a stderr with no file descriptor
                faulthandler.enable(file=sys.stderr, all_threads=True)
        self._file.close()
        self._file = None
        self.in_flight.close()

    def strike(self) -> int:
        """Count the previous run's crash against the input in hand (`input`, which must be set); how many crashes
        it has caused so far. At `QUARANTINE_AFTER` it joins `quarantined`."""
        assert self.input is not None and self.previous is not None
        inputs = self._inputs
        entry = inputs.pop(self.input, {"crashes": 0})
        entry = {"crashes": int(entry["crashes"]) + 1, "error": self.previous.error, "where": self.previous.where}
        inputs[self.input] = entry  # the newest last: the oldest are forgotten first
        _write(self.inputs, {"inputs": dict(list(inputs.items())[-KEPT_INPUTS:])})
        if entry["crashes"] >= QUARANTINE_AFTER:
            self.quarantined[self.input] = _quarantine_detail(entry)
        return entry["crashes"]

    def screen(self, samples: Iterator[Sample]) -> Iterator[Sample]:
        """`samples`, each quarantined one handed on unreadable (its bytes dropped: it is never decoded again)."""
        if not self.quarantined:
            yield from samples
            return
        for sample in samples:
            detail = self.quarantined.get(slot_key(sample.key))
            yield sample if detail is None else dataclasses.replace(sample, data=None, image=None, window=None,
                                                                    times=None, read_error=detail)

    def _crashed_inputs(self) -> dict[str, dict[str, Any]]:
        inputs = _read(self.inputs).get("inputs")
        return {str(k): v for k, v in inputs.items() if isinstance(v, dict) and type(v.get("crashes")) is int} \
            if isinstance(inputs, dict) else {}

    def accelerator_rest(self) -> float:
        """Count the previous run's crash in the accelerator and say how long the accelerator rests before it is
        tried again: 5 min, doubling with each such crash in the last day, at most 6 h."""
        now = self._clock()
        try:
            times = [float(t) for t in _read(self.history)["crashes"]]
        except (KeyError, TypeError, ValueError):
            times = []
        times = [*(t for t in times if 0 <= now - t < DAY_S), now][-20:]
        _write(self.history, {"crashes": times})
        return min(REST_S * 2 ** (len(times) - 1), REST_MAX_S)


def _read(path: Path) -> dict[str, Any]:
    """A small state file of ours (at most `MAX_READ`); {} when it is missing or not a JSON object."""
    try:
        with open(path, errors="replace") as fh:
            doc = json.loads(fh.read(MAX_READ))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write(path: Path, doc: dict[str, Any]) -> None:
    try:
        path.write_text(json.dumps(doc))
    except OSError as exc:
        log.warning("event=crash_history_unwritable path=%s error=%r", path, exc.strerror)
