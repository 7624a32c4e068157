"""An accelerator that is not there: the model runs on the CPU meanwhile (`edge_infer.runtime.build_engine`
falls back when the configured delegate cannot load or cannot take the model, `Engine.run` when it fails during
inference), the delegate is tried again with back-off — each try on a thread of its own, started and collected by
the housekeeping thread, which a try that takes long (a child process waiting out a locked-up device) does not hold
up — and when it loads and answers one inference the serving port gets an interpreter on it back.
Events: `accelerator_lost` (delegate, error, fallback) and `accelerator_restored` (delegate, lost_s); the health
document's `accelerator` says which one runs now."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_infer.runtime import DelegateUnavailable, Engine
from edge_infer.serving import Serving
from edge_infer.sources.health import Backoff

log = logging.getLogger(__name__)


class _Retry:
    """`engine.retry()` on a thread of its own: `done` once it returned `restored` or failed with `error`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.restored: Engine | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="accelerator-retry", daemon=True)
        self._thread.start()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            self.restored = self.engine.retry()
        except DelegateUnavailable as exc:
            self.error = str(exc)
        except Exception as exc:  # an unforeseen failure is a failed try too: the CPU goes on serving
            log.exception("event=accelerator_retry_error")
            self.error = f"{type(exc).__name__}: {exc}"


class AcceleratorWatch:
    """Follows the running model's interpreter: lost (CPU fallback) until the delegate loads again."""

    def __init__(self, serving: Serving, event: Callable[[str, dict[str, Any]], None],
                 clock: Callable[[], float] = time.monotonic, most_s: float = 300.0, first_s: float = 1.0,
                 rest_s: float | None = None) -> None:
        self.serving, self._event, self._clock = serving, event, clock
        self._backoff = Backoff(most_s, first_s)
        self._rest_s = rest_s  # the first try after this long instead (it crashed the service: `edge_infer.crashes`)
        self.lost_since: float | None = None
        self.error: str | None = None
        self._next_try = 0.0
        self._retry: _Retry | None = None  # the try in flight
        self.attempts = 0
        self.check()

    def check(self) -> None:
        """Notice a fallback in the running model's interpreter (at start, or after a model swap)."""
        fallback = self.serving.model.engine.fallback_from
        if fallback is None or self.lost_since is not None:
            return
        self.error = fallback.error
        self.lost_since = self._clock()
        delay, self._rest_s = self._rest_s if self._rest_s is not None else self._backoff.next_delay(), None
        self._next_try = self.lost_since + delay
        self._event("accelerator_lost", {"delegate": fallback.wanted.delegate, "error": self.error,
                                         "fallback": self.serving.model.engine.settings.delegate,
                                         "variant": fallback.variant})

    def turn(self) -> None:
        """Housekeeping: when the next retry is due, start a try of the delegate; when a try has ended, take its
        outcome — on success swap the new interpreter in (unless the model changed meanwhile)."""
        self.check()
        engine = self.serving.model.engine
        if self._retry is not None and self._retry.done:
            retry, self._retry = self._retry, None
            if retry.engine is engine and engine.fallback_from is not None:  # else the model changed meanwhile
                self._settle(retry)
                return
        if self.lost_since is not None and engine.fallback_from is None:  # a reload or update brought it back
            self._restored(engine.settings.delegate)
            return
        if (self._retry is not None or self.lost_since is None or engine.fallback_from is None
                or self._clock() < self._next_try):
            return
        self.attempts += 1
        self._retry = _Retry(engine)

    def _settle(self, retry: _Retry) -> None:
        """A finished try on the running engine: the accelerator back, or the next try after the back-off."""
        assert retry.engine.fallback_from is not None
        wanted = retry.engine.fallback_from.wanted
        if retry.restored is not None:
            self.serving.use_engine(retry.restored)
            self._restored(wanted.delegate)
            return
        self.error = retry.error
        self._next_try = self._clock() + self._backoff.next_delay()
        log.info("event=accelerator_retry delegate=%s attempts=%d error=%r", wanted.delegate, self.attempts,
                 self.error)

    def _restored(self, delegate: str) -> None:
        assert self.lost_since is not None
        lost_s = self._clock() - self.lost_since
        self.lost_since, self.error = None, None
        self._backoff.reset()
        self._event("accelerator_restored", {"delegate": delegate, "lost_s": round(lost_s, 1),
                                             "attempts": self.attempts})
        self.attempts = 0

    def to_dict(self) -> dict[str, Any]:
        """The health document's `accelerator`: the delegate running now, whether a try of the wanted one is under
        way, and, while lost, why and since when."""
        engine = self.serving.model.engine
        doc: dict[str, Any] = {"delegate": engine.settings.delegate, "variant": engine.variant,
                               "lost": self.lost_since is not None, "retrying": self._retry is not None}
        if self.lost_since is not None and engine.fallback_from is not None:
            doc.update(wanted=engine.fallback_from.wanted.delegate, error=self.error,
                       since_s=round(self._clock() - self.lost_since, 1), attempts=self.attempts,
                       next_try_s=round(max(0.0, self._next_try - self._clock()), 1))
        return doc
