"""Replay protection for signed commands and update transfers, kept across restarts.

A signed message names an `id` and the time it was `issued`. It is admitted only if:
- `issued` is a finite number (a message without one is refused);
- the id was never admitted before;
- it is not older than the newest message seen from the same key by more than `window_s` (so a message signed
  long ago is refused once a newer one was seen, even with no synced clock);
- with a synced clock, it was issued within `window_s` of now.

The ids seen within the window and each key's newest `issued` are written to `path` (atomically, fsync'd)
before the message is acted on, so a restart forgets nothing that matters.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from edge_infer.clock import time_synced

MAX_SEEN = 10_000


class Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ReplayGuard:
    def __init__(self, path: Path | str, window_s: float) -> None:
        self.path = Path(path)
        self.window_s = float(window_s)
        self.newest: dict[str, float] = {}  # key id → newest `issued` admitted
        self.seen: dict[str, float] = {}  # id → its `issued`
        with contextlib.suppress(FileNotFoundError, ValueError, TypeError, AttributeError):
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            self.newest = {str(k): float(v) for k, v in doc["newest"].items()}
            self.seen = {str(k): float(v) for k, v in doc["seen"].items()}

    def admit(self, key_id: str, message_id: str, issued: Any) -> None:
        """Admit (and record, durably) one signed message, or raise `Refused`."""
        if isinstance(issued, bool) or not isinstance(issued, int | float) or not math.isfinite(issued):
            raise Refused("malformed", "a signed message needs `issued` (unix seconds)")
        issued = float(issued)
        if message_id in self.seen:
            raise Refused("replayed", f"id {message_id} was already used")
        newest = self.newest.get(key_id)
        if newest is not None and issued < newest - self.window_s:
            raise Refused("stale", f"issued {newest - issued:.0f} s before the newest message seen from key "
                                   f"{key_id} (allowed: {self.window_s:.0f} s)")
        if time_synced() and abs(time.time() - issued) > self.window_s:
            raise Refused("expired", f"issued {time.time() - issued:.0f} s ago (max_age {self.window_s:.0f} s)")
        self.seen[message_id] = issued
        self.newest[key_id] = max(issued, newest if newest is not None else issued)
        self._prune()
        self._save()

    def _prune(self) -> None:
        floor = max(self.newest.values()) - self.window_s if self.newest else -math.inf
        self.seen = {k: v for k, v in self.seen.items() if v >= floor}
        if len(self.seen) > MAX_SEEN:  # only signed messages get here: a flood needs the fleet key
            self.seen = dict(sorted(self.seen.items(), key=lambda kv: kv[1])[-MAX_SEEN:])

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"newest": self.newest, "seen": self.seen}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
