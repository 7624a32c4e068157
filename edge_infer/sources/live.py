"""Live sources (cameras, streams, serial ports, IIO sensors) do not wait for a slow pipeline. `NewestOnly`
runs the source in its own thread and hands the pipeline only the newest sample; every sample overwritten
before the pipeline took it is counted in `dropped`. `max_fps` caps the rate handed on (0: no cap)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from edge_infer.sources import Sample, Source


class NewestOnly:
    live = True

    def __init__(self, inner: Source, max_fps: float = 0.0) -> None:
        self.inner = inner
        self.name = inner.name
        self.kind = inner.kind
        self.min_interval = 1.0 / max_fps if max_fps else 0.0
        self.dropped = 0
        self.delivered = 0
        self.health = getattr(inner, "health", None)  # a source that reconnects says when it is down

    def samples(self, stop: threading.Event, once: bool, done: Callable[[Sample], bool]) -> Iterator[Sample]:
        cond = threading.Condition()
        slot: list[Sample] = []
        finished: list[BaseException | None] = []
        halt = threading.Event()

        def produce() -> None:
            error: BaseException | None = None
            try:
                for sample in self.inner.samples(halt, once, lambda s: False):
                    with cond:
                        if slot:
                            self.dropped += 1
                            slot.clear()
                        slot.append(sample)
                        cond.notify()
                    if stop.is_set():
                        break
            except BaseException as exc:  # surfaced to the consumer
                error = exc
            with cond:
                finished.append(error)
                cond.notify()

        thread = threading.Thread(target=produce, name=f"source-{self.name}", daemon=True)
        thread.start()
        last = 0.0
        try:
            while not stop.is_set():
                with cond:
                    while not slot and not finished and not stop.is_set():
                        cond.wait(0.2)
                    if not slot:
                        if finished:
                            if finished[0] is not None:
                                raise finished[0]
                            return
                        continue
                    sample = slot.pop()
                if self.min_interval:
                    wait = last + self.min_interval - time.monotonic()
                    if wait > 0:
                        self.dropped += 1  # over the rate cap: skipped, the next newer sample is taken
                        stop.wait(min(wait, self.min_interval))
                        continue
                    last = time.monotonic()
                if done(sample):
                    continue
                self.delivered += 1
                yield sample
        finally:
            halt.set()
            thread.join(timeout=2.0)
