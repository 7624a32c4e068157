"""`type = "stdin"`: sensor readings piped in, one per line (CSV or JSON), e.g. `my-reader | edge-infer run`.

A pipe applies back-pressure, so nothing is dropped (but a line longer than 64 Ki characters, which is skipped
with a log line); the source ends at end of input.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

from edge_infer.sources import register
from edge_infer.sources.readings import LineOptions, Reading, SensorStream, bounded_lines, lines_to_readings

Options = LineOptions  # the `[source]` keys of type "stdin": those of every line-reading source


class StdinSource(SensorStream):
    def readings(self, stop: threading.Event, once: bool) -> Iterator[Reading]:
        yield from lines_to_readings(bounded_lines(sys.stdin, "stdin"), self.parser, stop)


@register("stdin")
def make_stdin_source(options: Options, spec: Any) -> StdinSource:
    return StdinSource(options, spec)
