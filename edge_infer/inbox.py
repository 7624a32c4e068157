"""Inbound messages (the `cmd/#` topics) between the publisher thread, which receives them, and the control
thread, which runs them. Bounded at the door: a message over `max_message_bytes` is never queued, and the queue
holds at most `max_bytes` in total and `max_items` messages. What is turned away is counted by reason, for the
control thread to report in one aggregated event."""

from __future__ import annotations

import threading
from collections import Counter, deque

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024  # a 128 KiB update chunk is ~171 KiB as base64 in JSON
DEFAULT_MAX_ITEMS = 256


class Inbox:
    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_bytes: int | None = None,
                 max_items: int = DEFAULT_MAX_ITEMS) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_bytes = max_bytes if max_bytes is not None else 4 * max_message_bytes
        self.max_items = max_items
        self._items: deque[tuple[str, bytes]] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self.turned_away: Counter[str] = Counter()  # reason → count, taken by `take_turned_away`

    def put(self, topic: str, payload: bytes) -> bool:
        """Queue one message; False (and counted) when it is too large or the queue is full."""
        size = len(payload) + len(topic)
        with self._lock:
            if size > self.max_message_bytes:
                self.turned_away["too_large"] += 1
                return False
            if len(self._items) >= self.max_items or self._bytes + size > self.max_bytes:
                self.turned_away["queue_full"] += 1
                return False
            self._items.append((topic, payload))
            self._bytes += size
            return True

    def get(self) -> tuple[str, bytes] | None:
        """The oldest queued message, or None."""
        with self._lock:
            if not self._items:
                return None
            topic, payload = self._items.popleft()
            self._bytes -= len(payload) + len(topic)
            return topic, payload

    def take_turned_away(self) -> dict[str, int]:
        """What was turned away since the last call (reason → count)."""
        with self._lock:
            counts, self.turned_away = dict(self.turned_away), Counter()
            return counts

    @property
    def queued_bytes(self) -> int:
        return self._bytes
