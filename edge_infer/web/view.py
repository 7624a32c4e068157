"""What the live view shows, kept up to date by the daemon as results are committed (`observe`: O(1), no
decoding) and read by the page's server threads. Frames are drawn and JPEG-encoded on first request and cached
until the next result."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from edge_infer.pipeline import Outcome
from edge_infer.sources import Sample

RECENT = 20  # results and rejections listed on the page
HISTORY_MINUTES = 60


class LiveView:
    """The latest input with a picture, the last results and rejections, and per-minute counts for the chart."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.changed = threading.Condition()
        self.version = 0  # bumped on every observed outcome: the server threads wait on `changed`
        self.results: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.rejections: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.minutes: deque[list[float]] = deque(maxlen=HISTORY_MINUTES)  # [minute start, results, uncertain]
        self._latest: tuple[Sample, Outcome] | None = None
        self._frame: tuple[int, bytes] | None = None  # (version, JPEG) of the latest drawn frame

    def observe(self, sample: Sample, outcome: Outcome) -> None:
        """One committed outcome (the daemon's commit thread)."""
        now = self.clock()
        minute = now - now % 60
        with self.changed:
            if not self.minutes or self.minutes[-1][0] != minute:
                self.minutes.append([minute, 0, 0])
            if outcome.result is not None and outcome.decision is not None:
                uncertain = outcome.decision.status == "uncertain"
                self.minutes[-1][1] += 1
                self.minutes[-1][2] += uncertain
                self.results.appendleft({"ts": now, "input": sample.input_id, "result": outcome.result.to_dict(),
                                         "status": outcome.decision.status,
                                         "latency_ms": round(outcome.latency_ms, 1)})
                if sample.data is not None or sample.image is not None:
                    self._latest = (sample, outcome)
            elif not outcome.verdict.ok:
                self.rejections.appendleft({"ts": now, "input": sample.input_id, "reason": outcome.verdict.reason,
                                            "detail": outcome.verdict.detail})
            self.version += 1
            self.changed.notify_all()

    def frame(self) -> tuple[int, bytes] | None:
        """(version, JPEG) of the latest input with its result drawn on; None before the first."""
        with self.changed:
            latest, version = self._latest, self.version
        if latest is None:
            return None
        cached = self._frame
        if cached is not None and cached[0] == version:
            return cached
        from edge_infer.snapshot import annotated, jpeg

        sample, outcome = latest
        assert outcome.result is not None and outcome.decision is not None
        source = sample.data if sample.data is not None else sample.image
        assert source is not None
        self._frame = (version, jpeg(annotated(source, outcome.result, outcome.decision)))
        return self._frame

    def wait(self, seen: int, timeout: float) -> int:
        """Block until something newer than `seen` was observed, or `timeout`; the current version."""
        with self.changed:
            self.changed.wait_for(lambda: self.version != seen, timeout)
            return self.version

    def to_dict(self) -> dict[str, Any]:
        with self.changed:
            return {"version": self.version, "results": list(self.results), "rejections": list(self.rejections),
                    "history": [list(m) for m in self.minutes], "has_frame": self._latest is not None}
