"""Calls that must answer in time. A native call — an accelerator's `invoke()`, a delegate loading — cannot be
interrupted from Python, so a `Caller` runs it on a thread of its own and waits for it at most a deadline. A call
that misses the deadline raises `Hung` and leaves that thread behind, still blocked in the call; the caller is
then spent. (Both TFLite runtimes release the GIL inside `invoke()`, so a blocked call costs no CPU.)"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Hung(RuntimeError):
    """A call that did not return within its deadline."""


class _Call:
    __slots__ = ("done", "error", "value", "work")

    def __init__(self, work: Callable[[], Any]) -> None:
        self.work = work
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class Caller:
    """Runs calls one at a time on its own daemon thread (started on first use) and waits at most `seconds` for
    each; `seconds` ≤ 0 runs them in the calling thread, unguarded. Once a call missed its deadline every later
    call raises `Hung` at once, and `busy` stays true until that late call returns. One calling thread at a time;
    `close()` ends the thread (after a late call, if any)."""

    def __init__(self, seconds: float, name: str = "deadline") -> None:
        self.seconds, self.name = seconds, name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.spent = False

    def call(self, work: Callable[[], T]) -> T:
        """`work()`'s value or exception; `Hung` when it did not return within the deadline (or an earlier one
        did not)."""
        if self.seconds <= 0:
            return work()
        if self.spent:
            raise Hung(f"{self.name}: an earlier call has not returned")
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
        pending = _Call(work)
        self._calls.put(pending)
        if not pending.done.wait(self.seconds):
            self.spent = True
            self._calls.put(None)  # the thread ends if the late call ever returns
            raise Hung(f"no answer within {self.seconds:g} s")
        if pending.error is not None:
            raise pending.error
        return pending.value

    @property
    def busy(self) -> bool:
        """A call that missed its deadline is still running."""
        return self.spent and self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Let the thread end (at once when idle; after the late call returns when spent)."""
        if self._thread is not None and not self.spent:
            self._calls.put(None)

    def _serve(self) -> None:
        while (pending := self._calls.get()) is not None:
            try:
                pending.value = pending.work()
            except BaseException as exc:  # handed to the waiting caller, whatever it is
                pending.error = exc
            pending.work = _done  # what the call needed (an engine) is not kept alive by this idle thread
            pending.done.set()
            pending = None


def _done() -> None:
    """The work of a call that has run."""
