"""What a sink's receiver said about each stored message, applied to the outbox in one place: taken (deleted)
or refused for what it is (dead-lettered, with an event). Kept while the disk is full and applied on the next
turn; every sink counts through it."""

from __future__ import annotations

import logging

from edge_infer.outbox import Outbox, OutboxFull

log = logging.getLogger(__name__)


class Receipts:
    def __init__(self) -> None:
        self.taken: list[int] = []
        self.refused: list[tuple[int, str]] = []
        self.published = 0  # messages the receiver took
        self.dead_lettered = 0  # messages the receiver refused for good

    def clear(self) -> None:
        """Forget what is not yet applied (a new connection: those messages are sent again)."""
        self.taken, self.refused = [], []

    def apply(self, outbox: Outbox) -> bool:
        """Dead-letter the refused, delete the taken. True when a dead letter was written (its event is a new
        row to deliver). A full disk leaves the rest for the next call."""
        wrote = False
        try:
            while self.refused:
                seq, reason = self.refused[0]
                outbox.dead_letter(seq, reason)
                self.refused.pop(0)
                self.dead_lettered += 1
                wrote = True
                log.error("event=dead_letter seq=%d reason=%r (kept in the dead_letters table)", seq, reason)
            if self.taken:
                outbox.delete(self.taken)
                self.published += len(self.taken)
                self.taken = []
        except OutboxFull:
            pass
        return wrote


class Counted:
    """A sink's counters, read from its receipts (a mix-in: the sink sets `self.receipts`)."""

    receipts: Receipts

    @property
    def published(self) -> int:
        return self.receipts.published

    @property
    def dead_lettered(self) -> int:
        return self.receipts.dead_lettered
