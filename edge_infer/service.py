"""systemd integration without a dependency: the sd_notify protocol and a watchdog that only pets systemd while
the pipeline makes progress.

- `READY=1` once the model is loaded and the pipeline runs; `STATUS=` a one-line summary; `RELOADING=1` /
  `READY=1` around a SIGHUP reload; `STOPPING=1` on SIGTERM.
- `WATCHDOG=1` every half `WatchdogSec`, but only while no stage has been busy for longer than `WatchdogSec`:
  waiting for input is fine, a hung inference or a stuck disk is not — systemd then kills and restarts us.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Messages to the service manager over `$NOTIFY_SOCKET` (a no-op when not run by systemd)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, **fields: object) -> bool:
        """`send(READY=1, STATUS="…")`: one datagram; never raises (systemd may be gone while we stop)."""
        if not self._address:
            return False
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self._address)
            return True
        except OSError as exc:
            log.debug("event=sd_notify_failed error=%r", exc.strerror)
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Progress:
    """Which stages are busy since when, per thread (several lanes may decode at once). A stage that stays busy
    past a limit is hung."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 record: Callable[[str, float], None] | None = None) -> None:
        self._clock = clock
        self._busy: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()
        self._record = record  # each finished stage's duration (for latency percentiles)

    def start(self, stage: str) -> None:
        with self._lock:
            self._busy[(stage, threading.get_ident())] = self._clock()

    def done(self, stage: str) -> float:
        """The stage finished (in the thread that started it); returns how long it took (0 if not started)."""
        with self._lock:
            started = self._busy.pop((stage, threading.get_ident()), None)
        took = 0.0 if started is None else self._clock() - started
        if started is not None and self._record is not None:
            self._record(stage, took)
        return took

    def stuck(self, limit_s: float) -> tuple[str, float, int] | None:
        """The stage busy longest, for how long and on which thread (its id), if that is more than `limit_s`."""
        now = self._clock()
        with self._lock:
            worst = max(self._busy.items(), key=lambda kv: now - kv[1], default=None)
        if worst is None or now - worst[1] <= limit_s:
            return None
        (stage, thread), started = worst
        return stage, now - started, thread


class Watchdog(threading.Thread):
    """Pets systemd's watchdog every `interval / 2` while `progress` shows no hung stage."""

    def __init__(self, notifier: Notifier, progress: Progress, interval_s: float,
                 status: Callable[[], str] | None = None, on_hung: Callable[[int | None], None] | None = None) -> None:
        """`on_hung(thread)` is told when a stage starts being withheld for (its thread's id) and when nothing is
        hung any more (None): systemd kills a service it stops hearing from."""
        super().__init__(name="watchdog", daemon=True)
        self.notifier = notifier
        self.progress = progress
        self.interval_s = interval_s
        self.status = status
        self.on_hung = on_hung
        self.stopping = threading.Event()
        self.withheld = 0

    def run(self) -> None:
        warned = False
        while not self.stopping.wait(self.interval_s / 2):
            stuck = self.progress.stuck(self.interval_s)
            if stuck is None:
                fields: dict[str, object] = {"WATCHDOG": 1}
                if self.status is not None:
                    fields["STATUS"] = self.status()
                self.notifier.send(**fields)
                if warned and self.on_hung is not None:
                    self.on_hung(None)
                warned = False
                continue
            self.withheld += 1
            if not warned:
                stage, busy_s, thread = stuck
                log.error("event=watchdog_withheld stage=%s busy_s=%.1f (systemd will restart the service)", stage,
                          busy_s)
                if self.on_hung is not None:
                    self.on_hung(thread)
                self.notifier.send(STATUS=f"hung: {stage} busy for {busy_s:.0f} s")
                warned = True
