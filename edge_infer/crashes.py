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
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from edge_infer.delegates import load_library
from edge_infer.runtime import accelerator_answer

log = logging.getLogger(__name__)
CRASH_FILE = "crash.txt"
KEPT_FILE = "crash-previous.txt"  # the last crash's whole dump, for a bug report
HISTORY_FILE = "accelerator-crashes.json"
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

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.error, "where": self.where, "in_accelerator": self.in_accelerator}


def _threads(text: str) -> list[tuple[bool, list[tuple[str, str, str]]]]:
    """faulthandler's dump → [(is the current thread, [(file, line, function), innermost first])]."""
    threads: list[tuple[bool, list[tuple[str, str, str]]]] = []
    for line in text.splitlines():
        if line.startswith(("Thread 0x", "Current thread 0x")):
            threads.append((line.startswith("Current"), []))
        elif threads and (m := _FRAME.match(line)):
            threads[-1][1].append((m["file"], m["line"], m["func"]))
    return threads


def _in_accelerator(frames: list[tuple[str, str, str]]) -> bool:
    return any((_file_id(file), func) in ACCELERATOR_FRAMES for file, _, func in frames)


def parse(text: str) -> Crash | None:
    """The crash a faulthandler dump describes; None for an empty or unrecognised file."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("Fatal Python error"):
        return None
    threads = _threads(text)
    current = [frames for is_current, frames in threads if is_current]
    suspects = current or [frames for _, frames in threads]  # the signal came on a thread Python does not know
    blamed = next((frames for frames in suspects if _in_accelerator(frames)), None)
    shown = blamed or (current[0] if current else None)
    where = f"{shown[0][2]} ({Path(shown[0][0]).name}:{shown[0][1]})" if shown else "a thread of no Python code"
    return Crash(lines[0].strip()[:200], where[:200], blamed is not None)


class CrashRecord:
    """`previous`: how the last run in `state_dir` died (None: it stopped cleanly, or left no stack). `arm` once the
    daemon's threads run, `disarm` after they stopped."""

    def __init__(self, state_dir: Path | str, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(state_dir) / CRASH_FILE
        self.kept = Path(state_dir) / KEPT_FILE
        self.history = Path(state_dir) / HISTORY_FILE
        self._clock = clock
        self._file: IO[str] | None = None
        self._was_enabled = False
        try:
            with open(self.path, errors="replace") as fh:
                self.previous = parse(fh.read(MAX_READ))
            if self.previous is not None:
                self.path.replace(self.kept)  # read once: the next start does not report it again
        except OSError:
            self.previous = None

    def arm(self) -> None:
        """From now on a fatal signal writes every thread's stack to `crash.txt` (emptied: this run's own)."""
        self._was_enabled = faulthandler.is_enabled()
        self._file = open(self.path, "w")  # noqa: SIM115 - faulthandler writes to it until `disarm`
        faulthandler.enable(file=self._file, all_threads=True)

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

    def accelerator_rest(self) -> float:
        """Count the previous run's crash in the accelerator and say how long the accelerator rests before it is
        tried again: 5 min, doubling with each such crash in the last day, at most 6 h."""
        now = self._clock()
        try:
            times = [float(t) for t in json.loads(self.history.read_text())["crashes"]]
        except (OSError, ValueError, KeyError, TypeError):
            times = []
        times = [*(t for t in times if 0 <= now - t < DAY_S), now][-20:]
        try:
            self.history.write_text(json.dumps({"crashes": times}))
        except OSError as exc:
            log.warning("event=crash_history_unwritable path=%s error=%r", self.history, exc.strerror)
        return min(REST_S * 2 ** (len(times) - 1), REST_MAX_S)
