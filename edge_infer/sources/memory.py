"""An in-process source: samples a Python program hands over (for embedding edge-infer, and for the fast test
tier). Not a config `type`: it is given to `Daemon(cfg, source=ListSource(...))`."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from edge_infer.sources import Sample


def sample_of(name: str, data: bytes, source: str = "memory") -> Sample:
    """Encoded bytes (an image file) as a sample named `name`, fingerprinted by content."""
    return Sample(source, name, hashlib.sha256(data).hexdigest()[:16], time.time(), data)


class ListSource:
    """Yields the given samples once, in order (a file source: results are checkpointed, a restart skips them)."""

    live = False
    dropped = 0

    def __init__(self, samples: Iterable[Sample], kind: str = "image", name: str = "memory") -> None:
        self.samples_given = list(samples)
        self.kind = kind
        self.name = name

    def samples(self, stop: threading.Event, once: bool, done: Callable[[Sample], bool]) -> Iterator[Sample]:
        for sample in self.samples_given:
            if stop.is_set():
                return
            if not done(sample):
                yield sample
        if not once:
            stop.wait()
