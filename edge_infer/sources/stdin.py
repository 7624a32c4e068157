"""`type = "stdin"`: sensor readings piped in, one per line (CSV or JSON), e.g. `my-reader | edge-infer run`.

A pipe applies back-pressure, so nothing is dropped; the source ends at end of input.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

from edge_infer.sources import register
from edge_infer.sources.readings import LINE_OPTIONS, Reading, SensorStream, lines_to_readings

OPTIONS = dict(LINE_OPTIONS)  # the `[source]` keys of type "stdin"


class StdinSource(SensorStream):
    def readings(self, stop: threading.Event, once: bool) -> Iterator[Reading]:
        yield from lines_to_readings(sys.stdin, self.parser, stop)


@register("stdin")
def make_stdin_source(options: dict[str, Any], spec: Any) -> StdinSource:
    return StdinSource(options, spec)
