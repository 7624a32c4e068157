"""Group commit: the pipeline hands finished messages to this thread, which commits them to the outbox many
per transaction (one fsync), at most `window` seconds after the first arrived. A bounded queue applies
back-pressure to the pipeline; a full disk pauses commits (the pipeline then waits) until space returns.

No single message can stop this thread: a batch that fails for any other reason is committed again one message
at a time, and the message that fails on its own is refused — its checkpoint is still stored (the input is not
processed again) and a `message_refused` event says what was lost and why."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable

from edge_infer.outbox import Outbox, OutboxFull, Pending
from edge_infer.service import Progress

log = logging.getLogger(__name__)
EXPIRE_EVERY_S = 60.0


class OutboxWriter(threading.Thread):
    def __init__(
        self,
        outbox: Outbox,
        window_s: float,
        max_batch: int,
        on_committed: Callable[[], None],
        on_problem: Callable[[str | None], None],
        retry_s: float = 1.0,
        progress: Progress | None = None,
    ) -> None:
        super().__init__(name="outbox-writer", daemon=True)
        self.outbox = outbox
        self.window_s = window_s
        self.max_batch = max_batch
        self.retry_s = retry_s
        self._on_committed = on_committed
        self._on_problem = on_problem
        self._progress = progress or Progress()
        self._queue: queue.Queue[Pending | None] = queue.Queue(maxsize=max(max_batch, 16))  # None: wake up
        self._stop_requested = threading.Event()
        self.committed = 0
        self.lost_on_stop = 0  # messages that could not be committed before stopping (disk full)
        self.refused = 0  # messages that could not be built or stored on their own (see `_refuse`)
        self._full_since: float | None = None
        self._last_expire = time.monotonic()

    @property
    def queued(self) -> int:
        """Messages waiting to be committed."""
        return self._queue.qsize()

    def put(self, item: Pending, abandon: threading.Event | None = None) -> bool:
        """Queue a message; blocks while the queue is full (back-pressure). False if the writer or the caller
        (`abandon`) stops first: the message is then not committed, and its input is processed again."""
        while not self._stop_requested.is_set() and not (abandon is not None and abandon.is_set()):
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until everything queued so far is committed (or the disk stays full past `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.is_alive():
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return self._queue.unfinished_tasks == 0

    def stop(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        self._stop_requested.set()
        with contextlib.suppress(queue.Full):  # wake the thread now rather than at its next poll
            self._queue.put_nowait(None)
        self.join(timeout)

    def run(self) -> None:
        while not (self._stop_requested.is_set() and self._queue.empty()):
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                self._maybe_expire()
                continue
            taken = self._batch(first)
            batch = [item for item in taken if item is not None]
            try:
                if batch:
                    self._commit(batch)
            except Exception:  # not one message: the batch's own failure (refusals are handled inside)
                log.exception("event=writer_error batch=%d (continuing)", len(batch))
            finally:
                for _ in taken:
                    self._queue.task_done()
            self._maybe_expire()

    def _batch(self, first: Pending | None) -> list[Pending | None]:
        """`first` and what else arrives within the window, up to `max_batch` messages; a wake-up (None) ends
        the batch early (it is returned too: every item taken is marked done)."""
        taken = [first]
        deadline = time.monotonic() + self.window_s
        while first is not None and len(taken) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                taken.append(item := self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
            if item is None:
                break
        return taken

    def _commit(self, batch: list[Pending]) -> None:
        """Commit a batch (retrying while the disk is full); a batch that fails otherwise is split."""
        try:
            stored = self._commit_retrying(batch)
        except Exception as exc:
            if len(batch) == 1:
                self._refuse(batch[0], exc)
                return
            for item in batch:  # find the one that fails; the others are stored as usual
                self._commit([item])
            return
        if stored:
            self._after(batch)

    def _refuse(self, item: Pending, exc: Exception) -> None:
        """One message that cannot be stored (its payload cannot be built or encoded): keep its checkpoint and
        say so in an event. The writer goes on."""
        self.refused += 1
        why = f"{type(exc).__name__}: {exc}"[:200]
        log.error("event=message_refused kind=%s msg_id=%s error=%r", item.kind, item.msg_id, why)
        with contextlib.suppress(Exception):
            if item.checkpoint is not None:
                self._commit_retrying([dataclasses.replace(item, build=None)])
            self.outbox.add_event("message_refused", {"kind": item.kind, "msg_id": item.msg_id, "error": why})
        self._on_committed()

    def _commit_retrying(self, batch: list[Pending]) -> bool:
        """True once committed; False when a stop came while the disk was full (the batch is then lost here and
        its inputs are processed again on the next start)."""
        delay = self.retry_s
        while True:
            self._progress.start("commit")  # one call that never returns (a hung disk) stops the watchdog
            try:
                self.outbox.commit_batch(batch)
            except (OutboxFull, sqlite3.OperationalError) as exc:  # disk full, or the database locked for long
                self._progress.done("commit")  # waiting out a full disk is a state, not a hang
                if self._full_since is None:
                    self._full_since = time.monotonic()
                    full = isinstance(exc, OutboxFull)
                    what = "disk full" if full else "outbox unavailable"
                    log.error("event=%s error=%r (pausing input; retrying)",
                              "outbox_disk_full" if full else "outbox_unavailable", str(exc))
                    self._on_problem(f"{what}, {len(batch)}+ results waiting to be stored: {exc}")
                if self._stop_requested.is_set():
                    self.lost_on_stop += len(batch)
                    log.error("event=uncommitted_on_stop count=%d (their inputs will be processed again on "
                              "restart)", len(batch))
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            except BaseException:
                self._progress.done("commit")
                raise
            break
        self._progress.done("commit")
        return True

    def _after(self, batch: list[Pending]) -> None:
        """A batch is durable: run the post-commit steps, forget checkpoints no longer needed, tell the sinks."""
        self.committed += len(batch)
        forget = []
        for item in batch:
            if item.after_commit is not None:
                try:
                    item.after_commit()
                except Exception as exc:  # a post-commit courtesy (move/delete the file) must not stop writing
                    log.warning("event=after_commit_failed error=%r", str(exc))
                    continue
                if item.forget_after and item.checkpoint is not None:
                    forget.append(item.checkpoint)
        with contextlib.suppress(OutboxFull, sqlite3.OperationalError):
            self.outbox.forget(forget)
        if self._full_since is not None:
            down = time.monotonic() - self._full_since
            self._full_since = None
            log.warning("event=outbox_recovered after_s=%.1f", down)
            self._on_problem(None)
            with contextlib.suppress(OutboxFull, sqlite3.OperationalError):
                self.outbox.add_event("outbox_recovered", {"duration_s": round(down, 1)})
        self._on_committed()

    def _maybe_expire(self) -> None:
        if time.monotonic() - self._last_expire < EXPIRE_EVERY_S:
            return
        self._last_expire = time.monotonic()
        with contextlib.suppress(OutboxFull, sqlite3.OperationalError):
            if expired := self.outbox.expire():
                log.warning("event=outbox_expired count=%d ttl_s=%.0f", expired, self.outbox.limits.ttl_s)
                self._on_committed()
