"""A live source that loses its input keeps trying, and says so once: `SourceHealth` (up or down, why, since
when; listeners hear each change once) and `Backoff` (exponential waits with jitter between attempts).

A camera stream that drops, a snapshot URL that stops answering, a serial adapter that is unplugged: the
source reports `lost(reason)`, waits, tries again for as long as the daemon runs, and reports `restored()` with
the first input after. The daemon turns the changes into `source_lost` / `source_restored` events, a problem
in `health` and the retained status, and its systemd status line.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

Listener = Callable[[bool, str | None, float], None]  # (up, reason when down, seconds in the previous state)


class SourceHealth:
    """Up or down; thread-safe. Starts up: a source that never delivered is down only once it failed."""

    def __init__(self) -> None:
        self.up = True
        self.reason: str | None = None
        self.since = time.time()
        self.losses = 0
        self.listeners: list[Listener] = []
        self._lock = threading.Lock()

    def lost(self, reason: str) -> None:
        """The input went away (`reason`: one line). Only the first call of an outage is reported."""
        self._change(False, reason)

    def restored(self) -> None:
        """Input arrived again (call with each input: only the first after an outage is reported)."""
        if not self.up:
            self._change(True, None)

    def _change(self, up: bool, reason: str | None) -> None:
        with self._lock:
            if up == self.up:
                return
            now = time.time()
            held, self.up, self.reason, self.since = now - self.since, up, reason, now
            self.losses += 0 if up else 1
        for listener in list(self.listeners):
            listener(up, reason, held)

    def to_dict(self) -> dict[str, Any]:
        return {"up": self.up, "reason": self.reason, "since_s": round(time.time() - self.since, 1),
                "losses": self.losses}


class Backoff:
    """Waits between attempts: `first` seconds, doubling up to `most`, each drawn from 50–100 % of the step
    (jitter: a fleet that lost the same camera server does not come back in lockstep)."""

    def __init__(self, most: float = 30.0, first: float = 0.5) -> None:
        self.first, self.most = first, max(first, most)
        self.step = first

    def wait(self, stop: threading.Event) -> bool:
        """Sleep the next step; True when `stop` was set meanwhile (give up now)."""
        return stop.wait(self.next_delay())

    def next_delay(self) -> float:
        """The next wait (for a caller that schedules instead of sleeping), and the step after it doubled."""
        delay = self.step * random.uniform(0.5, 1.0)
        self.step = min(self.step * 2, self.most)
        return delay

    def reset(self) -> None:
        self.step = self.first
