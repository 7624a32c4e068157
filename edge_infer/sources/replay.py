"""`type = "replay"`: sensor readings from a CSV or JSON-lines file — for testing and back-filling.

Never drops: every window becomes a sample. Window ids are `<file>#<first reading>`, so a restart skips the
windows already processed. `speed = 1` replays in real time (by the file's timestamps, else the model's
sample rate); the default 0 replays as fast as the pipeline takes them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_infer.manifest import SensorInputSpec
from edge_infer.options import between, opt
from edge_infer.sources import register
from edge_infer.sources.readings import LineOptions, Reading, SensorStream, bounded_lines, lines_to_readings


@dataclass(frozen=True, kw_only=True)
class Options(LineOptions):
    """The `[source]` keys of type "replay"."""

    path: str = opt(required=True, is_path=True)
    speed: float = opt(0.0, check=between(0.0, 1000.0))


class ReplaySource(SensorStream):
    def __init__(self, options: Options, spec: SensorInputSpec) -> None:
        super().__init__(options, spec)
        self.path = Path(options.path)
        self.speed = options.speed

    def fingerprint(self) -> str:
        st = self.path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"

    def input_id(self, start: int, t0: float) -> str:
        return f"{self.path.name}#{start}"

    def readings(self, stop: threading.Event, once: bool) -> Iterator[Reading]:
        first: tuple[float, float] | None = None  # (wall clock, data clock) at the first reading
        period = 1.0 / self.spec.sample_rate
        with self.path.open(encoding="utf-8", errors="replace") as lines:
            for i, (t, values) in enumerate(lines_to_readings(bounded_lines(lines, self.path.name), self.parser, stop)):
                if self.speed > 0:
                    data_t = t if t is not None else i * period
                    first = first or (time.monotonic(), data_t)
                    due = first[0] + (data_t - first[1]) / self.speed
                    if stop.wait(max(0.0, due - time.monotonic())):
                        return
                yield t, values


@register("replay")
def make_replay_source(options: Options, spec: Any) -> ReplaySource:
    return ReplaySource(options, spec)
