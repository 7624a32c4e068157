"""An in-process sink: what the outbox holds, delivered into a list (for embedding edge-infer in a Python
program, and for the fast test tier). Same rules as the other sinks: a row is deleted once it is in the list;
`refuse(row) -> reason | None` can turn a message away, which dead-letters it."""

from __future__ import annotations

import threading
from collections.abc import Callable

from edge_infer.outbox import Outbox
from edge_infer.outbox_items import Row
from edge_infer.sinks.receipts import Counted, Receipts


class MemorySink(Counted, threading.Thread):
    """Drains the outbox into `delivered` ((kind, payload) in seq order) until stopped."""

    def __init__(self, open_outbox: Callable[[], Outbox], refuse: Callable[[Row], str | None] | None = None) -> None:
        super().__init__(name="memory-sink", daemon=True)
        self._open_outbox = open_outbox
        self._refuse = refuse
        self._stop_requested = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self.delivered: list[tuple[str, bytes]] = []
        self.snapshots: list[tuple[str, bytes]] = []
        self.retained: dict[str, bytes] = {}  # kind → latest value (`retain`)
        self.announced = 0  # model swaps announced (`refresh`)
        self.receipts = Receipts()
        self._problems: dict[str, str] = {}

    def notify(self) -> None:
        self._wake.set()

    def offer(self, kind: str, payload: bytes) -> None:
        with self._lock:
            self.snapshots.append((kind, payload))

    def retain(self, kind: str, payload: bytes) -> None:
        with self._lock:
            self.retained[kind] = payload

    def set_problem(self, name: str, text: str | None) -> None:
        if text is None:
            self._problems.pop(name, None)
        else:
            self._problems[name] = text

    def problems(self) -> list[str]:
        return [f"{name}: {text}" for name, text in sorted(self._problems.items())]

    def refresh(self, _discovery: list[tuple[str, bytes]]) -> None:
        self.announced += 1

    def unreachable(self) -> bool:
        return False

    def uploading(self) -> bool:
        return False

    def of_kind(self, kind: str) -> list[bytes]:
        with self._lock:
            return [payload for k, payload in self.delivered if k == kind]

    def stop(self, timeout: float = 10.0) -> None:
        self._stop_requested.set()
        self._wake.set()
        self.join(timeout)

    def run(self) -> None:
        outbox = self._open_outbox()
        try:
            while True:
                self._drain(outbox)
                if self._stop_requested.is_set():
                    break
                self._wake.wait(0.2)
                self._wake.clear()
        finally:
            outbox.close()

    def _drain(self, outbox: Outbox) -> None:
        while rows := outbox.pending(0, 256):
            for row in rows:
                reason = self._refuse(row) if self._refuse is not None else None
                if reason is not None:
                    self.receipts.refused.append((row.seq, reason))
                    continue
                with self._lock:
                    self.delivered.append((row.kind, row.payload))
                self.receipts.taken.append(row.seq)
            self.receipts.apply(outbox)
            if self.receipts.taken or self.receipts.refused:
                return  # the disk is full: try again on the next turn
